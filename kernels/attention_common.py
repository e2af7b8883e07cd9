"""What the softmax-attention kernels share.

Every softmax attention here, ``O = P V`` with ``P = softmax(S)`` over the
allowed keys, has the same backward from the saved (or recomputed)
probabilities (Dao, "FlashAttention-2", arXiv 2307.08691, Algorithm 2):

  dV = P^T dO,   dP = dO V^T,   dS = P o (dP - delta),   delta = rowsum(dO o O),
  dQ = dS K,     dK = dS^T Q.

``softmax_delta`` and ``softmax_scores_grad`` are its two softmax-specific
steps, used by the XLA forms of full attention (dense and blocked), by the
masked softmax of the block-sparse patterns and, for ``delta``, by the
Pallas kernels' wrapper (the kernels compute ``dS`` in their bodies).

Also here: the argument checks and the ``[b, h, len, p]`` layout shared by
full attention's XLA forms (attention.py) and Pallas kernels
(attention_pallas.py).
"""
import math

import jax.numpy as jnp


def default_scale(scale: float | None, p: int) -> float:
  """The score scale: ``scale``, or ``1 / sqrt(p)`` for head dim ``p``."""
  return 1.0 / math.sqrt(p) if scale is None else float(scale)


def softmax_delta(d_out, out):
  """``delta = rowsum(dO o O)`` over the last axis, kept as a size-1 axis."""
  return jnp.sum(d_out * out, axis=-1, keepdims=True)


def softmax_scores_grad(probs, d_probs, delta):
  """``dS = P o (dP - delta)``, the gradient of the scores through the
  softmax (``delta`` broadcast along the keys)."""
  return probs * (d_probs - delta)


def check_attention(q, k, v, causal, kv_mask, q_segment_ids,
                    kv_segment_ids):
  """Validates full attention's arguments; returns ``(b, t, s, h, p)``."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [b, t|s, h, p]; got {q.shape=} "
                     f"{k.shape=} {v.shape=}")
  b, t, h, p = q.shape
  s = k.shape[1]
  if k.shape != (b, s, h, p):
    raise ValueError(f"k must be [b, s, h, p] = {(b, s, h, p)}; got {k.shape=}")
  if v.shape[:3] != (b, s, h):
    raise ValueError(f"v must be [b, s, h, pv] with {(b, s, h)=}; "
                     f"got {v.shape=}")
  if causal and t != s:
    raise ValueError(f"causal attention needs t == s; got {t=} {s=}")
  if kv_mask is not None and kv_mask.shape != (b, s):
    raise ValueError(f"kv_mask must be [b, s] = {(b, s)}; got "
                     f"{kv_mask.shape=}")
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("give both q_segment_ids and kv_segment_ids or neither")
  if q_segment_ids is not None:
    if q_segment_ids.shape != (b, t):
      raise ValueError(f"q_segment_ids must be [b, t] = {(b, t)}; got "
                       f"{q_segment_ids.shape=}")
    if kv_segment_ids.shape != (b, s):
      raise ValueError(f"kv_segment_ids must be [b, s] = {(b, s)}; got "
                       f"{kv_segment_ids.shape=}")
  return b, t, s, h, p


def to_heads_layout(q, k, v, kv_mask, q_segment_ids, kv_segment_ids, scale,
                    T, S):
  """float32, ``[b, h, len, p]`` layout, q scaled, lengths padded to T / S.

  Returns ``(q, k, v, kv_valid, q_seg, kv_seg)``: ``kv_valid [b, S]`` is None
  when every key is real (no mask is then built at all); padding keys are
  never valid; the segment ids are None without segments.
  """
  b, t, h, p = q.shape
  s = k.shape[1]
  f32 = lambda x: x.astype(jnp.float32)
  to_bh = lambda x, n: jnp.pad(jnp.transpose(f32(x), (0, 2, 1, 3)),
                               [(0, 0), (0, 0), (0, n - x.shape[1]), (0, 0)])
  qh = to_bh(q, T) * default_scale(scale, p)
  kh, vh = to_bh(k, S), to_bh(v, S)
  valid = None
  if kv_mask is not None or S != s:
    valid = (jnp.ones((b, s), bool) if kv_mask is None
             else kv_mask.astype(bool))
    valid = jnp.pad(valid, [(0, 0), (0, S - s)])
  q_seg = kv_seg = None
  if q_segment_ids is not None:
    q_seg = jnp.pad(q_segment_ids.astype(jnp.int32), [(0, 0), (0, T - t)])
    kv_seg = jnp.pad(kv_segment_ids.astype(jnp.int32), [(0, 0), (0, S - s)])
  return qh, kh, vh, valid, q_seg, kv_seg


def from_heads_layout(out, t, dtype):
  """``[b, h, T, pv]`` -> ``[b, t, h, pv]`` in ``dtype``, padded queries cut."""
  return jnp.transpose(out[:, :, :t], (0, 2, 1, 3)).astype(dtype)
