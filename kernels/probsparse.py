"""ProbSparse self-attention (Informer).

Zhou et al., "Informer: Beyond Efficient Transformer for Long Sequence
Time-Series Forecasting" (AAAI 2021), Sec. "Efficient Self-attention
Mechanism"; semantics of the official code (github.com/zhouhaoyi/Informer2020,
``models/attn.py`` ``ProbAttention``), per batch element and head:

  1. ``U_part = factor * ceil(ln s)`` key indices per query are drawn uniformly
     with replacement (official: one ``index_sample [t, U_part]`` from
     ``torch.randint``, shared by the whole batch and all heads).
  2. Sparsity measurement on the sampled scores ``qk_ij = q_i . k_j`` (before
     the ``scale``): ``M_i = max_j qk_ij - sum_j qk_ij / s``. The paper's Eq. 4
     (max-mean) divides by the number of sampled keys; the official code divides
     by ``L_K = s``, the full key length. We follow the code.
  3. The ``u = factor * ceil(ln t)`` queries with the largest ``M`` (the
     "active" queries) get ordinary softmax attention over all keys (scaled by
     ``scale = 1/sqrt(p)``; causal: the official ``ProbMask`` masks keys after
     the query's own position).
  4. Every other ("lazy") query gets ``mean_j v_j`` (non-causal) or, causal,
     ``cumsum_j<=i v_j`` (the official initial context: a cumulative SUM, not a
     mean; causal requires ``t == s``).
  ``U_part`` and ``u`` are capped at ``s`` and ``t`` as in the official code.
  The selection (steps 1-3's indices) carries no gradient, as ``topk`` indices
  carry none in torch.

Padding (an extension; the official code has no padding mask): with
``kv_mask [b, s]`` the sampled indices range over each sequence's real keys
(``probsparse_sample``), the divisor is the number of real keys, padded queries
(``q_mask``) are never active, padded keys get no weight, and lazy queries get
the mean (or cumulative sum) of real values only.

Forms (one signature):
  * ``probsparse_reference``: the steps above written plainly (gathers).
  * ``probsparse_xla``: the selection from dense scores with a sample-count
    matrix (short sequences) or from query-chunked gathers (long sequences); the
    active rows picked and put back with one-hot products (small ``t``) or with
    gathers/scatters (long ``t``).
  * ``probsparse_attention(..., impl)``: dispatcher (AUTO -> XLA; no Pallas).

Shapes (jaxtyping names): ``b`` batch, ``t`` queries, ``s`` keys, ``h`` heads,
``p`` head dim, ``u`` sampled keys per query (``U_part``), ``k`` active
queries. Computation in float32; outputs have ``q.dtype``.
"""
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from kernels import Impl, register_op, resolve_impl

register_op("probsparse_attention")

_HI = jax.lax.Precision.HIGHEST
# Dense score arrays [b, h, t, s] (float32) up to this many bytes are formed
# for the selection; beyond, sampled keys are gathered in query chunks.
# Measured (fwd, XLA:CPU): b=32 h=8 t=s=96: dense 15 ms, gathered 90 ms;
# b=8 h=4 t=s=1024: dense 295 ms, gathered 152 ms.
DENSE_SELECT_BYTES = 1 << 25
# One-hot products pick and put back active rows while t is at most this.
ONE_HOT_MAX_T = 256
# Queries per step of the gathered selection. Each step gathers its queries'
# sampled keys, [b, h, chunk * u, p] (u = factor ln s): 1.6 GB at chunk 4096,
# b = 8, h = 4, p = 64, s = 16384. Mixer forward at t = 16384 (this 2-core
# CPU, train/host.py's malloc settings, interleaved medians): chunks of 1024
# 1.76 s, 4096 1.39 s, all 16384 queries at once 1.22 s (6.6 GB gathered).
SELECT_CHUNK = 4096
_NEG = -1e30  # finite "-inf": a row with one allowed key matches -inf exactly


def probsparse_sizes(t: int, s: int, factor: int) -> tuple[int, int]:
  """``(n_top, n_sample)``: ``u = min(factor ceil(ln t), t)`` active queries
  and ``U_part = min(factor ceil(ln s), s)`` sampled keys per query (official
  ``ProbAttention.forward``; at least 1, where the official code would take 0
  for a length of 1)."""
  n_top = min(factor * int(math.ceil(math.log(t))), t) if t > 1 else 1
  n_sample = min(factor * int(math.ceil(math.log(s))), s) if s > 1 else 1
  return max(n_top, 1), max(n_sample, 1)


