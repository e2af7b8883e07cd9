"""Softmax (full) attention: the dense reference, the XLA forms (dense, and
blocked and memory-efficient, both with a hand-written backward pass) and
the dispatcher ``attention``; the same blocked algorithm as Pallas kernels is
in attention_pallas.py.

Vaswani et al., "Attention Is All You Need" (NeurIPS 2017), eq. 1, per head:

  out_i = sum_j softmax_j(s_ij) v_j,   s_ij = scale * q_i . k_j

over the keys ``j`` that query ``i`` may see (``allowed[i, j]``): the key is
real (``kv_mask``), in the same segment (``q_segment_ids == kv_segment_ids``)
and, if ``causal``, not in the future (``j <= i``; causal needs ``t == s``).
A row with no allowed key gives 0. ``scale`` defaults to ``1 / sqrt(p)``.

Blocked form (Rabe & Staats, "Self-attention Does Not Need O(n^2) Memory",
arXiv 2112.05682; Dao, "FlashAttention-2", arXiv 2307.08691, Algorithms 1
and 2): queries in blocks of ``block_q``, keys in blocks of ``block_k``; for
every query block an online softmax runs over the key blocks (running max
``m``, running sum ``l``, unnormalised accumulator), so memory is
``O(t * block)`` rather than ``O(t s)``. The forward saves only the output
and the row log-sum-exp ``L = m + log l``; the backward (FlashAttention-2,
Algorithm 2) recomputes ``P = exp(S - L)`` block by block:

  dV_j += P^T dO_i,  dP = dO_i V_j^T,  dS = P o (dP - D_i),
  dQ_i += dS K_j,    dK_j += dS^T Q_i,  with D_i = rowsum(dO_i o O_i)

(``dS`` and ``D`` by ``attention_common``, shared with the block-sparse
patterns).

With ``causal=True`` the key blocks entirely in a query block's future are
never visited (forward and backward loops have data-dependent trip counts).

Performance (XLA:CPU, float32): every block product is a batched matmul on
operands in the layout XLA:CPU's matmul wants (the backward works on
transposed ``[s, t]`` blocks and accumulates ``dQ^T``; a transposed left
operand runs at about 2/3 of the speed); blocks of 256 x 128 keep the score
blocks in cache, which the dense form's ``[b, h, t, s]`` arrays are not
(see the constants below for the measurements). Masks are built per block
from position and per-token vectors, and not at all when nothing is masked.

Shapes (jaxtyping names): ``b`` batch, ``t`` query length, ``s`` key length,
``h`` heads, ``p`` head dim. Computation is in float32; outputs have
``q.dtype``.
"""
import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from kernels import Impl, register_op, resolve_impl
from kernels import attention_common as common
from kernels.attention_pallas import BlockSizes, attention_pallas

# native_validated: the backends where the Pallas kernels have passed their
# test class natively (none yet, so AUTO is the XLA form everywhere).
register_op("attention", pallas="attention", native_validated=frozenset())

_HI = jax.lax.Precision.HIGHEST

# ------------------------------------------------------------ XLA:CPU tuning
# The XLA form computes the dense [b, h, t, s] float32 score array when it is
# at most this many bytes, and the blocked form otherwise. Measured (CPU,
# float32, b=8 h=4 p=64, forward + backward of the kernel, process CPU
# time): at t=256 (8 MiB of scores) dense and blocked cost the same; at
# t=1024 (128 MiB) dense costs 770 ms and blocked 465 ms: the blocked form's
# score blocks stay in cache, the dense arrays do not.
DENSE_MAX_BYTES = 16 << 20

# The blocked form keeps its block probabilities for the backward
# (``save_probs``) when they take at most this many bytes. Off: on CPU the
# extra memory traffic costs more than the saved recomputation (projections
# + blocked attention 128x128, forward + backward, t=1024: 428 ms with,
# 376 ms without; t=4096: 5.46 s vs 5.11 s; 2 pinned cores of a quiet host).
SAVE_PROBS_MAX_BYTES = 0

