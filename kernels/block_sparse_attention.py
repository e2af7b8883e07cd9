"""Masked softmax attention over an explicit key pattern, with a backward
that keeps only the probabilities: what the block-sparse patterns share.

The Longformer (longformer_attention.py) and BigBird (bigbird_attention.py)
patterns are both softmax attention ``out_i = sum_j P_ij v_j`` with ``P_i =
softmax_j(scale q_i . k_j)`` restricted to an allowed set of keys ``A(i)``;
they differ in ``A``. Each has a ``*_reference`` (a dense ``[b, h, t, t]``
masked softmax, ``dense_attention`` here; the spec, for tests only) and a
fast XLA form whose memory and time are ``O(t)`` for a fixed window / block
pattern: no ``t x t`` array is ever formed. The fast forms gather their keys
into small blocks and call ``attend``, batched masked softmax attention whose
backward keeps only the probabilities (FlashAttention's ``dS = P o (dP -
rowsum(dO o O))``, ``kernels.attention_common``); with attention dropout
they use plain autodiff (``attend_or_dropout``).

Masking: ``kv_mask [b, s]`` (True = real key); padded keys never receive
weight. A row with no allowed key outputs 0. Computation is in float32;
outputs have ``q.dtype``. The patterns' ops return ``(out, None)`` (no
recurrent state).

Shapes (jaxtyping names): ``b`` batch, ``t`` time, ``h`` heads, ``p`` head
dim; ``m`` queries and ``n`` keys of a block.
"""
import jax
import jax.numpy as jnp
import numpy as np

from kernels import attention_common as common

_HI = jax.lax.Precision.HIGHEST


def masked_softmax(s, allowed):
  """Softmax over the last axis where ``allowed``; rows with none give 0."""
  s = jnp.where(allowed, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(m > -jnp.inf, m, 0.0))
  e = jnp.exp(s - m)  # exactly 0 where not allowed
  z = jnp.sum(e, axis=-1, keepdims=True)
  return e / jnp.where(z > 0, z, 1.0)


@jax.custom_vjp
def attend(q, k, v, allowed):
  """``softmax_allowed(q k^T) v`` over the last two axes, batched over the
  leading ones (``q [.., m, p]``, ``k [.., n, p]``, ``v [.., n, pv]``,
  ``allowed`` broadcastable to ``[.., m, n]``; ``q`` is pre-scaled). The
  backward recomputes nothing and keeps only the probabilities (the
  FlashAttention backward: ``dS = P o (dO V^T - rowsum(dO o O))``, by
  ``kernels.attention_common``)."""
  return _attend_fwd(q, k, v, allowed)[0]


def _attend_fwd(q, k, v, allowed):
  s = jnp.einsum("...mp,...np->...mn", q, k, precision=_HI)
  probs = masked_softmax(s, allowed)
  out = jnp.einsum("...mn,...np->...mp", probs, v, precision=_HI)
  return out, (q, k, v, probs, out, allowed)


def _attend_bwd(res, d_out):
  q, k, v, probs, out, allowed = res
  dp = jnp.einsum("...mp,...np->...mn", d_out, v, precision=_HI)
  ds = common.softmax_scores_grad(probs, dp, common.softmax_delta(d_out, out))
  dq = jnp.einsum("...mn,...np->...mp", ds, k, precision=_HI)
  dk, dv = key_value_grads(probs, ds, d_out, q)
  d_allowed = np.zeros(allowed.shape, jax.dtypes.float0)
  return dq, dk, dv, d_allowed


attend.defvjp(_attend_fwd, _attend_bwd)


def attend_or_dropout(q, k, v, allowed, dropout_rate, dropout_rng):
  """``attend``, or with dropout on the probabilities the plain autodiff
  form."""
  if dropout_rate > 0.0:
    s = jnp.einsum("...mp,...np->...mn", q, k, precision=_HI)
    probs = dropout(masked_softmax(s, allowed), dropout_rate, dropout_rng)
    return jnp.einsum("...mn,...np->...mp", probs, v, precision=_HI)
  return attend(q, k, v, allowed)