def probsparse_sample(
    key: jax.Array, t: int, s: int, factor: int,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
) -> Int[Array, "t u"] | Int[Array, "b t u"]:
  """Draws the sampled key indices, uniform with replacement.

  Without ``kv_mask``: ``[t, U_part]`` over ``0..s-1``, shared by the batch and
  heads (as the official ``torch.randint(L_K, (L_Q, sample_k))``). With
  ``kv_mask``: ``[b, t, U_part]`` over each sequence's real keys: the
  ``floor(r n_b)``-th real key for uniform ``r``. Row ``i`` uses
  ``fold_in(key, i)``, so a query's draws do not depend on how much padding
  follows (as long as ``U_part`` is unchanged: ``ceil(ln s)`` is).
  """
  _, n_sample = probsparse_sizes(t, s, factor)
  r = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i),
                                            (n_sample,)))(jnp.arange(t))
  if kv_mask is None:
    return jnp.minimum(jnp.floor(r * s).astype(jnp.int32), s - 1)
  n = jnp.sum(kv_mask, axis=1).astype(jnp.float32)  # [b]
  rank = jnp.floor(r[None] * n[:, None, None]).astype(jnp.int32)
  rank = jnp.clip(rank, 0, jnp.maximum(n[:, None, None].astype(jnp.int32) - 1,
                                        0))
  # Real positions first, in order (stable sort of the "is padding" flag).
  order = jnp.argsort(~kv_mask, axis=1, stable=True).astype(jnp.int32)
  b = kv_mask.shape[0]
  return jnp.take_along_axis(order, rank.reshape(b, -1), axis=1).reshape(
      rank.shape)


def _check(q, k, v, index_sample, causal, kv_mask, q_mask):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [b, t|s, h, p]; got {q.shape=} "
                     f"{k.shape=} {v.shape=}")
  b, t, h, p = q.shape
  s = k.shape[1]
  if k.shape != (b, s, h, p) or v.shape[:3] != (b, s, h):
    raise ValueError(f"k must be [b, s, h, p] = [{b}, s, {h}, {p}] and v "
                     f"[b, s, h, pv]; got {k.shape=} {v.shape=}")
  if causal and t != s:
    raise ValueError(f"causal ProbSparse attention needs t == s (the cumulative "
                     f"sum initial context); got {t=} {s=}")
  if index_sample.ndim not in (2, 3) or index_sample.shape[-2] != t:
    raise ValueError(f"index_sample must be [t, u] or [b, t, u] with t={t}; got "
                     f"{index_sample.shape=}")
  if kv_mask is not None and kv_mask.shape != (b, s):
    raise ValueError(f"kv_mask must be [b, s] = {(b, s)}; got {kv_mask.shape=}")
  if q_mask is not None and q_mask.shape != (b, t):
    raise ValueError(f"q_mask must be [b, t] = {(b, t)}; got {q_mask.shape=}")
  return b, t, s, h, p


def _key_count(kv_mask, b, s):
  """Divisor of the sparsity measurement: ``L_K`` (real keys with a mask)."""
  if kv_mask is None:
    return jnp.full((b,), float(s), jnp.float32)
  return jnp.maximum(jnp.sum(kv_mask, axis=1).astype(jnp.float32), 1.0)


def _initial_context(v, t, causal, kv_mask, tril_matmul=False):
  """Lazy queries' output ``[b, h, t, pv]`` from ``v [b, h, s, pv]``.

  ``tril_matmul``: the causal cumulative sum as a product with a lower
  triangular matrix of ones (on XLA:CPU several times faster than
  ``cumsum`` for short sequences; O(t^2) work).
  """
  if kv_mask is not None:
    v = v * kv_mask[:, None, :, None].astype(v.dtype)
  if causal and tril_matmul:
    tril = jnp.tril(jnp.ones((t, t), v.dtype))
    return jnp.einsum("ts,bhsv->bhtv", tril, v, precision=_HI)
  if causal:
    return jnp.cumsum(v, axis=2)
  b, h, s, pv = v.shape
  n = _key_count(kv_mask, b, s)
  mean = jnp.sum(v, axis=2, keepdims=True) / n[:, None, None, None]
  return jnp.broadcast_to(mean, (b, h, t, pv))