# Blocks (q x k). Kernel forward + backward, b=8 h=4 p=64 float32, this
# 2-core CPU (wall-clock medians; runs on this host vary by 10-20%):
# t=1024: 256x128 333 ms, 128x128 382, 256x256 362, 512x128 326, 512x256
# 260-269, 1024x256 264, 512x512 279; t=4096: 256x128 5.54 s, 128x128 5.27,
# 512x256 3.77-4.16, 1024x256 4.13, 512x512 4.50, 2048x256 4.01. Linformer's
# attention (1024 queries, 256 keys): 256x256 110-137 ms, 512x256 84-93.
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 256
# --------------------------------------------------------------------------


def attention_reference(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b s h p"],
    v: Float[Array, "b s h pv"],
    *,
    causal: bool = False,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
    q_segment_ids: Int[ArrayLike, "b t"] | None = None,
    kv_segment_ids: Int[ArrayLike, "b s"] | None = None,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> tuple[Float[Array, "b t h pv"], None]:
  """Dense masked softmax attention, eq. 1 of Vaswani et al., in float32.

  ``block_q``/``block_k`` are accepted for a common signature and ignored.
  Returns ``(out [b, t, h, pv], None)``.
  """
  del block_q, block_k
  b, t, s, h, p = common.check_attention(q, k, v, causal, kv_mask,
                                         q_segment_ids, kv_segment_ids)
  out_dtype = q.dtype
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  scores = jnp.einsum("bthp,bshp->bhts", q, k, precision=_HI)
  scores = scores * common.default_scale(scale, p)
  allowed = jnp.ones((b, 1, t, s), bool)
  if kv_mask is not None:
    allowed = allowed & kv_mask[:, None, None, :]
  if q_segment_ids is not None:
    allowed = allowed & (q_segment_ids[:, None, :, None] ==
                         kv_segment_ids[:, None, None, :])
  if causal:
    allowed = allowed & jnp.tril(jnp.ones((t, s), bool))[None, None]
  # A finite fill keeps a row without allowed keys finite (uniform weights),
  # and its output is then set to 0.
  scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1)
  weights = jnp.where(jnp.any(allowed, axis=-1, keepdims=True), weights, 0.0)
  out = jnp.einsum("bhts,bshp->bthp", weights, v, precision=_HI)
  return out.astype(out_dtype), None


# --------------------------------------------------------------------------
# Shared by the dense and blocked XLA forms: masks from per-position vectors.

def _allowed(qpos, kpos, kv_valid, q_seg, kv_seg, causal):
  """Bool mask ``[b | 1, 1, tq, sk]`` from positions and per-token vectors,
  or None when every key is allowed (no select is then emitted).

  ``kv_valid [b, sk]`` (or None: all keys real), ``q_seg [b, tq]`` /
  ``kv_seg [b, sk]`` (or None).
  """
  allowed = None
  if kv_valid is not None:
    allowed = kv_valid[:, None, None, :]
  if q_seg is not None:
    same = q_seg[:, None, :, None] == kv_seg[:, None, None, :]
    allowed = same if allowed is None else allowed & same
  if causal:
    past = (qpos[:, None] >= kpos[None, :])[None, None]
    allowed = past if allowed is None else allowed & past
  return allowed


def _where(allowed, x, fill):
  return x if allowed is None else jnp.where(allowed, x, fill)


def _slice(x, start, size, axis):
  return None if x is None else jax.lax.dynamic_slice_in_dim(x, start, size,
                                                             axis=axis)


# --------------------------------------------------------------------------
# Dense XLA form: the reference's math in the [b, h, t, p] layout, with a
# hand-written backward that keeps only the output and the log-sum-exp.

def _dense_fwd_core(q, k, v, kv_valid, q_seg, kv_seg, causal):
  """``q, k, v [b, h, t|s, p]`` (q pre-scaled) -> ``(out, lse [b, h, t])``."""
  t, s = q.shape[2], k.shape[2]
  scores = jnp.einsum("bhtp,bhsp->bhts", q, k, precision=_HI)
  allowed = _allowed(jnp.arange(t), jnp.arange(s), kv_valid, q_seg, kv_seg,
                     causal)
  scores = _where(allowed, scores, -jnp.inf)
  m = jnp.max(scores, axis=-1)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  e = jnp.exp(scores - m[..., None])
  l = jnp.sum(e, axis=-1)
  acc = jnp.einsum("bhts,bhsp->bhtp", e, v, precision=_HI)
  out = acc / jnp.where(l > 0, l, 1.0)[..., None]
  lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), jnp.inf)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _dense_core(q, k, v, kv_valid, q_seg, kv_seg, causal):
  return _dense_fwd_core(q, k, v, kv_valid, q_seg, kv_seg, causal)[0]