def dropout(probs, rate, rng):
  """Attention dropout: zeroes probabilities with chance ``rate``, rescales
  the rest."""
  if rate <= 0.0:
    return probs
  if rng is None:
    raise ValueError(f"{rate=} > 0 needs a dropout_rng")
  keep = jax.random.bernoulli(rng, 1.0 - rate, probs.shape)
  return jnp.where(keep, probs / (1.0 - rate), 0.0)


def check_qkv(q, k, v):
  """Raises unless ``q, k [b, t, h, p]`` and ``v [b, t, h, pv]``."""
  if q.ndim != 4:
    raise ValueError(f"q must be [b, t, h, p]; got {q.shape=}")
  if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
    raise ValueError(f"k, v must match q [b, t, h, p] = {q.shape}; got "
                     f"{k.shape=}, {v.shape=}")


def kv_valid(kv_mask, b, t):
  """``kv_mask`` as bool ``[b, t]`` (None: every key real), checked."""
  if kv_mask is None:
    return jnp.ones((b, t), bool)
  if kv_mask.shape != (b, t):
    raise ValueError(f"kv_mask must be [b, t] = {(b, t)}; got {kv_mask.shape=}")
  return kv_mask.astype(bool)


def dense_attention(q, k, v, allowed, scale, dropout_rate=0.0,
                    dropout_rng=None):
  """The references' dense masked softmax: ``[b, t, h, p]`` arrays,
  ``allowed [b or 1, h or 1, t, s]``, autodiff backward."""
  s = jnp.einsum("bthp,bshp->bhts", q, k, precision=_HI) * scale
  probs = dropout(masked_softmax(s, allowed), dropout_rate, dropout_rng)
  return jnp.einsum("bhts,bshp->bthp", probs, v, precision=_HI)


def as_f32(*arrays):
  """The arrays in float32 (None stays None)."""
  return tuple(None if a is None else jnp.asarray(a, jnp.float32)
               for a in arrays)


# ------------------------------------------------------------ XLA:CPU tuning
# How the key/value gradients are laid out for XLA:CPU's batched matmuls.

def transposed_copy(x):
  """``x`` with its last two axes swapped, as a real copy (see below)."""
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def key_value_grads(probs, ds, d_out, q, small_t=None):
  """``dK = dS^T Q`` and ``dV = P^T dO`` over the last two axes (``probs, ds
  [.., m, n]``, ``d_out, q [.., m, p]``) -> ``[.., n, p]`` each.

  Both contract the middle axis of P and dS, which XLA:CPU's batched product
  runs about 4x slower than a plain one ([b, h, rows] batches of 64 x 512
  blocks: 71 ms vs 18 ms); so one side is transposed first, as a real copy
  (the barriers keep XLA from folding the transposes back into the products).
  ``small_t``: ``(d_out^T, q^T)`` when the caller already made them.
  """
  if probs.shape[-1] > 4 * probs.shape[-2]:
    # More than 4 keys per query: global rows (a block of queries against
    # every key) and rows with many slot blocks: transpose P and dS
    # themselves ([n, m] copies with m-long rows). For the global rows, the
    # form below left XLA a [p, n] -> [n, p] transpose with an n-element
    # stride to fuse into the key/value gradients. BigBird layer at
    # t = 16384, forward + backward, when its rows took this form: 6.3 s with
    # the form below, 6.0 s this way (1k: 289 -> 264 ms).
    dv = jnp.einsum("...nm,...mp->...np", transposed_copy(probs), d_out,
                    precision=_HI)
    dk = jnp.einsum("...nm,...mp->...np", transposed_copy(ds), q,
                    precision=_HI)
    return dk, dv
  # Few keys per query (Longformer's band blocks, BigBird's parts): dV^T =
  # dO^T P and dK^T = Q^T dS from copies of the small [m, p] operands.
  d_out_t, q_t = small_t or (transposed_copy(d_out), transposed_copy(q))
  dv = jnp.swapaxes(jax.lax.optimization_barrier(jnp.einsum(
      "...pm,...mn->...pn", d_out_t, probs, precision=_HI)), -1, -2)
  dk = jnp.swapaxes(jax.lax.optimization_barrier(jnp.einsum(
      "...pm,...mn->...pn", q_t, ds, precision=_HI)), -1, -2)
  return dk, dv