# ------------------------------------------------------------------ reference
def probsparse_reference(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b s h p"],
    v: Float[Array, "b s h pv"],
    *,
    index_sample: Int[ArrayLike, "t u"] | Int[ArrayLike, "b t u"],
    factor: int = 5,
    causal: bool = False,
    scale: float | None = None,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
    q_mask: Bool[ArrayLike, "b t"] | None = None,
) -> tuple[Float[Array, "b t h pv"], None]:
  """The official ProbAttention, step by step (see the module docstring)."""
  b, t, s, h, p = _check(q, k, v, index_sample, causal, kv_mask, q_mask)
  n_top, _ = probsparse_sizes(t, s, factor)
  scale = 1.0 / math.sqrt(p) if scale is None else scale
  dtype = q.dtype
  q, k, v = (jnp.swapaxes(x.astype(jnp.float32), 1, 2) for x in (q, k, v))
  idx = jnp.broadcast_to(index_sample, (b,) + index_sample.shape[-2:])
  n_sample = idx.shape[-1]

  # 1-2. sampled scores and sparsity measurement (no gradient: indices only).
  qs, ks = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
  k_sample = jnp.take_along_axis(
      ks, idx.reshape(b, 1, t * n_sample, 1), axis=2).reshape(
          b, h, t, n_sample, p)
  qk_sample = jnp.einsum("bhtp,bhtup->bhtu", qs, k_sample, precision=_HI)
  n = _key_count(kv_mask, b, s)
  m = jnp.max(qk_sample, -1) - jnp.sum(qk_sample, -1) / n[:, None, None]
  if q_mask is not None:
    m = jnp.where(q_mask[:, None, :], m, -jnp.inf)
  _, top = jax.lax.top_k(m, n_top)  # [b, h, k]

  # 3. active queries: full softmax attention.
  q_top = jnp.take_along_axis(q, top[..., None], axis=2)  # [b, h, k, p]
  scores = jnp.einsum("bhkp,bhsp->bhks", q_top, k, precision=_HI) * scale
  allowed = jnp.ones((b, 1, 1, s), bool)
  if kv_mask is not None:
    allowed = allowed & kv_mask[:, None, None, :]
  if causal:
    allowed = allowed & (jnp.arange(s)[None, None, None, :] <= top[..., None])
  scores = jnp.where(allowed, scores, -jnp.inf)
  attn = jax.nn.softmax(scores, axis=-1)
  out_top = jnp.einsum("bhks,bhsv->bhkv", attn, v, precision=_HI)

  # 4. lazy queries keep the initial context; active rows are overwritten.
  ctx = _initial_context(v, t, causal, kv_mask)
  bi = jnp.arange(b)[:, None, None]
  hi = jnp.arange(h)[None, :, None]
  ctx = ctx.at[bi, hi, top].set(out_top)
  return jnp.swapaxes(ctx, 1, 2).astype(dtype), None


# ------------------------------------------------------------------ fast form
def _sparsity_dense(q, k, idx, n, s):
  """``M [b, h, t]`` from dense scores and the sample-count matrix."""
  nb, t, n_sample = idx.shape
  rows = jnp.broadcast_to(jnp.arange(t)[None, :, None], idx.shape)
  batch = jnp.broadcast_to(jnp.arange(nb)[:, None, None], idx.shape)
  counts = jnp.zeros((nb, t, s), jnp.float32).at[batch, rows, idx].add(1.0)
  qk = jnp.einsum("bhtp,bhsp->bhts", q, k, precision=_HI)
  qk_max = jnp.max(jnp.where(counts[:, None] > 0, qk, -jnp.inf), axis=-1)
  # sum_j c_ij q_i.k_j = q_i . (C K)_i: a product instead of a masked pass.
  ck = jnp.einsum("bts,bhsp->bhtp", counts, k, precision=_HI)
  qk_sum = jnp.sum(q * ck, axis=-1)
  return qk_max - qk_sum / n[:, None, None]


def _sparsity_gathered(q, k, idx, n):
  """``M [b, h, t]`` from gathered sampled keys, in chunks of queries."""
  b, h, t, p = q.shape
  n_sample = idx.shape[-1]
  idx = jnp.broadcast_to(idx, (b, t, n_sample))
  c = min(SELECT_CHUNK, t)
  pad = -t % c
  qp = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
  ip = jnp.pad(idx, ((0, 0), (0, pad), (0, 0)))
  nc = (t + pad) // c
  qc = jnp.moveaxis(qp.reshape(b, h, nc, c, p), 2, 0)
  ic = jnp.moveaxis(ip.reshape(b, nc, c, n_sample), 1, 0)

  def one(args):
    qb, ib = args  # [b, h, c, p], [b, c, u]
    kb = jnp.take_along_axis(k, ib.reshape(b, 1, c * n_sample, 1), axis=2)
    qk = jnp.einsum("bhcp,bhcup->bhcu", qb, kb.reshape(b, h, c, n_sample, p),
                    precision=_HI)
    return jnp.max(qk, -1) - jnp.sum(qk, -1) / n[:, None, None]

  m = jax.lax.map(one, (qc, ic))  # [nc, b, h, c]
  return jnp.moveaxis(m, 0, 2).reshape(b, h, t + pad)[:, :, :t]


