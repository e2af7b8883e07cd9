"""Full softmax attention as Pallas kernels (FlashAttention-2).

The same blocked algorithm as ``kernels.attention.attention_blocked`` (see
that module for the equations; Dao, "FlashAttention-2", arXiv 2307.08691,
Algorithms 1 and 2), as three kernels: one program per (batch, head, query
block) for the forward and for dQ, one per (batch, head, key block) for dK
and dV; each loops over the other axis's blocks, so no program writes
another's output. The masks come from positions and the per-token vectors, as
in the XLA forms. The forward saves the output and the row log-sum-exp; the
backward recomputes ``P`` block by block and forms ``dS = P o (dP - delta)``
in the kernel bodies with ``attention_common.softmax_scores_grad``.

Tested on CPU with ``interpret=True``, lowered to Triton for CUDA and compiled
ahead of time for TPU in tests; not yet run natively, so ``Impl.AUTO`` does
not pick them (``kernels.NATIVE_VALIDATED``; ``impl="pallas"`` does).

Shapes (jaxtyping names): ``b`` batch, ``t`` query length, ``s`` key length,
``h`` heads, ``p`` head dim. Computation is in float32; outputs have
``q.dtype``.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from kernels import attention_common as common

_HI = jax.lax.Precision.HIGHEST


def _pow2(n):
  return n >= 1 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Pallas blocks: ``block_q`` queries by ``block_k`` keys.

  Powers of two, as Triton's block shapes must be (the head dims too, checked
  by ``attention_pallas``); not tuned natively yet. A block longer than its
  (padded) sequence is shrunk to it.
  """
  block_q: int = 128
  block_k: int = 128

  def __post_init__(self):
    block_q, block_k = self.block_q, self.block_k
    if not _pow2(block_q):
      raise ValueError(f"Pallas attention blocks must be powers of two; "
                       f"{block_q=} is not")
    if not _pow2(block_k):
      raise ValueError(f"Pallas attention blocks must be powers of two; "
                       f"{block_k=} is not")


def _pl_compiler_params():
  """Triton on GPU (the kernels are written for it: whole-length key/value
  refs read block by block in the loops); the default lowering elsewhere."""
  if jax.default_backend() == "gpu":
    from jax.experimental.pallas import triton as pl_triton
    return pl_triton.CompilerParams(num_warps=4, num_stages=2)
  return None


