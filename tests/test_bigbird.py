"""BigBird mixer: block-sparse = dense reference, padding, seeds, causality."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.bigbird import BigBird
from layers.registry import get_mixer
from models.classifier import SequenceClassifier
from numerics import assert_dropout_unbiased, rel_err

D, H, BS, T = 8, 2, 3, 24  # 8 blocks


def _x(seed=0, b=2, t=T):
  return jax.random.normal(jax.random.key(seed), (b, t, D), jnp.float32)


def _layer(**kw):
  return BigBird(**{**dict(d_model=D, n_heads=H, block_size=BS,
                           num_rand_blocks=2), **kw})


@functools.cache
def _apply_fn(layer, **kw):
  return jax.jit(functools.partial(layer.apply, **kw))


def _params(layer, seed=1):
  return jax.jit(layer.init)(jax.random.key(seed), _x())["params"]


def test_registered_and_params():
  assert get_mixer("bigbird") is BigBird
  p = _params(_layer())
  assert set(p) == {"query", "key", "value", "out"}


@pytest.mark.parametrize("kw,t", [(dict(), T), (dict(causal=True), T - 2),
                                  (dict(rows_tokens=2 * BS), T)])
def test_block_sparse_matches_reference_values_and_grads(kw, t):
  layer = _layer(**kw)
  params = _params(layer)
  x = _x(2, t=t)
  mask = jnp.arange(t)[None, :] < jnp.asarray([t, 14])[:, None]
  ct = jax.random.normal(jax.random.key(3), x.shape)

  @functools.partial(jax.jit, static_argnums=0)
  def run(impl, params, x):
    f = lambda params, x: layer.clone(impl=impl).apply({"params": params}, x,
                                                       mask)
    y, vjp = jax.vjp(f, params, x)
    return y, vjp(ct)

  y, (gp, gx) = run("xla", params, x)
  y_ref, (gp_ref, gx_ref) = run("reference", params, x)
  assert rel_err(y, y_ref) < 1e-5
  assert rel_err(gx, gx_ref) < 1e-5
  # All parameters at once: the key bias's gradient is zero up to rounding
  # (softmax is invariant to a shift of all keys), so no per-leaf scale.
  flat = lambda tree: np.concatenate([np.ravel(a)
                                      for a in jax.tree.leaves(tree)])
  assert rel_err(flat(gp), flat(gp_ref)) < 1e-5


def test_padded_keys_receive_no_weight():
  layer = _layer()
  params = _params(layer)
  x = _x(4)
  mask = jnp.arange(T)[None, :] < jnp.asarray([T, 14])[:, None]
  f = _apply_fn(layer)
  y = f({"params": params}, x, mask)
  y2 = f({"params": params}, jnp.where(mask[..., None], x, 100.0), mask)
  assert rel_err(y2, y) < 1e-6
  assert np.all(np.asarray(y[1, 14:]) == 0)


def test_padding_invariance_without_random_or_last_global():
  """With only the window and the first global block the pattern does not
  depend on the length, so appending padding changes no real output."""
  layer = _layer(num_rand_blocks=0, global_right=0)
  params = _params(layer)
  x = _x(5)
  n = 13  # not a multiple of the block: the layer pads internally
  mask = jnp.arange(T)[None, :] < jnp.asarray([T, n])[:, None]
  y = _apply_fn(layer)({"params": params}, x, mask)
  y_short = _apply_fn(layer)({"params": params}, x[1:, :n])
  assert rel_err(y[1:, :n], y_short) < 1e-5


def test_seed_fixes_the_pattern():
  x = _x(6)
  params = _params(_layer())
  y = _apply_fn(_layer(seed=4))({"params": params}, x)
  assert rel_err(_apply_fn(_layer(seed=4))({"params": params}, x), y) == 0
  assert rel_err(_apply_fn(_layer(seed=5))({"params": params}, x), y) > 1e-4


def test_causal_outputs_do_not_see_the_future():
  layer = _layer(causal=True)
  params = _params(layer)
  x = _x(7)
  y = _apply_fn(layer)({"params": params}, x)
  y2 = _apply_fn(layer)({"params": params}, x.at[:, 10:].add(1.0))
  assert rel_err(y2[:, :10], y[:, :10]) < 1e-6
  assert rel_err(y2[:, 10:], y[:, 10:]) > 1e-3


def test_attention_dropout():
  layer = _layer(attn_dropout=0.5)
  params = _params(layer)
  x = _x(8)
  y_det = _apply_fn(layer)({"params": params}, x)
  drop = _apply_fn(layer, deterministic=False)
  y1 = drop({"params": params}, x, rngs={"dropout": jax.random.key(0)})
  y2 = drop({"params": params}, x, rngs={"dropout": jax.random.key(1)})
  assert rel_err(y1, y_det) > 1e-3 and rel_err(y1, y2) > 1e-3


def test_attention_dropout_is_unbiased():
  """Inverted dropout keeps every expectation: the mean over 1024 draws of
  the layer's output and of the gradients (params and input, of a
  random-cotangent loss) is the dropout-free value within 6 standard errors
  of the mean, per element (a missing 1 / (1 - rate) is ~15 away). Padded
  keys, causal rows and random blocks included."""
  layer = _layer(attn_dropout=0.3, causal=True)
  params = _params(layer)
  x = _x(9)
  mask = jnp.arange(T)[None, :] < jnp.asarray([T, 14])[:, None]
  ct = jax.random.normal(jax.random.key(10), x.shape)
  assert_dropout_unbiased(layer, params, x, mask, ct)


def test_in_sequence_classifier_with_padding():
  model = SequenceClassifier(
      num_classes=3, input_kind="tokens", vocab_size=11, mixer="bigbird",
      mixer_kwargs=dict(n_heads=H, block_size=4, num_rand_blocks=0,
                        global_right=0),
      d_model=D, n_layers=1, output="none", ff_mult=2)
  tokens = jax.random.randint(jax.random.key(0), (2, T), 1, 11)
  mask = jnp.arange(T)[None, :] < jnp.asarray([T, 9])[:, None]
  v = jax.jit(model.init)(jax.random.key(1), tokens, mask)
  logits = jax.jit(model.apply)(v, tokens, mask)
  assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
  short = jax.jit(model.apply)(v, tokens[1:, :9])
  assert rel_err(logits[1:], short) < 1e-5
  # The default ITC pattern (random blocks, last global block) runs too.
  model = model.clone(mixer_kwargs=dict(n_heads=H, block_size=4))
  logits = jax.jit(model.apply)(v, tokens, mask)
  assert np.all(np.isfinite(logits))