def probsparse_select(
    q: Float[Array, "b h t p"],
    k: Float[Array, "b h s p"],
    index_sample: Int[ArrayLike, "t u"] | Int[ArrayLike, "b t u"],
    n_top: int,
    *,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
    q_mask: Bool[ArrayLike, "b t"] | None = None,
) -> Int[Array, "b h k"]:
  """Indices of the ``n_top`` active queries (top sparsity measurement)."""
  q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
  b, h, t, _ = q.shape
  s = k.shape[2]
  idx = index_sample if index_sample.ndim == 3 else index_sample[None]
  n = _key_count(kv_mask, b, s)
  if b * h * t * s * 4 <= DENSE_SELECT_BYTES:
    m = _sparsity_dense(q, k, idx, n, s)
  else:
    m = _sparsity_gathered(q, k, idx, n)
  if q_mask is not None:
    m = jnp.where(q_mask[:, None, :], m, -jnp.inf)
  return jax.lax.top_k(m, n_top)[1]


def probsparse_xla(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b s h p"],
    v: Float[Array, "b s h pv"],
    *,
    index_sample: Int[ArrayLike, "t u"] | Int[ArrayLike, "b t u"],
    factor: int = 5,
    causal: bool = False,
    scale: float | None = None,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
    q_mask: Bool[ArrayLike, "b t"] | None = None,
    one_hot: bool | None = None,
) -> tuple[Float[Array, "b t h pv"], None]:
  """Fast form of :func:`probsparse_reference` (same arguments).

  ``one_hot`` (default: ``t <= ONE_HOT_MAX_T``) picks the active query rows
  and puts their outputs back with products against a one-hot ``[k, t]``
  matrix (matmuls, also in the backward pass) instead of a gather and a
  scatter.
  """
  b, t, s, h, p = _check(q, k, v, index_sample, causal, kv_mask, q_mask)
  n_top, _ = probsparse_sizes(t, s, factor)
  scale = 1.0 / math.sqrt(p) if scale is None else scale
  one_hot = t <= ONE_HOT_MAX_T if one_hot is None else one_hot
  dtype = q.dtype
  q, k, v = (jnp.swapaxes(x.astype(jnp.float32), 1, 2) for x in (q, k, v))
  top = probsparse_select(q, k, index_sample, n_top, kv_mask=kv_mask,
                          q_mask=q_mask)  # [b, h, k]
  if one_hot:
    sel = jax.nn.one_hot(top, t, dtype=jnp.float32)  # [b, h, k, t]
    q_top = jnp.einsum("bhkt,bhtp->bhkp", sel, q, precision=_HI)
  else:
    q_top = jnp.take_along_axis(q, top[..., None], axis=2)
  scores = jnp.einsum("bhkp,bhsp->bhks", q_top, k, precision=_HI) * scale
  allowed = None
  if kv_mask is not None:
    allowed = jnp.broadcast_to(kv_mask[:, None, None, :], (b, 1, 1, s))
  if causal:
    c = jnp.arange(s)[None, None, None, :] <= top[..., None]
    allowed = c if allowed is None else allowed & c
  if allowed is not None:
    scores = jnp.where(allowed, scores, _NEG)
  attn = jax.nn.softmax(scores, axis=-1)
  out_top = jnp.einsum("bhks,bhsv->bhkv", attn, v, precision=_HI)
  ctx = _initial_context(v, t, causal, kv_mask, tril_matmul=one_hot)
  if one_hot:
    keep = 1.0 - jnp.sum(sel, axis=2)[..., None]  # [b, h, t, 1]
    ctx = ctx * keep + jnp.einsum("bhkt,bhkv->bhtv", sel, out_top,
                                  precision=_HI)
  else:
    bi = jnp.arange(b)[:, None, None]
    hi = jnp.arange(h)[None, :, None]
    ctx = ctx.at[bi, hi, top].set(out_top, unique_indices=True)
  return jnp.swapaxes(ctx, 1, 2).astype(dtype), None


def probsparse_attention(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b s h p"],
    v: Float[Array, "b s h pv"],
    *,
    factor: int = 5,
    causal: bool = False,
    key: jax.Array | None = None,
    index_sample: Int[ArrayLike, "t u"] | Int[ArrayLike, "b t u"] | None = None,
    scale: float | None = None,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
    q_mask: Bool[ArrayLike, "b t"] | None = None,
    impl: Impl | str = Impl.AUTO,
) -> tuple[Float[Array, "b t h pv"], None]:
  """ProbSparse attention; draws ``index_sample`` from ``key`` if not given.

  Returns ``(out [b, t, h, pv], None)`` (no recurrent state).
  """
  if index_sample is None:
    if key is None:
      raise ValueError("probsparse_attention needs a PRNG `key` (or an "
                       "explicit `index_sample`) to sample keys")
    index_sample = probsparse_sample(key, q.shape[1], k.shape[1], factor,
                                     kv_mask)
  impl = resolve_impl(impl, op="probsparse_attention")
  fn = probsparse_reference if impl is Impl.REFERENCE else probsparse_xla
  return fn(q, k, v, index_sample=index_sample, factor=factor, causal=causal,
            scale=scale, kv_mask=kv_mask, q_mask=q_mask)
