"""Longformer mixer: blocked = dense reference, globals, padding, causality."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.longformer import Longformer
from layers.registry import get_mixer
from models.classifier import SequenceClassifier
from numerics import assert_dropout_unbiased, rel_err

D, H, T = 8, 2, 19


def _x(seed=0, b=2, t=T):
  return jax.random.normal(jax.random.key(seed), (b, t, D), jnp.float32)


def _layer(**kw):
  return Longformer(**{**dict(d_model=D, n_heads=H, window=3, block_size=4),
                       **kw})


@functools.cache
def _apply_fn(layer, **kw):
  return jax.jit(functools.partial(layer.apply, **kw))


def _params(layer, seed=1):
  return jax.jit(layer.init)(jax.random.key(seed), _x())["params"]


def test_registered_and_params():
  assert get_mixer("longformer") is Longformer
  p = _params(_layer())
  assert set(p) == {"query", "key", "value", "out"}
  assert p["query"]["kernel"].value.shape == (D, D)
  pg = _params(_layer(global_tokens=1))
  assert set(pg) == {"query", "key", "value", "out", "query_global",
                     "key_global", "value_global"}


@pytest.mark.parametrize("kw", [dict(global_tokens=2, dilation=2),
                                dict(causal=True, global_tokens=1)])
def test_blocked_matches_reference_values_and_grads(kw):
  layer = _layer(**kw)
  params = _params(layer)
  x = _x(2)
  mask = jnp.arange(T)[None, :] < jnp.asarray([T, 13])[:, None]
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


def test_padding_invariance_and_zero_padded_outputs():
  layer = _layer(global_tokens=1, dilation=2)
  params = _params(layer)
  x = _x(4)
  n = 11
  mask = jnp.arange(T)[None, :] < jnp.asarray([T, n])[:, None]
  garbage = jnp.where(mask[..., None], x, 100.0)
  y = _apply_fn(layer)({"params": params}, garbage, mask)
  y_short = _apply_fn(layer)({"params": params}, x[1:, :n])
  assert rel_err(y[1:, :n], y_short) < 1e-5
  assert np.all(np.asarray(y[1, n:]) == 0)


def test_global_mask_equals_global_tokens():
  layer = _layer(global_tokens=2, max_global=3)
  params = _params(layer)
  x = _x(5)
  g = jnp.broadcast_to(jnp.arange(T)[None, :] < 2, (2, T))
  y_tokens = _apply_fn(layer)({"params": params}, x)
  y_mask = _apply_fn(layer)({"params": params}, x, global_mask=g)
  assert rel_err(y_mask, y_tokens) < 1e-6
  # A different global set changes the outputs.
  y_other = _apply_fn(layer)({"params": params}, x,
                             global_mask=g.at[:, 7].set(True))
  assert rel_err(y_other, y_tokens) > 1e-3
  with pytest.raises(ValueError, match="max_global"):
    _layer().apply({"params": _params(_layer())}, x, global_mask=g)


def test_causal_outputs_do_not_see_the_future():
  layer = _layer(causal=True, global_tokens=1, dilation=2)
  params = _params(layer)
  x = _x(6)
  y = _apply_fn(layer)({"params": params}, x)
  y2 = _apply_fn(layer)({"params": params}, x.at[:, 12:].add(1.0))
  assert rel_err(y2[:, :12], y[:, :12]) < 1e-6
  assert rel_err(y2[:, 12:], y[:, 12:]) > 1e-3


def test_attention_dropout():
  layer = _layer(attn_dropout=0.5)
  params = _params(layer)
  x = _x(7)
  y_det = _apply_fn(layer)({"params": params}, x)  # no dropout when det.
  drop = _apply_fn(layer, deterministic=False)
  y1 = drop({"params": params}, x, rngs={"dropout": jax.random.key(0)})
  y2 = drop({"params": params}, x, rngs={"dropout": jax.random.key(1)})
  assert rel_err(y1, y_det) > 1e-3 and rel_err(y1, y2) > 1e-3


def test_attention_dropout_is_unbiased():
  """Inverted dropout keeps every expectation: the mean over 1024 draws of
  the layer's output and of the gradients (params and input, of a
  random-cotangent loss) is the dropout-free value within 6 standard errors
  of the mean, per element (a missing 1 / (1 - rate) is ~15 away). Global
  tokens, dilation and padded keys included."""
  layer = _layer(attn_dropout=0.3, global_tokens=2, dilation=2)
  params = _params(layer)
  x = _x(8)
  mask = jnp.arange(T)[None, :] < jnp.asarray([T, 13])[:, None]
  ct = jax.random.normal(jax.random.key(9), x.shape)
  assert_dropout_unbiased(layer, params, x, mask, ct)


def test_in_sequence_classifier_with_padding():
  model = SequenceClassifier(
      num_classes=3, input_kind="tokens", vocab_size=11, mixer="longformer",
      mixer_kwargs=dict(n_heads=H, window=2, block_size=4, global_tokens=1),
      d_model=D, n_layers=1, output="none", ff_mult=2, pool="cls")
  tokens = jax.random.randint(jax.random.key(0), (2, T), 1, 11)
  mask = jnp.arange(T)[None, :] < jnp.asarray([T, 9])[:, None]
  v = jax.jit(model.init)(jax.random.key(1), tokens, mask)
  logits = jax.jit(model.apply)(v, tokens, mask)
  assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
  short = jax.jit(model.apply)(v, tokens[1:, :9])
  assert rel_err(logits[1:], short) < 1e-5