def _dense_core_fwd(q, k, v, kv_valid, q_seg, kv_seg, causal):
  out, lse = _dense_fwd_core(q, k, v, kv_valid, q_seg, kv_seg, causal)
  return out, (q, k, v, kv_valid, q_seg, kv_seg, out, lse)


def _dense_core_bwd(causal, res, dout):
  q, k, v, kv_valid, q_seg, kv_seg, out, lse = res
  t, s = q.shape[2], k.shape[2]
  scores = jnp.einsum("bhtp,bhsp->bhts", q, k, precision=_HI)
  allowed = _allowed(jnp.arange(t), jnp.arange(s), kv_valid, q_seg, kv_seg,
                     causal)
  probs = _where(allowed, jnp.exp(scores - lse[..., None]), 0.0)
  dv = jnp.einsum("bhts,bhtp->bhsp", probs, dout, precision=_HI)
  dprobs = jnp.einsum("bhtp,bhsp->bhts", dout, v, precision=_HI)
  dscores = common.softmax_scores_grad(probs, dprobs,
                                       common.softmax_delta(dout, out))
  dq = jnp.einsum("bhts,bhsp->bhtp", dscores, k, precision=_HI)
  dk = jnp.einsum("bhts,bhtp->bhsp", dscores, q, precision=_HI)
  return dq, dk, dv, None, None, None


_dense_core.defvjp(_dense_core_fwd, _dense_core_bwd)


# --------------------------------------------------------------------------
# Blocked XLA form.

