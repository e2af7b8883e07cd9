"""Attention mixers ("attention", "linear_attention"): projections and heads
against plain numpy, padding invariance, segments, decode = full pass,
dropout, and a run inside the SequenceClassifier."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from data.tasks import TaskInfo
from layers.attention import Attention
from layers.linear_attention import LinearAttention
from layers.registry import MIXERS
from models import build_model
from numerics import rel_err

D, H, T = 8, 2, 10


def _x(seed=0, b=2, t=T):
  return jax.random.normal(jax.random.key(seed), (b, t, D), jnp.float32)


def _np_heads(params, x):
  params = nn.meta.unbox(params)
  x = np.asarray(x, np.float64)
  out = {}
  for name in ("query", "key", "value"):
    w = np.asarray(params[name]["kernel"], np.float64)
    bias = np.asarray(params[name]["bias"], np.float64)
    out[name] = (x @ w + bias).reshape(x.shape[0], x.shape[1], H, -1)
  return out["query"], out["key"], out["value"]


def _np_out(params, y):
  params = nn.meta.unbox(params)
  w = np.asarray(params["out"]["kernel"], np.float64)
  return y.reshape(y.shape[0], y.shape[1], -1) @ w + np.asarray(
      params["out"]["bias"])


def _np_softmax_attention(params, x, mask, causal):
  q, k, v = _np_heads(params, x)
  b, t, h, p = q.shape
  y = np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      sc = q[bi, :, hi] @ k[bi, :, hi].T / np.sqrt(p)
      allowed = np.ones((t, t), bool)
      if mask is not None:
        allowed &= mask[bi][None, :]
      if causal:
        allowed &= np.tril(allowed)
      sc = np.where(allowed, sc, -np.inf)
      w = np.exp(sc - sc.max(-1, keepdims=True))
      y[bi, :, hi] = (w / w.sum(-1, keepdims=True)) @ v[bi, :, hi]
  out = _np_out(params, y)
  if mask is not None:
    out = out * mask[..., None]
  return out


def _np_linear_attention(params, x, mask, causal, fmap, eps):
  q, k, v = _np_heads(params, x)
  phi = ((lambda a: np.where(a > 0, a, np.expm1(a)) + 1) if fmap == "elu"
         else (lambda a: np.maximum(a, 0)))
  q, k = phi(q), phi(k)
  if mask is not None:
    k = k * mask[:, :, None, None]
  kv = np.einsum("bthp,bthv->bthpv", k, v)
  if causal:
    S, z = np.cumsum(kv, 1), np.cumsum(k, 1)
  else:
    S = np.broadcast_to(kv.sum(1, keepdims=True), kv.shape)
    z = np.broadcast_to(k.sum(1, keepdims=True), k.shape)
  y = (np.einsum("bthp,bthpv->bthv", q, S) /
       (np.einsum("bthp,bthp->bth", q, z)[..., None] + eps))
  out = _np_out(params, y)
  if mask is not None:
    out = out * mask[..., None]
  return out


def test_registered():
  assert MIXERS["attention"] is Attention
  assert MIXERS["linear_attention"] is LinearAttention


@pytest.mark.parametrize("cls", [Attention, LinearAttention])
def test_param_names_axes_and_shapes(cls):
  layer = cls(d_model=D, n_heads=H, head_dim=3)
  abstract = jax.eval_shape(layer.init, jax.random.key(0), _x())
  specs = nn.get_partition_spec(abstract)["params"]
  params = nn.meta.unbox(abstract["params"])
  assert set(params) == {"query", "key", "value", "out"}
  for name in ("query", "key", "value"):
    assert params[name]["kernel"].shape == (D, H * 3)
    assert tuple(specs[name]["kernel"]) == ("embed", "heads")
  assert params["out"]["kernel"].shape == (H * 3, D)
  assert tuple(specs["out"]["kernel"]) == ("heads", "embed")


def _mask():
  return np.arange(T)[None] < np.array([T, 6])[:, None]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl,block", [("auto", 512), ("xla", 3),
                                        ("reference", 512),
                                        ("pallas_interpret", 4)])
def test_attention_matches_numpy(causal, impl, block):
  layer = Attention(d_model=D, n_heads=H, causal=causal, impl=impl,
                    block_q=block, block_k=block)
  x, mask = _x(1), _mask()
  variables = layer.init(jax.random.key(0), x)
  if impl == "xla":  # force the blocked form
    from kernels import attention as fa
    old, fa.DENSE_MAX_BYTES = fa.DENSE_MAX_BYTES, 0
  try:
    y = jax.jit(layer.apply)(variables, x, jnp.asarray(mask))
  finally:
    if impl == "xla":
      fa.DENSE_MAX_BYTES = old
  want = _np_softmax_attention(variables["params"], x, mask, causal)
  assert rel_err(y, want) < 1e-5


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fmap", ["elu", "relu"])
def test_linear_attention_matches_numpy(causal, fmap):
  layer = LinearAttention(d_model=D, n_heads=H, causal=causal,
                          feature_map=fmap, chunk_size=4, eps=1e-3)
  x, mask = _x(2), _mask()
  variables = layer.init(jax.random.key(0), x)
  y = jax.jit(layer.apply)(variables, x, jnp.asarray(mask))
  want = _np_linear_attention(variables["params"], x, mask, causal, fmap,
                              1e-3)
  assert rel_err(y, want) < 1e-5


@pytest.mark.parametrize("cls,causal", [(Attention, False), (Attention, True),
                                        (LinearAttention, False),
                                        (LinearAttention, True)])
def test_padding_invariance(cls, causal):
  layer = cls(d_model=D, n_heads=H, causal=causal)
  x = _x(3, b=1, t=7)
  variables = layer.init(jax.random.key(0), x)
  y = layer.apply(variables, x)
  xp = jnp.concatenate([x, 5.0 * _x(4, b=1, t=5)], axis=1)
  mask = jnp.arange(12)[None] < 7
  yp = layer.apply(variables, xp, mask)
  assert rel_err(yp[:, :7], y) < 1e-5
  np.testing.assert_array_equal(np.asarray(yp[:, 7:]), 0.0)


def test_segment_ids_are_separate_sequences():
  layer = Attention(d_model=D, n_heads=H, causal=True)
  a, b = _x(5, b=1, t=4), _x(6, b=1, t=6)
  variables = layer.init(jax.random.key(0), a)
  packed = jnp.concatenate([a, b], axis=1)
  seg = jnp.asarray([[0] * 4 + [1] * 6])
  y = layer.apply(variables, packed, segment_ids=seg)
  assert rel_err(y[:, :4], layer.apply(variables, a)) < 1e-5
  assert rel_err(y[:, 4:], layer.apply(variables, b)) < 1e-5


def test_attention_dropout():
  layer = Attention(d_model=D, n_heads=H, attn_dropout=0.5)
  x = _x(7)
  variables = layer.init(jax.random.key(0), x)
  det = layer.apply(variables, x)
  assert rel_err(det, Attention(d_model=D, n_heads=H).apply(variables,
                                                             x)) < 1e-6
  drop = lambda seed: layer.apply(variables, x, deterministic=False,
                                  rngs={"dropout": jax.random.key(seed)})
  y1, y2 = drop(1), drop(2)
  assert rel_err(y1, det) > 1e-3 and rel_err(y1, y2) > 1e-3
  assert rel_err(drop(1), y1) == 0.0
  # With rate -> 0 the dropout path is the deterministic one.
  tiny = Attention(d_model=D, n_heads=H, attn_dropout=1e-9)
  assert rel_err(tiny.apply(variables, x, deterministic=False,
                         rngs={"dropout": jax.random.key(0)}), det) < 1e-5


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_linear_decode_equals_full_pass(impl):
  kw = dict(d_model=D, n_heads=H, causal=True, chunk_size=3, impl=impl)
  full = LinearAttention(**kw)
  dec = LinearAttention(**kw, decode=True)
  x = _x(8)
  params = full.init(jax.random.key(0), x)["params"]
  y = full.apply({"params": params}, x)
  cache = dec.init(jax.random.key(0), x[:, :1])["cache"]
  assert cache["S"].shape == (2, H, D // H, D // H)
  assert not np.any(np.asarray(cache["S"])) and int(cache["index"]) == 0
  step = jax.jit(lambda c, xs: dec.apply({"params": params, "cache": c}, xs,
                                         mutable=["cache"]))
  outs = []
  for lo, hi in [(0, 1), (1, 2), (2, 6), (6, 7), (7, 10)]:
    o, mut = step(cache, x[:, lo:hi])
    cache = mut["cache"]
    outs.append(o)
  assert int(cache["index"]) == T
  assert rel_err(jnp.concatenate(outs, axis=1), y) < 1e-5


def test_invalid_configs_raise():
  x = _x()
  with pytest.raises(ValueError, match="not a multiple of n_heads"):
    Attention(d_model=D, n_heads=3).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="impl='fast'"):
    Attention(d_model=D, impl="fast").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="feature_map='exp'"):
    LinearAttention(d_model=D, feature_map="exp").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="attn_dropout=0.1"):
    LinearAttention(d_model=D, attn_dropout=0.1).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="decode=True needs causal=True"):
    LinearAttention(d_model=D, decode=True).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="x must be"):
    Attention(d_model=D).init(jax.random.key(0), x[..., :3])


@pytest.mark.parametrize("mixer,kwargs", [
    ("attention", dict(n_heads=2, causal=False)),
    ("linear_attention", dict(n_heads=2, causal=True)),
])
def test_in_sequence_classifier(mixer, kwargs):
  cfg = ml_collections.ConfigDict(dict(
      mixer=mixer, d_model=8, n_layers=2, prenorm=True, norm="layer",
      dropout=0.0, output="none", ff_mult=2, pool="mean"))
  cfg[mixer] = kwargs
  info = TaskInfo(num_classes=3, max_length=12, input_kind="tokens",
                  vocab_size=9)
  model = build_model(cfg, info)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 9, size=(2, 12)).astype(np.int32)
  mask = np.arange(12)[None] < np.array([12, 7])[:, None]
  variables = model.init(jax.random.key(0), tokens, mask)
  logits = model.apply(variables, tokens, mask)
  assert logits.shape == (2, 3) and np.all(np.isfinite(np.asarray(logits)))
  alone = model.apply(variables, tokens[1:, :7], mask[1:, :7])
  np.testing.assert_allclose(alone[0], logits[1], rtol=1e-4, atol=1e-5)
  grads = jax.grad(lambda v: jnp.sum(model.apply(v, tokens, mask) ** 2))(
      variables)
  assert all(np.all(np.isfinite(np.asarray(g)))
             for g in jax.tree.leaves(grads))
