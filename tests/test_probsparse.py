"""ProbSparse attention kernel: reference semantics, fast form, sampling."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import probsparse as ps
from numerics import rel_err


def _qkv(seed=0, b=2, t=24, s=None, h=2, p=8):
  s = t if s is None else s
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], (b, t, h, p), jnp.float32)
  k = jax.random.normal(ks[1], (b, s, h, p), jnp.float32)
  v = jax.random.normal(ks[2], (b, s, h, p), jnp.float32)
  return q, k, v


def _full(q, k, v, causal=False, kv_mask=None):
  p = q.shape[-1]
  sc = jnp.einsum("bthp,bshp->bhts", q, k,
                  precision=jax.lax.Precision.HIGHEST) / math.sqrt(p)
  t, s = q.shape[1], k.shape[1]
  allowed = jnp.ones((1, 1, t, s), bool)
  if causal:
    allowed = allowed & (jnp.arange(s)[None, :] <= jnp.arange(t)[:, None])[None, None]
  if kv_mask is not None:
    allowed = allowed & kv_mask[:, None, None, :]
  a = jax.nn.softmax(jnp.where(allowed, sc, -jnp.inf), -1)
  return jnp.einsum("bhts,bshp->bthp", a, v,
                    precision=jax.lax.Precision.HIGHEST)


def test_sizes_official_arithmetic():
  # factor * ceil(ln L), capped at L.
  assert ps.probsparse_sizes(96, 96, 5) == (25, 25)
  assert ps.probsparse_sizes(72, 72, 5) == (25, 25)
  assert ps.probsparse_sizes(48, 49, 3) == (12, 12)
  assert ps.probsparse_sizes(10, 10, 5) == (10, 10)
  assert ps.probsparse_sizes(1, 1, 5) == (1, 1)


def test_sample_shapes_ranges_and_masked_draws():
  idx = ps.probsparse_sample(jax.random.key(0), 30, 20, 2)
  assert idx.shape == (30, 6) and idx.dtype == jnp.int32
  assert int(idx.min()) >= 0 and int(idx.max()) < 20
  mask = jnp.arange(20)[None, :] < jnp.asarray([20, 14])[:, None]
  idx_m = ps.probsparse_sample(jax.random.key(0), 30, 20, 2, mask)
  assert idx_m.shape == (2, 30, 6)
  assert int(idx_m[1].max()) < 14
  np.testing.assert_array_equal(idx_m[0], idx)  # all real: the same draw
  # 14 real keys (ceil(ln 14) == ceil(ln 20)) draw the same indices with or
  # without padding.
  idx_short = ps.probsparse_sample(jax.random.key(0), 30, 14, 2,
                                   jnp.ones((1, 14), bool))
  np.testing.assert_array_equal(idx_m[1], idx_short[0])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fn", [ps.probsparse_reference, ps.probsparse_xla])
def test_all_queries_active_equals_full_attention(fn, causal):
  q, k, v = _qkv(t=12)
  idx = ps.probsparse_sample(jax.random.key(1), 12, 12, 10)
  assert ps.probsparse_sizes(12, 12, 10)[0] == 12
  out, state = fn(q, k, v, index_sample=idx, factor=10, causal=causal)
  assert state is None
  assert rel_err(out, _full(q, k, v, causal)) < 1e-6


def _np_official(q, k, v, idx, factor, causal):
  """numpy transcription of the official ProbAttention.forward."""
  q, k, v = (np.swapaxes(np.asarray(x, np.float64), 1, 2) for x in (q, k, v))
  b, h, t, p = q.shape
  s = k.shape[2]
  n_top, _ = ps.probsparse_sizes(t, s, factor)
  qk_s = np.einsum("bhtp,bhtup->bhtu", q, k[:, :, idx, :])
  m = qk_s.max(-1) - qk_s.sum(-1) / s
  top = np.argsort(-m, axis=-1)[..., :n_top]
  ctx = np.cumsum(v, 2) if causal else np.repeat(v.mean(2, keepdims=True), t, 2)
  for bi in range(b):
    for hi in range(h):
      sel = top[bi, hi]
      sc = q[bi, hi, sel] @ k[bi, hi].T / math.sqrt(p)
      if causal:
        sc = np.where(np.arange(s)[None, :] > sel[:, None], -np.inf, sc)
      a = np.exp(sc - sc.max(-1, keepdims=True))
      a /= a.sum(-1, keepdims=True)
      ctx[bi, hi, sel] = a @ v[bi, hi]
  return np.swapaxes(ctx, 1, 2)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_numpy_official(causal):
  q, k, v = _qkv(seed=3, t=40)
  idx = ps.probsparse_sample(jax.random.key(2), 40, 40, 2)
  out, _ = ps.probsparse_reference(q, k, v, index_sample=idx, factor=2,
                                   causal=causal)
  assert rel_err(out, _np_official(q, k, v, np.asarray(idx), 2, causal)) < 1e-5


@pytest.mark.parametrize("causal,one_hot,dense", [
    (False, True, True), (True, True, True), (False, False, False),
    (True, False, False), (False, True, False)])
def test_fast_matches_reference_values_and_grads(causal, one_hot, dense,
                                                 monkeypatch):
  if not dense:
    monkeypatch.setattr(ps, "DENSE_SELECT_BYTES", 0)
    monkeypatch.setattr(ps, "SELECT_CHUNK", 16)  # 40 = 2 chunks + a partial
  q, k, v = _qkv(seed=4, t=40)
  idx = ps.probsparse_sample(jax.random.key(5), 40, 40, 2)
  ref = functools.partial(ps.probsparse_reference, index_sample=idx, factor=2,
                          causal=causal)
  fast = functools.partial(ps.probsparse_xla, index_sample=idx, factor=2,
                           causal=causal, one_hot=one_hot)
  y_ref, vjp_ref = jax.vjp(lambda *a: ref(*a)[0], q, k, v)
  y, vjp = jax.vjp(lambda *a: fast(*a)[0], q, k, v)
  assert rel_err(y, y_ref) < 1e-6
  ct = jax.random.normal(jax.random.key(6), y.shape)
  for g, g_ref in zip(vjp(ct), vjp_ref(ct)):
    assert rel_err(g, g_ref) < 1e-5


def test_cross_attention_lengths_and_batched_index():
  q, k, v = _qkv(seed=7, t=20, s=30)
  idx = ps.probsparse_sample(jax.random.key(8), 20, 30, 3)
  idx_b = jnp.broadcast_to(idx, (2,) + idx.shape)
  y_ref, _ = ps.probsparse_reference(q, k, v, index_sample=idx, factor=3)
  y, _ = ps.probsparse_xla(q, k, v, index_sample=idx_b, factor=3)
  assert y.shape == (2, 20, 2, 8)
  assert rel_err(y, y_ref) < 1e-6
  with pytest.raises(ValueError, match="t == s"):
    ps.probsparse_xla(q, k, v, index_sample=idx, causal=True)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_masks(causal):
  """Padded keys get no weight; real rows equal the unpadded sequence's."""
  q, k, v = _qkv(seed=9, b=2, t=30)
  n = 22  # ceil(ln 22) == ceil(ln 30): same sizes
  mask = jnp.arange(30)[None, :] < jnp.asarray([30, n])[:, None]
  key = jax.random.key(10)
  idx = ps.probsparse_sample(key, 30, 30, 2, mask)
  for fn in (ps.probsparse_reference, ps.probsparse_xla):
    y, _ = fn(q, k, v, index_sample=idx, factor=2, causal=causal, kv_mask=mask,
              q_mask=mask)
    idx_n = ps.probsparse_sample(key, n, n, 2)
    y_n, _ = fn(q[1:, :n], k[1:, :n], v[1:, :n], index_sample=idx_n, factor=2,
                causal=causal)
    assert rel_err(y[1, :n], y_n[0]) < 1e-6
    assert np.all(np.isfinite(np.asarray(y)))


def test_dispatcher():
  q, k, v = _qkv(seed=11, t=16)
  y_auto, _ = ps.probsparse_attention(q, k, v, factor=2,
                                      key=jax.random.key(0))
  y_ref, _ = ps.probsparse_attention(q, k, v, factor=2, key=jax.random.key(0),
                                     impl="reference")
  assert rel_err(y_auto, y_ref) < 1e-6


@pytest.mark.shape_errors
def test_errors():
  q, k, v = _qkv(seed=11, t=16)
  with pytest.raises(ValueError, match="PRNG"):
    ps.probsparse_attention(q, k, v)
  with pytest.raises(ValueError, match="index_sample"):
    ps.probsparse_xla(q, k, v, index_sample=jnp.zeros((3, 4), jnp.int32))