def _blocked_fwd_core(q, k, v, kv_valid, q_seg, kv_seg, causal, bq, bk,
                      save_probs=False):
  """Online softmax over key blocks for every query block.

  ``q [b, h, T, p]`` (pre-scaled, ``T`` a multiple of ``bq``), ``k, v
  [b, h, S, p]`` (``S`` a multiple of ``bk``), ``kv_valid [b, S]`` or None.
  Returns ``out [b, h, T, pv]``, ``lse [b, h, T]`` (``+inf`` for rows with
  no allowed key) and, with ``save_probs``, the unnormalised block
  probabilities ``E [nq, nk, b, h, bq, bk]`` with the running maxima
  ``M [nq, nk, b, h, bq]`` they were taken against (``P = E exp(M - lse)``),
  else None.
  """
  b, h, T, p = q.shape
  S, pv = k.shape[2], v.shape[3]
  nq, nk = T // bq, S // bk

  def q_block(_, i):
    qi = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=2)
    qseg_i = _slice(q_seg, i * bq, bq, 1)
    qpos = i * bq + jnp.arange(bq)

    def k_block(j, carry):
      acc, m, l, saved = carry
      kj = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
      vj = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)
      valid_j = _slice(kv_valid, j * bk, bk, 1)
      kseg_j = _slice(kv_seg, j * bk, bk, 1)
      kpos = j * bk + jnp.arange(bk)
      sc = jnp.einsum("bhtp,bhsp->bhts", qi, kj, precision=_HI)
      allowed = _allowed(qpos, kpos, valid_j, qseg_i, kseg_j, causal)
      sc = _where(allowed, sc, -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(sc, axis=-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      e = jnp.exp(sc - m_safe[..., None])
      corr = jnp.exp(jnp.where(jnp.isfinite(m), m, m_safe) - m_safe)
      l = corr * l + jnp.sum(e, axis=-1)
      acc = corr[..., None] * acc + jnp.einsum(
          "bhts,bhsp->bhtp", e, vj, precision=_HI)
      if saved is not None:
        saved = (jax.lax.dynamic_update_index_in_dim(saved[0], e, j, 0),
                 jax.lax.dynamic_update_index_in_dim(saved[1], m_safe, j, 0))
      return acc, m_new, l, saved

    saved = None
    if save_probs:  # blocks a causal row skips stay zero (never read)
      saved = (jnp.zeros((nk, b, h, bq, bk), jnp.float32),
               jnp.zeros((nk, b, h, bq), jnp.float32))
    init = (jnp.zeros((b, h, bq, pv), jnp.float32),
            jnp.full((b, h, bq), -jnp.inf, jnp.float32),
            jnp.zeros((b, h, bq), jnp.float32), saved)
    # Causal: key blocks starting after the block's last query are skipped.
    n_j = jnp.minimum((i * bq + bq - 1) // bk + 1, nk) if causal else nk
    acc, m, l, saved = jax.lax.fori_loop(0, n_j, k_block, init)
    pos = l > 0
    out_i = acc / jnp.where(pos, l, 1.0)[..., None]
    lse_i = jnp.where(pos, m + jnp.log(jnp.where(pos, l, 1.0)), jnp.inf)
    return None, (out_i, lse_i, saved)

  _, (out, lse, saved) = jax.lax.scan(q_block, None, jnp.arange(nq))
  # [nq, b, h, bq, .] -> [b, h, T, .]
  out = jnp.moveaxis(out, 0, 2).reshape(b, h, T, pv)
  lse = jnp.moveaxis(lse, 0, 2).reshape(b, h, T)
  return out, lse, saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _blocked_core(q, k, v, kv_valid, q_seg, kv_seg, causal, bq, bk,
                  save_probs):
  return _blocked_fwd_core(q, k, v, kv_valid, q_seg, kv_seg, causal, bq,
                           bk)[0]


def _blocked_core_fwd(q, k, v, kv_valid, q_seg, kv_seg, causal, bq, bk,
                      save_probs):
  out, lse, saved = _blocked_fwd_core(q, k, v, kv_valid, q_seg, kv_seg,
                                      causal, bq, bk, save_probs)
  return out, (q, k, v, kv_valid, q_seg, kv_seg, out, lse, saved)


def _blocked_core_bwd(causal, bq, bk, save_probs, res, dout):
  """FlashAttention-2 Algorithm 2: outer loop over key blocks, inner over the
  query blocks that see them; ``dQ`` accumulates in the outer carry."""
  q, k, v, kv_valid, q_seg, kv_seg, out, lse, saved = res
  if save_probs:
    return _blocked_bwd_saved(causal, bq, bk, res, dout)
  b, h, T, p = q.shape
  S, pv = k.shape[2], v.shape[3]
  nq, nk = T // bq, S // bk
  # [b, h, T] (a trailing size-1 axis here costs XLA:CPU ~10% at t=1024).
  delta = common.softmax_delta(dout, out)[..., 0]

  def k_block(dqT, j):
    kj = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
    vj = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)
    valid_j = _slice(kv_valid, j * bk, bk, 1)
    kseg_j = _slice(kv_seg, j * bk, bk, 1)
    kpos = j * bk + jnp.arange(bk)

    def q_block(i, carry):
      dqT, dk_j, dv_j = carry
      sl = lambda x: jax.lax.dynamic_slice_in_dim(x, i * bq, bq, axis=2)
      qi, doi, lse_i, delta_i = sl(q), sl(dout), sl(lse), sl(delta)
      qseg_i = _slice(q_seg, i * bq, bq, 1)
      qpos = i * bq + jnp.arange(bq)
      # Transposed blocks [s, t]: every product below but dQ then has its
      # operands in the layout XLA:CPU's matmul wants.
      scT = jnp.einsum("bhsp,bhtp->bhst", kj, qi, precision=_HI)
      allowed = _allowed(qpos, kpos, valid_j, qseg_i, kseg_j, causal)
      allowedT = None if allowed is None else jnp.swapaxes(allowed, 2, 3)
      probsT = _where(allowedT, jnp.exp(scT - lse_i[:, :, None, :]), 0.0)
      dv_j = dv_j + jnp.einsum("bhst,bhtp->bhsp", probsT, doi, precision=_HI)
      dprobsT = jnp.einsum("bhsp,bhtp->bhst", vj, doi, precision=_HI)
      dsT = common.softmax_scores_grad(probsT, dprobsT,
                                       delta_i[:, :, None, :])
      dk_j = dk_j + jnp.einsum("bhst,bhtp->bhsp", dsT, qi, precision=_HI)
      # dQ^T [p, t]: a transposed output is cheaper than a transposed lhs.
      dqT_i = jax.lax.dynamic_slice_in_dim(dqT, i * bq, bq, axis=3) + (
          jnp.einsum("bhst,bhsp->bhpt", dsT, kj, precision=_HI))
      dqT = jax.lax.dynamic_update_slice_in_dim(dqT, dqT_i, i * bq, axis=3)
      return dqT, dk_j, dv_j

    # Causal: query blocks ending before the key block starts are skipped.
    i0 = (j * bk) // bq if causal else 0
    dqT, dk_j, dv_j = jax.lax.fori_loop(
        i0, nq, q_block,
        (dqT, jnp.zeros((b, h, bk, p), jnp.float32),
         jnp.zeros((b, h, bk, pv), jnp.float32)))
    return dqT, (dk_j, dv_j)

  dqT, (dk, dv) = jax.lax.scan(k_block, jnp.zeros((b, h, p, T), jnp.float32),
                               jnp.arange(nk))
  dq = jnp.swapaxes(dqT, 2, 3)
  dk = jnp.moveaxis(dk, 0, 2).reshape(b, h, S, p)
  dv = jnp.moveaxis(dv, 0, 2).reshape(b, h, S, pv)
  return dq, dk, dv, None, None, None


def _blocked_bwd_saved(causal, bq, bk, res, dout):
  """The backward from the saved block probabilities: no ``Q K^T`` and no
  ``exp`` to recompute. Blocks in the forward's ``[t, s]`` orientation, so
  ``dK`` and ``dV`` accumulate transposed (``[p, s]``)."""
  q, k, v, _, _, _, out, lse, (E, M) = res
  b, h, T, p = q.shape
  S, pv = k.shape[2], v.shape[3]
  nq, nk = T // bq, S // bk
  # [b, h, T] (a trailing size-1 axis here costs XLA:CPU ~10% at t=1024).
  delta = common.softmax_delta(dout, out)[..., 0]

  def k_block(dq, j):
    kj = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
    vj = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)

    def q_block(i, carry):
      dq, dkT_j, dvT_j = carry
      sl = lambda x: jax.lax.dynamic_slice_in_dim(x, i * bq, bq, axis=2)
      qi, doi, lse_i, delta_i = sl(q), sl(dout), sl(lse), sl(delta)
      e_ij = E[i, j]
      # Rows without keys have lse = inf and e = 0: P = 0.
      probs = e_ij * jnp.exp(M[i, j] - lse_i)[..., None]
      dvT_j = dvT_j + jnp.einsum("bhtp,bhts->bhps", doi, probs, precision=_HI)
      dprobs = jnp.einsum("bhtp,bhsp->bhts", doi, vj, precision=_HI)
      ds = common.softmax_scores_grad(probs, dprobs, delta_i[..., None])
      dkT_j = dkT_j + jnp.einsum("bhtp,bhts->bhps", qi, ds, precision=_HI)
      dq_i = sl(dq) + jnp.einsum("bhts,bhsp->bhtp", ds, kj, precision=_HI)
      dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * bq, axis=2)
      return dq, dkT_j, dvT_j

    i0 = (j * bk) // bq if causal else 0
    dq, dkT_j, dvT_j = jax.lax.fori_loop(
        i0, nq, q_block,
        (dq, jnp.zeros((b, h, p, bk), jnp.float32),
         jnp.zeros((b, h, pv, bk), jnp.float32)))
    return dq, (dkT_j, dvT_j)

  dq, (dkT, dvT) = jax.lax.scan(k_block, jnp.zeros_like(q), jnp.arange(nk))
  dk = jnp.swapaxes(jnp.moveaxis(dkT, 0, 3).reshape(b, h, p, S), 2, 3)
  dv = jnp.swapaxes(jnp.moveaxis(dvT, 0, 3).reshape(b, h, pv, S), 2, 3)
  return dq, dk, dv, None, None, None


