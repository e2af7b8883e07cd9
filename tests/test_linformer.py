"""Linformer: fast layer vs per-head reference, sharing modes, padding."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.linformer import (SHARING, Linformer, LinformerProjection,
                              linformer_reference)
from layers.registry import MIXERS
from models.classifier import SequenceClassifier
from numerics import rel_err, rel_err_norm

D, H, N, K = 16, 2, 24, 8  # width, heads, max_length, projected length


def _x(seed=0, b=2, t=N, d=D):
  return jax.random.normal(jax.random.key(seed), (b, t, d), jnp.float32)


def _layer(**kw):
  return Linformer(**{**dict(d_model=D, max_length=N, k=K, n_heads=H), **kw})


@functools.cache
def _jit_apply(layer):
  return jax.jit(layer.apply)


def _init(layer, x, seed=1):
  return jax.jit(layer.init)(jax.random.key(seed), x)


def _reference_apply(layer, params, x, mask=None, shared_E=None):
  """The layer's output from its params through ``linformer_reference``:
  dense projections on the full length, then E_i (X W_i^K) per head."""
  params = nn.meta.unbox(params)
  b, t, _ = x.shape
  h, p = layer.n_heads, layer.p

  def proj(name, bias=True):
    y = x @ params[name]["kernel"]
    return (y + params[name]["bias"][None, None, :]) if bias else y

  q = proj("query").reshape(b, t, h, p)
  k = proj("key", bias=False).reshape(b, t, h, p)
  v = proj("value", bias=False).reshape(b, t, h, p)
  E = shared_E if shared_E is not None else params["E"]
  F = params.get("F", E)
  if E.ndim == 2:
    E, F = (jnp.broadcast_to(M[None], (h,) + M.shape) for M in (E, F))
  y, state = linformer_reference(
      q, k, v, E, F, kv_mask=mask,
      k_bias=params["key"]["bias"].reshape(h, p),
      v_bias=params["value"]["bias"].reshape(h, p))
  assert state is None
  y = (y.reshape(b, t, h * p) @ params["out"]["kernel"]
       + params["out"]["bias"][None, None, :])
  if mask is not None:
    y = jnp.where(mask[..., None], y, 0.0)
  return y


def test_registered():
  assert MIXERS["linformer"] is Linformer
  assert SHARING == ("none", "headwise", "kv", "layerwise")


@pytest.mark.parametrize("sharing,shapes", [
    ("none", {"E": (H, K, N), "F": (H, K, N)}),
    ("headwise", {"E": (K, N), "F": (K, N)}),
    ("kv", {"E": (K, N)}),
    ("layerwise", {"E": (K, N)}),  # no shared module given: owns its E
])
def test_param_shapes_and_init(sharing, shapes):
  layer = _layer(sharing=sharing)
  params = _init(layer, _x())["params"]
  assert set(params) == {"query", "key", "value", "out", *shapes}
  for name, shape in shapes.items():
    E = np.asarray(params[name].value)
    assert E.shape == shape
    # fairseq: xavier_uniform_(gain=1/sqrt(2)) on the [k, n] weight.
    bound = math.sqrt(3.0 / (K + N))
    assert np.max(np.abs(E)) <= bound and np.max(np.abs(E)) > 0.8 * bound
  assert params["query"]["kernel"].value.shape == (D, D)
  assert params["query"]["kernel"].names == ("embed", "heads")
  assert params["out"]["kernel"].names == ("heads", "embed")
  np.testing.assert_array_equal(params["out"]["bias"].value, 0.0)


# "layerwise" (a shared E: the kv code path) is compared with the reference
# in test_layerwise_sharing_one_projection_for_all_layers.
@pytest.mark.parametrize("sharing,t,masked", [
    ("none", 17, True), ("headwise", 17, True), ("kv", 17, True),
    ("headwise", N, False)])
def test_matches_reference_values_and_grads(sharing, t, masked):
  layer = _layer(sharing=sharing)
  x = _x(2, t=t)
  mask = None
  if masked:
    mask = jnp.arange(t)[None, :] < jnp.asarray([t, 11])[:, None]
  params = _init(layer, x)["params"]
  ct = _x(3, t=t)

  def loss(forward):
    def f(params, x):
      y = forward(params, x)
      return jnp.sum(y * ct), y
    return jax.value_and_grad(f, (0, 1), has_aux=True)

  fast = loss(lambda p, x: layer.apply({"params": p}, x, mask))
  ref = loss(lambda p, x: _reference_apply(layer, p, x, mask))
  ((l_f, y), (gp_f, gx_f)), ((l_r, y_ref), (gp_r, gx_r)) = jax.jit(
      lambda p, x: (fast(p, x), ref(p, x)))(params, x)
  assert y.shape == (2, t, D)
  assert rel_err(y, y_ref) < 1e-5
  assert abs(float(l_f - l_r)) <= 1e-5 * abs(float(l_r)) + 1e-5
  assert rel_err(gx_f, gx_r) < 1e-4
  flat_f = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(gp_f))
  flat_r = dict(jax.tree_util.tree_leaves_with_path(nn.meta.unbox(gp_r)))
  # One scale for all parameters: the key bias's gradient is zero up to
  # rounding (a shift of every logit of a row), so its own scale is noise.
  scale = max(np.max(np.abs(np.asarray(g))) for g in flat_r.values())
  for path, g in flat_f:
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), path
    assert np.max(np.abs(g - flat_r[path])) < 1e-4 * scale, path
    if path[0].key != "key":
      assert rel_err(g, flat_r[path]) < 1e-4, path
  if masked:  # the projections' columns past the real keys get no gradient
    gE = np.asarray(nn.meta.unbox(gp_f)["E"])
    assert np.all(gE[..., t:] == 0) and np.any(gE[..., :t] != 0)


def test_reference_is_softmax_over_projected_keys():
  """linformer_reference against one head's formula in numpy (float64)."""
  rng = np.random.default_rng(0)
  b, t, h, p, kk = 1, 5, 2, 3, 4
  q, k, v = (rng.normal(size=(b, t, h, p)) for _ in range(3))
  E, F = (rng.normal(size=(h, kk, 7)) for _ in range(2))
  y, _ = linformer_reference(*(jnp.asarray(a, jnp.float32)
                               for a in (q, k, v, E, F)))
  for i in range(h):
    Ki, Vi = E[i, :, :t] @ k[0, :, i], F[i, :, :t] @ v[0, :, i]
    logits = q[0, :, i] @ Ki.T / math.sqrt(p)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(y[0, :, i], w @ Vi, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sharing", ["headwise", "none"])
def test_padding_invariance_and_leading_columns(sharing):
  layer = _layer(sharing=sharing)
  x = _x(4, t=N)
  v = _init(layer, x)
  lengths = [13, 20]
  mask = jnp.arange(N)[None, :] < jnp.asarray(lengths)[:, None]
  garbage = jnp.where(mask[..., None], x, 100.0)
  y = _jit_apply(layer)(v, garbage, mask)
  for i, n in enumerate(lengths):
    y_short = _jit_apply(layer)(v, x[i:i + 1, :n])
    assert rel_err(y[i:i + 1, :n], y_short) < 1e-5
    assert np.all(np.asarray(y[i, n:]) == 0)
  # Short inputs use only the leading t columns of E and F.
  params = nn.meta.unbox(v["params"])
  changed = jax.tree.map(lambda a: a, params)
  for name in ("E", "F"):
    changed[name] = changed[name].at[..., 13:].set(7.0)
  np.testing.assert_array_equal(
      _jit_apply(layer)({"params": changed}, x[:, :13]),
      _jit_apply(layer)({"params": params}, x[:, :13]))


class _Stack(nn.Module):
  """Layers sharing one projection the way the backbone wires "layerwise"."""
  n_layers: int = 3

  @nn.compact
  def __call__(self, x, mask=None):
    kw = dict(max_length=N, k=K, n_heads=H, sharing="layerwise")
    shared = Linformer.shared_module(D, **kw)
    for i in range(self.n_layers):
      x = x + Linformer(d_model=D, shared=shared, name=f"layer_{i}", **kw)(
          x, mask)
    return x


def test_layerwise_sharing_one_projection_for_all_layers():
  assert Linformer.shared_module(D, max_length=N, sharing="kv") is None
  shared = Linformer.shared_module(D, max_length=N, sharing="layerwise")
  assert isinstance(shared, LinformerProjection)
  model = _Stack()
  x = _x(5, t=19)
  params = nn.meta.unbox(_init(model, x)["params"])
  assert set(params) == {"linformer_shared", "layer_0", "layer_1", "layer_2"}
  assert set(params["linformer_shared"]) == {"E"}
  assert params["linformer_shared"]["E"].shape == (K, N)
  for i in range(3):
    assert set(params[f"layer_{i}"]) == {"query", "key", "value", "out"}
  # Same as applying each layer with the shared E given explicitly.
  def reference(params):
    y = x
    for i in range(3):
      y = y + _reference_apply(_layer(sharing="layerwise"),
                               params[f"layer_{i}"], y,
                               shared_E=params["linformer_shared"]["E"])
    return y

  def loss(p):  # the shared E gets the gradient of every layer
    return jnp.sum(model.apply({"params": p}, x)**2)

  y, want, g = jax.jit(lambda p: (model.apply({"params": p}, x), reference(p),
                                  jax.grad(loss)(p)))(params)
  assert rel_err(y, want) < 1e-5
  assert np.any(np.asarray(g["linformer_shared"]["E"]) != 0)


def test_attention_dropout():
  layer = _layer(attn_dropout=0.5)
  x = _x(6)
  v = _init(layer, x)

  @jax.jit
  def run(v, x):
    drop = functools.partial(layer.apply, deterministic=False)
    return (layer.apply(v, x), _layer().apply(v, x),
            drop(v, x, rngs={"dropout": jax.random.key(0)}),
            drop(v, x, rngs={"dropout": jax.random.key(0)}),
            drop(v, x, rngs={"dropout": jax.random.key(1)}))

  y_det, y_plain, y1, y2, y3 = run(v, x)
  np.testing.assert_array_equal(y_det, y_plain)
  np.testing.assert_array_equal(y1, y2)
  assert rel_err(y1, y_det) > 1e-2 and rel_err(y1, y3) > 1e-2


def test_errors_name_values():
  x = _x()
  v = _init(_layer(), x)
  with pytest.raises(ValueError, match="causal"):
    _init(_layer(causal=True), x)
  with pytest.raises(ValueError, match=r"t=25 exceeds max_length=24"):
    _layer().apply(v, _x(t=25))
  with pytest.raises(ValueError, match="sharing="):
    _init(_layer(sharing="heads"), x)
  with pytest.raises(ValueError, match="max_length"):
    _init(Linformer(d_model=D), x)


def test_bfloat16_follows_float32():
  """bfloat16 compute, float32 params shared with the float32 layer: the
  outputs agree to bfloat16 precision (~6e-3 measured, relative norm)."""
  layer = _layer(dtype=jnp.bfloat16)
  x = _x()
  v = _init(_layer(), x)
  y = _jit_apply(layer)(v, x)
  assert y.dtype == jnp.bfloat16 and y.shape == x.shape
  err = rel_err_norm(y, _jit_apply(_layer())(v, x))
  assert err < 3e-2, err


def test_in_sequence_classifier_with_padding_and_layerwise_sharing():
  """The real backbone: it builds the shared projection once
  (``Linformer.shared_module``) and hands it to every block."""
  model = SequenceClassifier(
      num_classes=3, input_kind="tokens", vocab_size=11, mixer="linformer",
      mixer_kwargs=dict(max_length=N, k=K, n_heads=H, sharing="layerwise"),
      d_model=D, n_layers=2, output="none", ff_mult=2)
  tokens = jax.random.randint(jax.random.key(0), (2, N), 1, 11)
  mask = jnp.arange(N)[None, :] < jnp.asarray([N, 15])[:, None]
  v = jax.jit(model.init)(jax.random.key(1), tokens, mask)
  backbone = nn.meta.unbox(v["params"]["backbone"])
  assert backbone["linformer_shared"]["E"].shape == (K, N)
  for i in range(2):
    assert set(backbone[f"block_{i}"]["mixer"]) == {"query", "key", "value",
                                                    "out"}
  logits = jax.jit(model.apply)(v, tokens, mask)
  assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
  short = jax.jit(model.apply)(v, tokens[1:, :15])
  assert rel_err(logits[1:], short) < 1e-5