def _pl_dot(a, b, contract_a, contract_b):
  """``a [m, k] . b`` over dims ``contract_a`` / ``contract_b``, float32."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                             precision=_HI,
                             preferred_element_type=jnp.float32)


def _pl_allowed(i, j, bq, bk, causal, valid_ref, q_seg, kv_seg_ref):
  """``[bq, bk]`` bool mask of query block ``i`` against key block ``j``, or
  None when every key is allowed."""
  keys = pl.ds(j * bk, bk)
  allowed = None
  if valid_ref is not None:                         # [1, S] refs
    allowed = jnp.broadcast_to(valid_ref[:, keys] != 0, (bq, bk))
  if q_seg is not None:                             # [bq, 1]
    same = q_seg == kv_seg_ref[:, keys]
    allowed = same if allowed is None else allowed & same
  if causal:
    qpos = i * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    kpos = j * bk + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    allowed = (qpos >= kpos) if allowed is None else allowed & (qpos >= kpos)
  return allowed


def _pl_unpack(refs, n_out, has_valid, has_seg):
  """``(q, k, v, valid, q_seg, kv_seg, *rest)`` refs; absent ones None."""
  q_ref, k_ref, v_ref, *rest = refs
  valid_ref = rest.pop(0) if has_valid else None
  q_seg_ref, kv_seg_ref = ((rest.pop(0), rest.pop(0)) if has_seg else
                           (None, None))
  assert len(rest) >= n_out
  return (q_ref, k_ref, v_ref, valid_ref, q_seg_ref, kv_seg_ref, *rest)


def _pl_key_blocks(i, bq, bk, nk, causal):
  """Key blocks that query block ``i`` visits: ``0 .. hi`` (causal: those
  not entirely in its future)."""
  if not causal:
    return nk
  return jnp.minimum(nk, jax.lax.div((i + 1) * bq + bk - 1, bk))


def _pl_fwd_kernel(*refs, causal, has_valid, has_seg, bq, bk, nk):
  (q_ref, k_ref, v_ref, valid_ref, q_seg_ref, kv_seg_ref, o_ref,
   lse_ref) = _pl_unpack(refs, 2, has_valid, has_seg)
  i = pl.program_id(2)
  q = q_ref[...]                                    # [bq, p], pre-scaled
  q_seg = None if q_seg_ref is None else q_seg_ref[...]
  pv = v_ref.shape[-1]

  def body(j, carry):
    acc, m, l = carry
    s = _pl_dot(q, k_ref[pl.ds(j * bk, bk), :], 1, 1)     # [bq, bk]
    allowed = _pl_allowed(i, j, bq, bk, causal, valid_ref, q_seg, kv_seg_ref)
    if allowed is not None:
      s = jnp.where(allowed, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    m_use = jnp.where(m_new > -jnp.inf, m_new, 0.0)  # rows without keys yet
    prob = jnp.exp(s - m_use)
    alpha = jnp.exp(m - m_use)
    l = alpha * l + jnp.sum(prob, axis=1, keepdims=True)
    acc = acc * alpha + _pl_dot(prob, v_ref[pl.ds(j * bk, bk), :], 1, 0)
    return acc, m_new, l

  init = (jnp.zeros((bq, pv), jnp.float32),
          jnp.full((bq, 1), -jnp.inf, jnp.float32),
          jnp.zeros((bq, 1), jnp.float32))
  acc, m, l = jax.lax.fori_loop(0, _pl_key_blocks(i, bq, bk, nk, causal),
                                body, init)
  seen = l > 0                                      # else: no allowed key
  o_ref[...] = (acc / jnp.where(seen, l, 1.0)).astype(o_ref.dtype)
  # A row without keys gets lse 0: its backward probabilities exp(-inf - 0)
  # are then exactly 0.
  lse_ref[...] = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)


def _pl_probs(q, k, lse, allowed):
  s = _pl_dot(q, k, 1, 1)
  if allowed is not None:
    s = jnp.where(allowed, s, -jnp.inf)
  return jnp.exp(s - lse)


def _pl_dq_kernel(*refs, causal, has_valid, has_seg, bq, bk, nk):
  (q_ref, k_ref, v_ref, valid_ref, q_seg_ref, kv_seg_ref, do_ref, lse_ref,
   delta_ref, dq_ref) = _pl_unpack(refs, 4, has_valid, has_seg)
  i = pl.program_id(2)
  q, d_out = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_seg = None if q_seg_ref is None else q_seg_ref[...]

  def body(j, dq):
    k = k_ref[pl.ds(j * bk, bk), :]
    allowed = _pl_allowed(i, j, bq, bk, causal, valid_ref, q_seg, kv_seg_ref)
    prob = _pl_probs(q, k, lse, allowed)
    dp = _pl_dot(d_out, v_ref[pl.ds(j * bk, bk), :], 1, 1)
    return dq + _pl_dot(common.softmax_scores_grad(prob, dp, delta), k, 1, 0)

  dq = jax.lax.fori_loop(0, _pl_key_blocks(i, bq, bk, nk, causal), body,
                         jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _pl_dkv_kernel(*refs, causal, has_valid, has_seg, bq, bk, nq):
  (q_ref, k_ref, v_ref, valid_ref, q_seg_ref, kv_seg_ref, do_ref, lse_ref,
   delta_ref, dk_ref, dv_ref) = _pl_unpack(refs, 5, has_valid, has_seg)
  j = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]                     # key block j

  def body(i, carry):
    dk, dv = carry
    rows = pl.ds(i * bq, bq)
    q, d_out = q_ref[rows, :], do_ref[rows, :]
    q_seg = None if q_seg_ref is None else q_seg_ref[rows, :]
    allowed = _pl_allowed(i, j, bq, bk, causal, valid_ref, q_seg, kv_seg_ref)
    prob = _pl_probs(q, k, lse_ref[rows, :], allowed)      # [bq, bk]
    dv = dv + _pl_dot(prob, d_out, 0, 0)
    ds = common.softmax_scores_grad(prob, _pl_dot(d_out, v, 1, 1),
                                    delta_ref[rows, :])
    return dk + _pl_dot(ds, q, 0, 0), dv

  lo = jax.lax.div(j * bk, bq) if causal else 0   # query blocks that see j
  dk, dv = jax.lax.fori_loop(lo, nq, body, (jnp.zeros(k.shape, jnp.float32),
                                            jnp.zeros(v.shape, jnp.float32)))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _pl_specs(q, k, v, kv_valid, q_seg, kv_seg, bq, bk, by_keys):
  """BlockSpecs and operands of the inputs: the gridded axis's arrays in
  blocks, the other axis's whole (the kernels loop over it). Per-token
  vectors are 2-D in the kernels: keys' ``[1, S]`` (from ``[b, 1, S]``),
  queries' ``[bq | T, 1]`` (from ``[b, T, 1]``), so that every block's last
  two dims are whole or tiles (as Mosaic TPU requires)."""
  sq = pl.squeezed
  T, S = q.shape[2], k.shape[2]
  p, pv = q.shape[-1], v.shape[-1]
  if by_keys:
    specs = [_pl_rows(T, p, False), _pl_rows(bk, p, True),
             _pl_rows(bk, pv, True)]
  else:
    specs = [_pl_rows(bq, p, True), _pl_rows(S, p, False),
             _pl_rows(S, pv, False)]
  key_vec = pl.BlockSpec((sq, 1, S), lambda b, h, i: (b, 0, 0))
  args = [q, k, v]
  if kv_valid is not None:
    specs.append(key_vec)
    args.append(kv_valid.astype(jnp.int32)[:, None, :])
  if q_seg is not None:
    q_vec = (pl.BlockSpec((sq, T, 1), lambda b, h, i: (b, 0, 0)) if by_keys
             else pl.BlockSpec((sq, bq, 1), lambda b, h, i: (b, i, 0)))
    specs += [q_vec, key_vec]
    args += [q_seg[:, :, None], kv_seg[:, None, :]]
  return specs, args


def _pl_rows(n, p, blocked):
  """``[b, h, len, p]`` in blocks of ``n`` rows along the grid's last axis,
  or whole (``n`` = len) for every program."""
  sq = pl.squeezed
  if blocked:
    return pl.BlockSpec((sq, sq, n, p), lambda b, h, i: (b, h, i, 0))
  return pl.BlockSpec((sq, sq, n, p), lambda b, h, i: (b, h, 0, 0))


def _pl_forward(q, k, v, kv_valid, q_seg, kv_seg, causal, bq, bk,
                interpret):
  b, h, T, _ = q.shape
  S, pv = k.shape[2], v.shape[-1]
  specs, args = _pl_specs(q, k, v, kv_valid, q_seg, kv_seg, bq, bk, False)
  kernel = functools.partial(
      _pl_fwd_kernel, causal=causal, has_valid=kv_valid is not None,
      has_seg=q_seg is not None, bq=bq, bk=bk, nk=S // bk)
  return pl.pallas_call(
      kernel,
      grid=(b, h, T // bq),
      in_specs=specs,
      out_specs=[_pl_rows(bq, pv, True), _pl_rows(bq, 1, True)],
      out_shape=[jax.ShapeDtypeStruct((b, h, T, pv), jnp.float32),
                 jax.ShapeDtypeStruct((b, h, T, 1), jnp.float32)],
      interpret=interpret,
      compiler_params=None if interpret else _pl_compiler_params(),
      name="attention_pallas_fwd",
  )(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _pallas_core(q, k, v, kv_valid, q_seg, kv_seg, causal, bq, bk, interpret):
  return _pl_forward(q, k, v, kv_valid, q_seg, kv_seg, causal, bq, bk,
                     interpret)[0]


def _pallas_core_fwd(q, k, v, kv_valid, q_seg, kv_seg, causal, bq, bk,
                     interpret):
  out, lse = _pl_forward(q, k, v, kv_valid, q_seg, kv_seg, causal, bq, bk,
                         interpret)
  return out, (q, k, v, kv_valid, q_seg, kv_seg, out, lse)


def _pallas_core_bwd(causal, bq, bk, interpret, res, dout):
  q, k, v, kv_valid, q_seg, kv_seg, out, lse = res
  b, h, T, p = q.shape
  S, pv = k.shape[2], v.shape[-1]
  delta = common.softmax_delta(dout, out)          # [b, h, T, 1] as lse
  flags = dict(causal=causal, has_valid=kv_valid is not None,
               has_seg=q_seg is not None, bq=bq, bk=bk)
  rows_blk = [_pl_rows(bq, pv, True), _pl_rows(bq, 1, True),
              _pl_rows(bq, 1, True)]
  rows_whole = [_pl_rows(T, pv, False), _pl_rows(T, 1, False),
                _pl_rows(T, 1, False)]
  specs, args = _pl_specs(q, k, v, kv_valid, q_seg, kv_seg, bq, bk, False)
  dq = pl.pallas_call(
      functools.partial(_pl_dq_kernel, nk=S // bk, **flags),
      grid=(b, h, T // bq),
      in_specs=specs + rows_blk,
      out_specs=_pl_rows(bq, p, True),
      out_shape=jax.ShapeDtypeStruct(q.shape, jnp.float32),
      interpret=interpret,
      compiler_params=None if interpret else _pl_compiler_params(),
      name="attention_pallas_bwd_dq",
  )(*args, dout, lse, delta)
  specs, args = _pl_specs(q, k, v, kv_valid, q_seg, kv_seg, bq, bk, True)
  dk, dv = pl.pallas_call(
      functools.partial(_pl_dkv_kernel, nq=T // bq, **flags),
      grid=(b, h, S // bk),
      in_specs=specs + rows_whole,
      out_specs=[_pl_rows(bk, p, True), _pl_rows(bk, pv, True)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, jnp.float32),
                 jax.ShapeDtypeStruct(v.shape, jnp.float32)],
      interpret=interpret,
      compiler_params=None if interpret else _pl_compiler_params(),
      name="attention_pallas_bwd_dkv",
  )(*args, dout, lse, delta)
  return dq, dk, dv, None, None, None


_pallas_core.defvjp(_pallas_core_fwd, _pallas_core_bwd)

def attention_pallas(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b s h p"],
    v: Float[Array, "b s h pv"],
    *,
    causal: bool = False,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
    q_segment_ids: Int[ArrayLike, "b t"] | None = None,
    kv_segment_ids: Int[ArrayLike, "b s"] | None = None,
    scale: float | None = None,
    block_sizes: BlockSizes = BlockSizes(),
    interpret: bool = False,
) -> tuple[Float[Array, "b t h pv"], None]:
  """Blocked attention as Pallas kernels (forward, dQ, dK/dV); see the module
  docstring. Lengths are padded to the blocks (padded keys masked, padded
  queries cut); the blocks (``block_sizes``, shrunk to the padded lengths)
  and the head dims must be powers of two (on GPU also >= 16).
  ``interpret=True`` runs the kernels on CPU. Arguments and returns as
  ``kernels.attention.attention_reference``.
  """
  b, t, s, h, p = common.check_attention(q, k, v, causal, kv_mask,
                                         q_segment_ids, kv_segment_ids)
  up2 = lambda n: 1 << max(0, (n - 1).bit_length())
  bq = min(block_sizes.block_q, up2(t))
  bk = min(block_sizes.block_k, up2(s))
  dims = {"block_q": bq, "block_k": bk, "head dim p": p,
          "value head dim pv": v.shape[-1]}
  bad = {name: n for name, n in dims.items() if not _pow2(n)}
  if bad:
    raise ValueError(f"the Pallas attention kernel needs powers of two for "
                     f"its blocks and head dims; got {bad}")
  small = {name: n for name, n in dims.items() if n < 16}
  if small and not interpret and jax.default_backend() == "gpu":
    raise ValueError(f"the Pallas attention kernel's Triton dots need blocks "
                     f"and head dims >= 16 on GPU; got {small}")
  T, S = -(-t // bq) * bq, -(-s // bk) * bk
  args = common.to_heads_layout(q, k, v, kv_mask, q_segment_ids,
                                kv_segment_ids, scale, T, S)
  out = _pallas_core(*args, causal, bq, bk, bool(interpret))
  return common.from_heads_layout(out, t, q.dtype), None