_blocked_core.defvjp(_blocked_core_fwd, _blocked_core_bwd)


def attention_dense(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b s h p"],
    v: Float[Array, "b s h pv"],
    *,
    causal: bool = False,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
    q_segment_ids: Int[ArrayLike, "b t"] | None = None,
    kv_segment_ids: Int[ArrayLike, "b s"] | None = None,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> tuple[Float[Array, "b t h pv"], None]:
  """The XLA form for short sequences: one dense ``[b, h, t, s]`` score array.

  The backward recomputes the scores from the saved log-sum-exp (as the
  blocked form, in one block), so only ``out`` and ``lse`` are residuals.
  Arguments and returns as ``attention_reference``.
  """
  del block_q, block_k
  b, t, s, h, p = common.check_attention(q, k, v, causal, kv_mask,
                                         q_segment_ids, kv_segment_ids)
  args = common.to_heads_layout(q, k, v, kv_mask, q_segment_ids,
                                kv_segment_ids, scale, t, s)
  out = _dense_core(*args, causal)
  return common.from_heads_layout(out, t, q.dtype), None


def attention_blocked(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b s h p"],
    v: Float[Array, "b s h pv"],
    *,
    causal: bool = False,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
    q_segment_ids: Int[ArrayLike, "b t"] | None = None,
    kv_segment_ids: Int[ArrayLike, "b s"] | None = None,
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
    save_probs: bool = False,
) -> tuple[Float[Array, "b t h pv"], None]:
  """Blocked (flash) attention, ``O(t * block)`` memory; see module docstring.

  Lengths need not be multiples of the blocks: queries and keys are padded
  internally (padded keys are masked, padded queries cut). Blocks longer than
  the sequence are shrunk to it.

  ``save_probs=True`` trades memory for time: the forward also keeps every
  block's unnormalised probabilities (``O(t s)`` memory, like the dense
  form), so the backward skips recomputing ``Q K^T`` and its ``exp`` (four
  block products instead of five). Other arguments and returns as
  ``attention_reference``.
  """
  b, t, s, h, p = common.check_attention(q, k, v, causal, kv_mask,
                                         q_segment_ids, kv_segment_ids)
  if int(block_q) < 1 or int(block_k) < 1:
    raise ValueError(f"{block_q=} and {block_k=} must be >= 1")
  bq, bk = min(int(block_q), t), min(int(block_k), s)
  T, S = -(-t // bq) * bq, -(-s // bk) * bk
  args = common.to_heads_layout(q, k, v, kv_mask, q_segment_ids,
                                kv_segment_ids, scale, T, S)
  out = _blocked_core(*args, causal, bq, bk, bool(save_probs))
  return common.from_heads_layout(out, t, q.dtype), None



def attention(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b s h p"],
    v: Float[Array, "b s h pv"],
    *,
    causal: bool = False,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
    q_segment_ids: Int[ArrayLike, "b t"] | None = None,
    kv_segment_ids: Int[ArrayLike, "b s"] | None = None,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    impl: Impl | str = Impl.AUTO,
) -> tuple[Float[Array, "b t h pv"], None]:
  """Softmax attention ``(out, None)`` whatever ``impl``; see the module
  docstring.

  ``impl``: ``Impl.REFERENCE`` (dense, autodiff); ``Impl.PALLAS`` /
  ``Impl.PALLAS_INTERPRET``, the Pallas kernels
  (``kernels.attention_pallas``; AUTO picks them only where they have passed
  natively, ``kernels.NATIVE_VALIDATED``); or the XLA form: dense when the
  ``[b, h, t, s]`` float32 score array fits in ``DENSE_MAX_BYTES``, else
  blocked, saving the block probabilities for the backward when they fit in
  ``SAVE_PROBS_MAX_BYTES``. ``block_q`` / ``block_k``: None takes the chosen
  form's defaults (the Pallas ``BlockSizes``' or ``DEFAULT_BLOCK_Q`` /
  ``DEFAULT_BLOCK_K``).
  """
  impl = resolve_impl(impl, op="attention")
  kwargs = dict(causal=causal, kv_mask=kv_mask, q_segment_ids=q_segment_ids,
                kv_segment_ids=kv_segment_ids, scale=scale)
  if impl is Impl.REFERENCE:
    return attention_reference(q, k, v, **kwargs)
  if impl in (Impl.PALLAS, Impl.PALLAS_INTERPRET):
    blocks = {name: n for name, n in (("block_q", block_q),
                                      ("block_k", block_k)) if n is not None}
    return attention_pallas(q, k, v, block_sizes=BlockSizes(**blocks),
                            interpret=impl is Impl.PALLAS_INTERPRET, **kwargs)
  kwargs.update(block_q=DEFAULT_BLOCK_Q if block_q is None else block_q,
                block_k=DEFAULT_BLOCK_K if block_k is None else block_k)
  b, t, h, _ = q.shape
  score_bytes = b * h * t * k.shape[1] * 4
  if score_bytes <= DENSE_MAX_BYTES:
    return attention_dense(q, k, v, **kwargs)
  return attention_blocked(q, k, v, save_probs=score_bytes <=
                           SAVE_PROBS_MAX_BYTES, **kwargs)
