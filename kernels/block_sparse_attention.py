"""Block-sparse softmax attention: Longformer and BigBird (ITC) patterns.

Both ops are softmax attention ``out_i = sum_j P_ij v_j`` with
``P_i = softmax_j(scale q_i . k_j)`` restricted to an allowed set of keys
``A(i)``; they differ in ``A``. Each op has a ``*_reference`` (a dense
``[b, h, t, t]`` masked softmax, the spec, for tests only) and a fast XLA form
whose memory and time are ``O(t)`` for a fixed window / block pattern: no
``t x t`` array is ever formed.

Longformer (Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document
Transformer"; official code github.com/allenai/longformer,
``longformer/longformer.py`` and ``sliding_chunks.py``). One-sided window
``w``, dilation ``d``:
  * local: query ``i`` attends keys ``i + m d`` for ``|m| <= w`` (causal:
    ``-w <= m <= 0``);
  * global tokens (``global_mask``): a global query attends every key (causal:
    every earlier key) with its own projections ``Q_g, K_g, V_g``; every query
    attends every global key (causal: the earlier ones) with the ordinary
    ``K, V`` (official ``LongformerSelfAttention``: global keys are removed from
    the windowed scores and appended as extra columns, so a global key inside
    the window is counted once).
  Fast form (``longformer_blocked``): a dilation ``d`` splits the sequence into
  ``d`` interleaved sub-sequences (positions ``= r mod d``) on which the window
  is undilated, folded into the batch axis. Queries are cut into blocks of
  ``B = block_size`` tokens; block ``c`` attends the ``span = B + 2w`` keys
  around it (``B + w`` causal), cut from consecutive blocks of the padded keys
  (``[.., n_blocks, span, p]``), plus the ``G`` global keys gathered by
  position (``G = max_global``, a static bound); one softmax over both. (The
  official ``sliding_chunks`` uses overlapping chunks of ``2w`` queries and
  keys; the band is the same.) Global rows are dense rows ``[b, h, G, t]``,
  scattered back into their positions.

BigBird ITC (Zaheer et al. 2020, "Big Bird: Transformers for Longer
Sequences"; official github.com/google-research/bigbird,
``bigbird/core/attention.py`` ``bigbird_block_sparse_attention``). Blocks of
``bs`` tokens (``t = nb bs``); global blocks: the first ``global_left`` and
the last ``global_right`` blocks (official ITC: one each) attend every block
and are attended by every block; every other row block ``i`` attends its
window (blocks ``i-1, i, i+1``), the global blocks and ``r`` random blocks.
The random blocks of each (head, row) are drawn without replacement, from a
fixed numpy seed at trace time, among the blocks that are neither in the
window nor global, as the official ``get_single_block_row_attention``; as
there, the first non-global row may not draw the last non-global block, and
the last non-global row not the first one. Differences from the official
sampler (documented, deliberate): draws use ``np.random.default_rng(seed)``
(not the official global ``np.random`` stream, so the patterns differ for the
same seed), and random blocks are drawn from every legal block at every
length (the official code restricts them to the first ``2r + 5`` blocks at
lengths other than 1024/3072/4096 (its "plan") and to the first 1024 tokens
at those; the paper describes uniform draws). Rows with fewer legal blocks
than ``r`` get fewer random blocks (the remaining slots are masked).
Fast form (``bigbird_block_sparse``): every non-global row block attends its
``3 + g + r`` slot blocks under one softmax (slots that duplicate a global
block or fall outside the sequence are masked), taken as parts without
copying the keys per row: the window as three slices of the key blocks, the
global blocks as one shared array, only the random blocks gathered
(``_attend_parts``); the rows run in groups (``rows_tokens``). The global rows
(first and last blocks) are dense rows.

The fast forms share ``_attend`` / ``_attend_parts``, batched masked softmax
attention whose backward keeps only the probabilities (FlashAttention's ``dS =
P o (dP - rowsum(dO o O))``); with attention dropout they use plain autodiff
(BigBird then gathers every slot).

Checked beside the official code (scratch runs, not tests): the Longformer
layer with the weights of the official ``LongformerSelfAttention``
(``sliding_chunks``, globals and padding) gives its outputs to 3e-7, and the
official sampler's legal random blocks per row equal ours at lengths where
its plan draws over all blocks.

Masking: ``kv_mask [b, s]`` (True = real key); padded keys never receive
weight. A row with no allowed key outputs 0. ``causal=True`` intersects the
pattern with ``j <= i`` (the BigBird pattern itself is unchanged).
Computation is in float32; outputs have ``q.dtype``. All ops return
``(out, None)`` (no recurrent state).

Shapes (jaxtyping names): ``b`` batch, ``t`` time, ``h`` heads, ``p`` head
dim, ``w`` window, ``G`` global tokens, ``nb`` blocks.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from kernels import Impl, resolve_impl

_HI = jax.lax.Precision.HIGHEST
# Longformer query block (``block_size=None``); see ``longformer_blocked``.
DEFAULT_BLOCK = 128

# BigBird: query tokens (whole row blocks) per step of a scan over row groups;
# None: all rows at once. Layer (benchmarks/bench_attention.py, block 64,
# r = 3, this 2-core CPU, train/host.py's malloc settings), t = 16384, forward
# + backward: groups of 1024 tokens 5.2-5.4 s with an XLA memory estimate of
# 2.85 GiB (groups of 512: 5.7 s; 2048: 5.3 s); all rows at once 4.4-4.7 s
# but an estimate of 6.2 GiB, and the heap grows to 14-19 GiB around its
# 1 GiB blocks, with first steps of up to 16 s.
BIGBIRD_ROWS_TOKENS = 1024


# ------------------------------------------------------------ shared pieces
def _masked_softmax(s, allowed):
  """Softmax over the last axis where ``allowed``; rows with none give 0."""
  s = jnp.where(allowed, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(m > -jnp.inf, m, 0.0))
  e = jnp.exp(s - m)  # exactly 0 where not allowed
  z = jnp.sum(e, axis=-1, keepdims=True)
  return e / jnp.where(z > 0, z, 1.0)


@jax.custom_vjp
def _attend(q, k, v, allowed):
  """``softmax_allowed(q k^T) v`` over the last two axes, batched over the
  leading ones (``q [.., m, p]``, ``k [.., n, p]``, ``v [.., n, pv]``,
  ``allowed`` broadcastable to ``[.., m, n]``; ``q`` is pre-scaled). The
  backward recomputes nothing and keeps only the probabilities (the
  FlashAttention backward: ``dS = P o (dO V^T - rowsum(dO o O))``)."""
  return _attend_fwd(q, k, v, allowed)[0]


def _attend_fwd(q, k, v, allowed):
  s = jnp.einsum("...mp,...np->...mn", q, k, precision=_HI)
  probs = _masked_softmax(s, allowed)
  out = jnp.einsum("...mn,...np->...mp", probs, v, precision=_HI)
  return out, (q, k, v, probs, out, allowed)


def _transposed(x):
  """``x`` with its last two axes swapped, as a real copy (see below)."""
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def _key_value_grads(probs, ds, d_out, q, small_t=None):
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
    dv = jnp.einsum("...nm,...mp->...np", _transposed(probs), d_out,
                    precision=_HI)
    dk = jnp.einsum("...nm,...mp->...np", _transposed(ds), q, precision=_HI)
    return dk, dv
  # Few keys per query (Longformer's band blocks, BigBird's parts): dV^T =
  # dO^T P and dK^T = Q^T dS from copies of the small [m, p] operands.
  d_out_t, q_t = small_t or (_transposed(d_out), _transposed(q))
  dv = jnp.swapaxes(jax.lax.optimization_barrier(jnp.einsum(
      "...pm,...mn->...pn", d_out_t, probs, precision=_HI)), -1, -2)
  dk = jnp.swapaxes(jax.lax.optimization_barrier(jnp.einsum(
      "...pm,...mn->...pn", q_t, ds, precision=_HI)), -1, -2)
  return dk, dv


def _attend_bwd(res, d_out):
  q, k, v, probs, out, allowed = res
  dp = jnp.einsum("...mp,...np->...mn", d_out, v, precision=_HI)
  delta = jnp.sum(d_out * out, axis=-1, keepdims=True)
  ds = probs * (dp - delta)
  dq = jnp.einsum("...mn,...np->...mp", ds, k, precision=_HI)
  dk, dv = _key_value_grads(probs, ds, d_out, q)
  d_allowed = np.zeros(allowed.shape, jax.dtypes.float0)
  return dq, dk, dv, d_allowed


_attend.defvjp(_attend_fwd, _attend_bwd)


def _attention_core(q, k, v, allowed, dropout_rate, dropout_rng):
  """``_attend``, or with dropout on the probabilities the plain autodiff
  form."""
  if dropout_rate > 0.0:
    s = jnp.einsum("...mp,...np->...mn", q, k, precision=_HI)
    probs = _dropout(_masked_softmax(s, allowed), dropout_rate, dropout_rng)
    return jnp.einsum("...mn,...np->...mp", probs, v, precision=_HI)
  return _attend(q, k, v, allowed)


def _dropout(probs, rate, rng):
  if rate <= 0.0:
    return probs
  if rng is None:
    raise ValueError(f"{rate=} > 0 needs a dropout_rng")
  keep = jax.random.bernoulli(rng, 1.0 - rate, probs.shape)
  return jnp.where(keep, probs / (1.0 - rate), 0.0)


def _check_qkv(q, k, v):
  if q.ndim != 4:
    raise ValueError(f"q must be [b, t, h, p]; got {q.shape=}")
  if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
    raise ValueError(f"k, v must match q [b, t, h, p] = {q.shape}; got "
                     f"{k.shape=}, {v.shape=}")


def _kv_valid(kv_mask, b, t):
  if kv_mask is None:
    return jnp.ones((b, t), bool)
  if kv_mask.shape != (b, t):
    raise ValueError(f"kv_mask must be [b, t] = {(b, t)}; got {kv_mask.shape=}")
  return kv_mask.astype(bool)


def _dense_attention(q, k, v, allowed, scale, dropout_rate=0.0,
                     dropout_rng=None):
  """``[b, t, h, p]`` arrays, ``allowed [b or 1, h or 1, t, s]``."""
  s = jnp.einsum("bthp,bshp->bhts", q, k, precision=_HI) * scale
  probs = _dropout(_masked_softmax(s, allowed), dropout_rate, dropout_rng)
  return jnp.einsum("bhts,bshp->bthp", probs, v, precision=_HI)


def _f32(*arrays):
  return tuple(None if a is None else jnp.asarray(a, jnp.float32)
               for a in arrays)


# ---------------------------------------------------------------- Longformer
def longformer_band(t: int, *, window: int, dilation: int = 1,
                    causal: bool = False) -> np.ndarray:
  """The local (windowed) pattern as a dense bool ``[t, t]`` (tests only)."""
  i = np.arange(t)[:, None]
  j = np.arange(t)[None, :]
  diff = i - j
  lo = 0 if causal else -window * dilation
  return (diff <= window * dilation) & (diff >= lo) & (diff % dilation == 0)


def _check_longformer(q, k, v, window, dilation, global_mask, q_global,
                      k_global, v_global):
  _check_qkv(q, k, v)
  if int(window) < 0:
    raise ValueError(f"{window=} must be >= 0")
  if int(dilation) < 1:
    raise ValueError(f"{dilation=} must be >= 1")
  b, t = q.shape[:2]
  if global_mask is not None and global_mask.shape != (b, t):
    raise ValueError(f"global_mask must be [b, t] = {(b, t)}; got "
                     f"{global_mask.shape=}")
  for name, a in (("q_global", q_global), ("k_global", k_global),
                  ("v_global", v_global)):
    if a is not None and a.shape[:3] != q.shape[:3]:
      raise ValueError(f"{name} must be [b, t, h, .] with {q.shape[:3]}; got "
                       f"{a.shape}")


def longformer_reference(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b t h p"],
    v: Float[Array, "b t h p"],
    *,
    window: int,
    dilation: int = 1,
    causal: bool = False,
    kv_mask: Bool[Array, "b t"] | None = None,
    global_mask: Bool[Array, "b t"] | None = None,
    q_global: Float[Array, "b t h p"] | None = None,
    k_global: Float[Array, "b t h p"] | None = None,
    v_global: Float[Array, "b t h p"] | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng=None,
):
  """Dense masked softmax with the Longformer pattern (module docstring).

  Args:
    q, k, v: ``[b, t, h, p]`` (``v`` may have another last dim).
    window: one-sided window ``w`` (in dilated steps).
    dilation: ``d``: keys ``i + m d``, ``|m| <= w``.
    causal: keys ``j <= i`` only.
    kv_mask: ``[b, t]`` True = real key; padded tokens are never global.
    global_mask: ``[b, t]`` True = global token.
    q_global, k_global, v_global: projections used by the global rows
      (default ``q, k, v``).
    scale: score scale (default ``1 / sqrt(p)``).
    dropout_rate, dropout_rng: dropout on the attention probabilities.

  Returns:
    ``(out [b, t, h, pv], None)``.
  """
  _check_longformer(q, k, v, window, dilation, global_mask, q_global,
                    k_global, v_global)
  b, t, h, p = q.shape
  scale = 1.0 / math.sqrt(p) if scale is None else scale
  out_dtype = q.dtype
  q, k, v = _f32(q, k, v)
  valid = _kv_valid(kv_mask, b, t)
  allowed = jnp.asarray(longformer_band(t, window=window, dilation=dilation,
                                        causal=causal))[None]
  if global_mask is not None:
    g = global_mask.astype(bool) & valid
    allowed = allowed | g[:, None, :] | g[:, :, None]
  if causal:
    allowed = allowed & jnp.asarray(np.tril(np.ones((t, t), bool)))[None]
  allowed = allowed & valid[:, None, :]
  rngs = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
  out = _dense_attention(q, k, v, allowed[:, None], scale, dropout_rate,
                         rngs[0])
  if global_mask is not None:
    qg, kg, vg = _f32(*(a if a is not None else d for a, d in
                        ((q_global, q), (k_global, k), (v_global, v))))
    allowed_g = valid[:, None, :]
    if causal:
      allowed_g = allowed_g & jnp.asarray(np.tril(np.ones((t, t), bool)))[None]
    out_g = _dense_attention(qg, kg, vg, allowed_g[:, None], scale,
                             dropout_rate, rngs[1])
    out = jnp.where(g[:, :, None, None], out_g, out)
  return out.astype(out_dtype), None


def _static_max_global(global_mask, max_global):
  """``max_global``, or the largest row count of a concrete ``global_mask``."""
  if max_global is not None:
    return int(max_global)
  try:
    return max(1, int(np.asarray(global_mask).sum(axis=1).max()))
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    raise ValueError(
        "longformer: a traced global_mask needs a static max_global (the "
        "largest number of global tokens in a row)") from None


def _global_indices(global_mask, max_global):
  """Positions ``[b, G]`` of the global tokens (in order) and their validity."""
  t = global_mask.shape[1]
  G = min(max_global, t)
  order = jnp.argsort(~global_mask, axis=1, stable=True)[:, :G]
  ok = jnp.take_along_axis(global_mask, order, axis=1)
  return order, ok


def _to_residues(x, d, T):
  """``[b, t, ..] -> [b d, T, ..]``: ``x[:, tau d + r] -> x[(b r), tau]``."""
  b, t = x.shape[:2]
  pad = [(0, 0), (0, T * d - t)] + [(0, 0)] * (x.ndim - 2)
  x = jnp.pad(x, pad).reshape(b, T, d, *x.shape[2:])
  return jnp.swapaxes(x, 1, 2).reshape(b * d, T, *x.shape[3:])


def _from_residues(x, b, d, t):
  T = x.shape[1]
  x = jnp.swapaxes(x.reshape(b, d, T, *x.shape[2:]), 1, 2)
  return x.reshape(b, T * d, *x.shape[3:])[:, :t]


def longformer_blocked(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b t h p"],
    v: Float[Array, "b t h p"],
    *,
    window: int,
    dilation: int = 1,
    causal: bool = False,
    kv_mask: Bool[Array, "b t"] | None = None,
    global_mask: Bool[Array, "b t"] | None = None,
    max_global: int | None = None,
    q_global: Float[Array, "b t h p"] | None = None,
    k_global: Float[Array, "b t h p"] | None = None,
    v_global: Float[Array, "b t h p"] | None = None,
    scale: float | None = None,
    block_size: int | None = None,
    dropout_rate: float = 0.0,
    dropout_rng=None,
):
  """Longformer attention in ``O(t (w + G))`` (module docstring).

  Arguments as ``longformer_reference``, plus:
    max_global: static bound ``G`` on the global tokens per row (required
      when ``global_mask`` is traced); rows with more lose the later ones.
    block_size: query block ``B`` (default ``DEFAULT_BLOCK``); block ``c``
      attends the ``B + 2w`` keys around it (``B + w`` causal), so there are
      ``B + 2w`` scores per query: smaller blocks waste less, larger blocks
      make larger matmuls.
  """
  _check_longformer(q, k, v, window, dilation, global_mask, q_global,
                    k_global, v_global)
  b, t, h, p = q.shape
  pv = v.shape[-1]
  w, d = int(window), int(dilation)
  B = DEFAULT_BLOCK if block_size is None else int(block_size)
  if B < 1:
    raise ValueError(f"{block_size=} must be >= 1")
  scale = 1.0 / math.sqrt(p) if scale is None else scale
  out_dtype = q.dtype
  q, k, v = _f32(q, k, v)
  valid = _kv_valid(kv_mask, b, t)
  use_global = global_mask is not None
  rng_local = rng_global = None
  if dropout_rng is not None:
    rng_local, rng_global = jax.random.split(dropout_rng)
  if use_global:
    max_global = _static_max_global(global_mask, max_global)
    g = global_mask.astype(bool) & valid
    g_idx, g_ok = _global_indices(g, max_global)
    local_valid = valid & ~g
  else:
    local_valid = valid

  # Sub-sequences of one residue mod d, in blocks of B: [b d, h, nb, B, .].
  T = -(-t // d)
  nb = -(-T // B)
  Tp = nb * B

  def blocks(x):
    x = _to_residues(x, d, T)
    x = jnp.pad(x, [(0, 0), (0, Tp - T)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape(x.shape[0], nb, B, *x.shape[2:])
    return jnp.moveaxis(x, 3, 1) if x.ndim == 5 else x  # heads second

  # Query block c (positions cB .. cB+B-1) needs keys cB-w .. cB+B-1+w
  # (causal: .. cB+B-1): n_kb consecutive blocks of the keys padded by w on
  # the left, cut to the span.
  span = B + w if causal else B + 2 * w
  n_kb = -(-span // B)

  def key_blocks(x, axis):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (w, n_kb * B - w)             # [.., w + Tp + ..]
    x = jnp.pad(x, pad)
    x = x.reshape(x.shape[:axis] + (nb + n_kb, B) + x.shape[axis + 1:])
    parts = [jax.lax.slice_in_dim(x, j, j + nb, axis=axis)
             for j in range(n_kb)]
    x = jnp.concatenate(parts, axis=axis + 1)
    return jax.lax.slice_in_dim(x, 0, span, axis=axis + 1)

  def residues(x):
    x = _to_residues(x, d, T)
    return jnp.pad(x, [(0, 0), (0, Tp - T)] + [(0, 0)] * (x.ndim - 2))

  heads = lambda x: jnp.moveaxis(x, 2, 1)     # [x, Tp, h, p] -> [x, h, Tp, p]
  qb = blocks(q * scale)                      # [x, h, nb, B, p]
  kb = key_blocks(heads(residues(k)), 2)      # [x, h, nb, span, p]
  vb = key_blocks(heads(residues(v)), 2)
  kvalid = key_blocks(residues(local_valid), 1)  # [x, nb, span]
  # Band: query offset a in its block, key j of the span: tau_q - tau_k =
  # a + w - j.
  diff = np.arange(B)[:, None] + w - np.arange(span)[None, :]
  band = (diff <= w) & (diff >= (0 if causal else -w))
  allowed = (jnp.asarray(band)[None, None] &
             kvalid[:, :, None, :])[:, None]  # [x, 1, nb, B, span]

  if use_global:
    # The G global keys join every block's key slots.
    def per_block(a):
      a = jnp.moveaxis(jnp.repeat(a, d, axis=0), 2, 1)[:, :, None]
      return jnp.broadcast_to(a, (a.shape[0], h, nb) + a.shape[3:])
    kg = jnp.take_along_axis(k, g_idx[:, :, None, None], axis=1)  # [b, G, h, p]
    vg = jnp.take_along_axis(v, g_idx[:, :, None, None], axis=1)
    kb = jnp.concatenate([kb, per_block(kg)], axis=3)
    vb = jnp.concatenate([vb, per_block(vg)], axis=3)
    allowed_g = jnp.repeat(g_ok, d, axis=0)[:, None, None, None, :]
    if causal:
      # Real position of query (tau, r) is tau d + r.
      tau = jnp.arange(Tp).reshape(nb, B)
      r = jnp.tile(jnp.arange(d), b)
      qpos = tau[None] * d + r[:, None, None]            # [x, nb, B]
      gpos = jnp.repeat(g_idx, d, axis=0)                # [x, G]
      allowed_g = allowed_g & (gpos[:, None, None, :] <=
                               qpos[..., None])[:, None]
    shape = allowed.shape[:-1]
    allowed = jnp.concatenate(
        [allowed, jnp.broadcast_to(allowed_g, shape + allowed_g.shape[-1:])],
        axis=-1)
  out = _attention_core(qb, kb, vb, allowed, dropout_rate, rng_local)

  out = jnp.moveaxis(out, 1, 3).reshape(b * d, Tp, h, pv)[:, :T]
  out = _from_residues(out, b, d, t)          # [b, t, h, pv]

  if use_global:
    qg_all, kg_all, vg_all = _f32(*(a if a is not None else dflt for a, dflt in
                                    ((q_global, q), (k_global, k),
                                     (v_global, v))))
    qg = jnp.take_along_axis(qg_all, g_idx[:, :, None, None], axis=1) * scale
    allowed_r = valid[:, None, None, :] & g_ok[:, None, :, None]
    if causal:
      allowed_r = allowed_r & (jnp.arange(t)[None, None, None, :] <=
                               g_idx[:, None, :, None])
    heads = lambda a: jnp.moveaxis(a, 2, 1)
    out_g = jnp.moveaxis(_attention_core(
        heads(qg), heads(kg_all), heads(vg_all), allowed_r, dropout_rate,
        rng_global), 1, 2)                    # [b, G, h, pv]
    rows = jnp.where(g_ok, g_idx, t)          # invalid -> dropped
    out = out.at[jnp.arange(b)[:, None], rows].set(out_g, mode="drop")
  return out.astype(out_dtype), None


def longformer_attention(q, k, v, *, impl: Impl | str = Impl.AUTO, **kwargs):
  """Dispatcher: ``Impl.REFERENCE`` -> dense; otherwise the blocked form
  (there is no Pallas kernel). ``block_size``/``max_global`` are ignored by
  the reference."""
  impl = resolve_impl(impl, has_pallas=False)
  if impl is Impl.REFERENCE:
    kwargs.pop("block_size", None)
    kwargs.pop("max_global", None)
    return longformer_reference(q, k, v, **kwargs)
  return longformer_blocked(q, k, v, **kwargs)


# ------------------------------------------------------------------- BigBird
@functools.lru_cache(maxsize=64)
def bigbird_random_blocks(num_blocks: int, *, num_rand_blocks: int,
                          num_heads: int, seed: int, global_left: int = 1,
                          global_right: int = 1) -> np.ndarray:
  """Random key blocks ``[h, nb, r]`` (int32, -1 = none) of every row block.

  Global rows get none (they attend everything). Row ``i`` draws without
  replacement among the blocks outside its window ``{i-1, i, i+1}`` and the
  global blocks; the first non-global row also excludes the last non-global
  block and vice versa (official ``get_single_block_row_attention``). Read-only
  (cached): copy before modifying.
  """
  nb, r = int(num_blocks), int(num_rand_blocks)
  out = np.full((num_heads, nb, r), -1, np.int32)
  if r == 0:
    out.setflags(write=False)
    return out
  rng = np.random.default_rng(seed)
  first, last = global_left, nb - global_right - 1  # non-global rows
  glob = set(range(global_left)) | set(range(nb - global_right, nb))
  for head in range(num_heads):
    for i in range(first, last + 1):
      illegal = {i - 1, i, i + 1} | glob
      if i == first:
        illegal.add(last)
      if i == last:
        illegal.add(first)
      legal = np.array([j for j in range(nb) if j not in illegal], np.int32)
      pick = rng.permutation(legal)[:r]
      out[head, i, :len(pick)] = pick
  out.setflags(write=False)
  return out


def _bigbird_slots(nb, *, num_rand_blocks, num_heads, seed, global_left,
                   global_right):
  """Key-block slots of the non-global rows.

  Returns ``(idx [h, n_rows, 3 + g + r], ok [h, n_rows, 3 + g + r])``: the
  window ``i-1, i, i+1``, the global blocks, the random blocks; ``ok`` is
  False for slots outside the sequence, window slots that are global blocks
  (their global slot has them) and missing random blocks.
  """
  rand = bigbird_random_blocks(nb, num_rand_blocks=num_rand_blocks,
                               num_heads=num_heads, seed=seed,
                               global_left=global_left,
                               global_right=global_right)
  rows = np.arange(global_left, nb - global_right)
  glob = np.concatenate([np.arange(global_left),
                         np.arange(nb - global_right, nb)]).astype(np.int64)
  win = rows[:, None] + np.arange(-1, 2)[None, :]
  win_ok = (win >= 0) & (win < nb) & ~np.isin(win, glob)
  h = num_heads
  idx = np.concatenate([
      np.broadcast_to(win, (h,) + win.shape),
      np.broadcast_to(glob, (h, len(rows), len(glob))),
      rand[:, rows]], axis=-1)
  ok = np.concatenate([
      np.broadcast_to(win_ok, (h,) + win.shape),
      np.ones((h, len(rows), len(glob)), bool),
      rand[:, rows] >= 0], axis=-1)
  return np.where(ok, idx, 0).astype(np.int32), ok


def _clamp_globals(nb, global_left, global_right):
  """Global block counts that fit in ``nb`` blocks (left ones first)."""
  gl = min(int(global_left), nb)
  return gl, min(int(global_right), nb - gl)


def bigbird_block_mask(num_blocks: int, *, num_rand_blocks: int,
                       num_heads: int, seed: int, global_left: int = 1,
                       global_right: int = 1) -> np.ndarray:
  """The ITC block pattern ``[h, nb, nb]`` (row block attends column block)."""
  nb = int(num_blocks)
  global_left, global_right = _clamp_globals(nb, global_left, global_right)
  mask = np.zeros((num_heads, nb, nb), bool)
  mask[:, :global_left] = True
  mask[:, nb - global_right:] = True
  idx, ok = _bigbird_slots(nb, num_rand_blocks=num_rand_blocks,
                           num_heads=num_heads, seed=seed,
                           global_left=global_left, global_right=global_right)
  hh, rr, ss = np.nonzero(ok)
  mask[hh, rr + global_left, idx[hh, rr, ss]] = True
  return mask


def _check_bigbird(q, k, v, block_size, global_left, global_right,
                   num_rand_blocks):
  _check_qkv(q, k, v)
  t = q.shape[1]
  if int(block_size) < 1 or t % block_size:
    raise ValueError(f"seq_len={t} is not a multiple of {block_size=}")
  if min(global_left, global_right, num_rand_blocks) < 0:
    raise ValueError(f"{global_left=}, {global_right=}, {num_rand_blocks=} "
                     f"must be >= 0")


def bigbird_reference(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b t h p"],
    v: Float[Array, "b t h p"],
    *,
    block_size: int,
    num_rand_blocks: int = 3,
    global_left: int = 1,
    global_right: int = 1,
    seed: int = 0,
    causal: bool = False,
    kv_mask: Bool[Array, "b t"] | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng=None,
):
  """Dense masked softmax with the BigBird ITC pattern (module docstring).

  Args:
    q, k, v: ``[b, t, h, p]`` with ``t`` a multiple of ``block_size``.
    block_size: ``bs``.
    num_rand_blocks: ``r`` random key blocks per non-global row block.
    global_left, global_right: number of global blocks at each end.
    seed: numpy seed of the random blocks.
    causal: also require ``j <= i``.
    kv_mask: ``[b, t]`` True = real key.
    scale: default ``1 / sqrt(p)``.
    dropout_rate, dropout_rng: dropout on the attention probabilities.

  Returns:
    ``(out [b, t, h, pv], None)``.
  """
  _check_bigbird(q, k, v, block_size, global_left, global_right,
                 num_rand_blocks)
  b, t, h, p = q.shape
  scale = 1.0 / math.sqrt(p) if scale is None else scale
  out_dtype = q.dtype
  q, k, v = _f32(q, k, v)
  blk = bigbird_block_mask(t // block_size, num_rand_blocks=num_rand_blocks,
                           num_heads=h, seed=seed, global_left=global_left,
                           global_right=global_right)
  dense = np.repeat(np.repeat(blk, block_size, 1), block_size, 2)
  if causal:
    dense = dense & np.tril(np.ones((t, t), bool))[None]
  allowed = jnp.asarray(dense)[None] & _kv_valid(kv_mask, b, t)[:, None,
                                                                None, :]
  out = _dense_attention(q, k, v, allowed, scale, dropout_rate, dropout_rng)
  return out.astype(out_dtype), None


def _rows_allowed(valid, idx, ok, gl, row0, bs, causal, b, h):
  """``[b, h, rows, 1 | bs, slots bs]`` mask of the rows' slot keys: real
  (``valid [b, n bs]``), an ``ok`` slot and, if causal, not in the future."""
  rows, n_slots = idx.shape[1], idx.shape[2]
  kvalid = valid.reshape(b, -1, bs)[:, idx]     # [b, h, rows, slots, bs]
  kvalid = kvalid & jnp.asarray(ok)[None, :, :, :, None]
  allowed = kvalid.reshape(b, h, rows, 1, n_slots * bs)
  if causal:
    kpos = (idx[..., None] * bs + jnp.arange(bs)[None, None, None]).reshape(
        h, rows, 1, -1)
    qpos = ((gl + row0 + jnp.arange(rows))[:, None] * bs
            + jnp.arange(bs)[None, :])[None, :, :, None]
    allowed = allowed & (kpos <= qpos)[None]
  return allowed


# ------------------------------------------- BigBird rows: one softmax, parts
# A non-global row block attends three kinds of key blocks: its window (blocks
# i-1, i, i+1: slices of the padded key blocks, one per offset), the global
# blocks (the same for every row: one shared [g bs, p] array, no copy per row)
# and its random blocks (the only gather). ``_attend_parts`` takes them as
# separate key/value parts under one softmax, so that no [rows, (3 + g + r)
# bs, p] copy of the keys and values is made; its backward adds the parts'
# key/value gradients back (pads, a sum over rows, a scatter-add).
def _part_scores(q, k):
  """``q [b, h, r, m, p]`` against a per-row part ``k [b, h, r, n, p]`` or a
  shared one ``k [b, h, n, p]`` -> ``[b, h, r, m, n]``."""
  if k.ndim == 5:
    return jnp.einsum("bhrmp,bhrnp->bhrmn", q, k, precision=_HI)
  return jnp.einsum("bhrmp,bhnp->bhrmn", q, k, precision=_HI)


def _part_values(probs, v):
  if v.ndim == 5:
    return jnp.einsum("bhrmn,bhrnp->bhrmp", probs, v, precision=_HI)
  return jnp.einsum("bhrmn,bhnp->bhrmp", probs, v, precision=_HI)


@jax.custom_vjp
def _attend_parts(q, parts):
  """``softmax(q [k_1 .. k_n]^T) [v_1 .. v_n]`` for ``parts = ((k_i, v_i,
  allowed_i), ..)`` without concatenating them: ``q [b, h, r, m, p]`` (row
  blocks, pre-scaled), each ``k_i, v_i`` per row ``[b, h, r, n_i, .]`` or
  shared ``[b, h, n_i, .]``, ``allowed_i`` broadcastable to ``[b, h, r, m,
  n_i]``. A row with no allowed key gives 0. Backward as ``_attend``'s, from
  the saved probabilities."""
  return _attend_parts_fwd(q, parts)[0]


def _attend_parts_fwd(q, parts):
  scores = [jnp.where(a, _part_scores(q, k), -jnp.inf) for k, _, a in parts]
  m = functools.reduce(jnp.maximum,
                       [jnp.max(s, axis=-1, keepdims=True) for s in scores])
  m = jnp.where(m > -jnp.inf, m, 0.0)
  e = [jnp.exp(s - m) for s in scores]          # exactly 0 where not allowed
  z = functools.reduce(jnp.add, [jnp.sum(x, axis=-1, keepdims=True)
                                 for x in e])
  inv_z = 1.0 / jnp.where(z > 0, z, 1.0)
  probs = tuple(x * inv_z for x in e)
  # The products take the unnormalised e (normalised after), so that P itself
  # is only written for the backward: in the row-group scan that write goes
  # straight into the stacked probabilities (layer at 16k fwd+bwd: 5.21 ->
  # 4.96 s; 1k: 261 -> 250 ms, interleaved).
  out = functools.reduce(jnp.add, [_part_values(x, v)
                                   for x, (_, v, _) in zip(e, parts)]) * inv_z
  return out, (q, parts, probs, out)


def _attend_parts_bwd(res, d_out):
  q, parts, probs, out = res
  b, h, r, m, p = q.shape
  delta = jnp.sum(d_out * out, axis=-1, keepdims=True)
  dq, d_parts, small_t, flat_t = None, [], None, None
  for (k, v, allowed), pr in zip(parts, probs):
    dp = _part_scores(d_out, v)
    ds = pr * (dp - delta)
    if k.ndim == 5:
      dq_i = jnp.einsum("bhrmn,bhrnp->bhrmp", ds, k, precision=_HI)
      if small_t is None and k.shape[-2] <= 4 * m:
        small_t = _transposed(d_out), _transposed(q)  # shared by the parts
      dk, dv = _key_value_grads(pr, ds, d_out, q, small_t)
    else:
      dq_i = jnp.einsum("bhrmn,bhnp->bhrmp", ds, k, precision=_HI)
      # A shared part's gradients sum over every row: dV^T = dO^T P as one
      # [p, r m] x [r m, n] product per head, from [p, r m] copies of dO and
      # Q. (Contracting P's [r m] axis directly made XLA transpose P and dS,
      # [r m, n] each: 0.6 s of the 16k layer step.)
      if flat_t is None:
        flat = lambda x: _transposed(x.reshape(b, h, r * m, x.shape[-1]))
        flat_t = flat(d_out), flat(q)
      rows = lambda x: x.reshape(b, h, r * m, x.shape[-1])
      dv = jnp.swapaxes(jnp.einsum("bhpk,bhkn->bhpn", flat_t[0], rows(pr),
                                   precision=_HI), -1, -2)
      dk = jnp.swapaxes(jnp.einsum("bhpk,bhkn->bhpn", flat_t[1], rows(ds),
                                   precision=_HI), -1, -2)
    dq = dq_i if dq is None else dq + dq_i
    d_parts.append((dk, dv, np.zeros(allowed.shape, jax.dtypes.float0)))
  return dq, tuple(d_parts)


_attend_parts.defvjp(_attend_parts_fwd, _attend_parts_bwd)


class _BigBirdRows:
  """The non-global rows' parts. ``kp, vp [b, h, 1 + nb + 1 + extra, bs,
  .]``: the key/value blocks with one zero block before them and ``1 +
  extra`` after (so that the window slices of the last, padded, rows stay in
  bounds); ``kg, vg [b, h, g bs, .]``: the global blocks; ``idx, ok [h, rows
  + extra, slots]`` as ``_bigbird_slots``, padding rows without keys;
  ``valid [b, (nb + extra) bs]``.
  """

  def __init__(self, idx, ok, valid, gl, gr, bs, causal):
    self.idx, self.ok = jnp.asarray(idx), jnp.asarray(ok)
    self.valid, self.gl, self.g, self.bs = valid, gl, gl + gr, bs
    self.causal = causal
    self.has_rand = idx.shape[-1] > 3 + self.g

  def parts(self, row0, rows, kp, vp, kg, vg):
    """Parts of the rows ``row0 .. row0 + rows`` (``row0`` may be traced)."""
    b, h = kp.shape[:2]
    bs, gl, g = self.bs, self.gl, self.g
    idx = jax.lax.dynamic_slice_in_dim(self.idx, row0, rows, axis=1)
    ok = jax.lax.dynamic_slice_in_dim(self.ok, row0, rows, axis=1)
    allowed = _rows_allowed(self.valid, idx, ok, gl, row0, bs, self.causal,
                            b, h)
    cols = lambda i, j: allowed[..., i * bs:j * bs]
    win = lambda x, j: jax.lax.dynamic_slice_in_dim(x, gl + row0 + j, rows,
                                                    axis=2)
    parts = [(win(kp, j), win(vp, j), cols(j, j + 1)) for j in range(3)]
    if g:
      parts.append((kg, vg, cols(3, 3 + g)))
    if self.has_rand:
      ri = self.rand_blocks(idx)
      gather = lambda x: x[:, np.arange(h)[:, None, None], ri].reshape(
          b, h, rows, -1, x.shape[-1])
      parts.append((gather(kp), gather(vp), cols(3 + g, idx.shape[-1])))
    return tuple(parts)

  def rand_blocks(self, idx):
    return idx[..., 3 + self.g:] + 1             # + the leading pad block

  def add_grads(self, acc, d_parts, i, row0, rows):
    """Adds the rows' part gradients (``i``: 0 keys, 1 values) into ``acc``
    (shaped as ``kp``) in place; returns it and the global blocks' gradient.
    """
    b, h = acc.shape[:2]
    bs, gl, g = self.bs, self.gl, self.g
    tile = sum(jnp.pad(d_parts[j][i], [(0, 0), (0, 0), (j, 2 - j), (0, 0),
                                       (0, 0)]) for j in range(3))
    at = gl + row0                                # window block i-1 of row 0
    cur = jax.lax.dynamic_slice_in_dim(acc, at, rows + 2, axis=2)
    acc = jax.lax.dynamic_update_slice_in_dim(acc, cur + tile, at, axis=2)
    if self.has_rand:
      idx = jax.lax.dynamic_slice_in_dim(self.idx, row0, rows, axis=1)
      d = d_parts[-1][i]
      acc = acc.at[:, np.arange(h)[:, None, None], self.rand_blocks(idx)].add(
          d.reshape(b, h, rows, -1, bs, d.shape[-1]))
    return acc, (d_parts[3][i] if g else None)


def _bigbird_rows(qb, kh, vh, valid, idx, ok, gl, gr, bs, group, causal,
                  dropout_rate=0.0, rng=None):
  """Attention of the non-global row blocks ``qb [b, h, n_rows, bs, p]``
  (query blocks ``gl ..``) over their slots ``idx, ok [h, n_rows, slots]``;
  ``kh, vh [b, h, t, .]``, ``valid [b, t]``.

  With attention dropout: all rows at once, the parts concatenated per row
  (``[b, h, n_rows, slots bs, .]``) and plain autodiff.
  ``group >= n_rows``: all rows at once (``_attend_parts``). Otherwise a
  loop over groups of ``group`` row blocks (the last group padded with rows
  that have no allowed key, then cut) with a hand-written backward: the
  forward keeps each group's probabilities; a scan over the groups takes the
  group's parts again and adds its key/value gradients into carried
  accumulators in place, so every step touches only its own blocks.
  """
  b, h, n_rows, _, p = qb.shape
  pv = vh.shape[-1]
  nb = kh.shape[2] // bs
  g_all = gl + gr
  steps = -(-n_rows // group) if group < n_rows and not dropout_rate else 1
  group = -(-n_rows // steps)                 # padding < steps rows
  extra = steps * group - n_rows
  rows = _BigBirdRows(np.pad(idx, [(0, 0), (0, extra), (0, 0)]),
                      np.pad(ok, [(0, 0), (0, extra), (0, 0)]),
                      jnp.pad(valid, [(0, 0), (0, extra * bs)]), gl, gr, bs,
                      causal)
  blocks = lambda x: jnp.pad(x.reshape(b, h, nb, bs, x.shape[-1]),
                             [(0, 0), (0, 0), (1, 1 + extra), (0, 0), (0, 0)])
  glob = lambda x: jnp.concatenate(
      [x[:, :, :gl * bs], x[:, :, (nb - gr) * bs:]], axis=2)
  kp, vp, kg, vg = blocks(kh), blocks(vh), glob(kh), glob(vh)
  if dropout_rate > 0.0:
    parts = rows.parts(0, n_rows, kp, vp, kg, vg)
    per_row = lambda x: (x if x.ndim == 5 else jnp.broadcast_to(
        x[:, :, None], (b, h, n_rows) + x.shape[2:]))
    cat = lambda i: jnp.concatenate([per_row(part[i]) for part in parts],
                                    axis=3)
    allowed = jnp.concatenate([part[2] for part in parts], axis=-1)
    return _attention_core(qb, cat(0), cat(1), allowed, dropout_rate, rng)
  if steps == 1:
    return _attend_parts(qb, rows.parts(0, n_rows, kp, vp, kg, vg))

  # Without gradients, a loop whose groups read their query rows and write
  # their output by dynamic slices of whole [b, h, rows, bs, .] buffers, the
  # output carried in place: no [steps, ..] transposed copies of Q and O
  # (layer at 16k, forward: 1.96 -> 1.81 s, interleaved).
  cut = lambda x, s: jax.lax.dynamic_slice_in_dim(x, s * group, group, axis=2)
  put = lambda buf, x, s: jax.lax.dynamic_update_slice_in_dim(
      buf, x, s * group, axis=2)

  @jax.custom_vjp
  def run(qp, kp, vp, kg, vg):
    def step(s, out):
      parts = rows.parts(s * group, group, kp, vp, kg, vg)
      return put(out, _attend_parts_fwd(cut(qp, s), parts)[0], s)
    return jax.lax.fori_loop(
        0, steps, step, jnp.zeros((b, h, steps * group, bs, pv), qp.dtype))

  # With gradients, the forward stacks each group's output and
  # probabilities ([steps, b, h, group, ..]), the layout its backward scan
  # reads; the backward stacks dQ the same way.
  split = lambda x: jnp.moveaxis(
      x.reshape((b, h, steps, group) + x.shape[3:]), 2, 0)
  merge = lambda x: jnp.moveaxis(x, 0, 2).reshape(
      (b, h, steps * group) + x.shape[4:])

  def fwd(qp, kp, vp, kg, vg):
    q_s = split(qp)

    def one(s):
      out, res = _attend_parts_fwd(
          q_s[s], rows.parts(s * group, group, kp, vp, kg, vg))
      return out, res[2]                      # the probabilities
    out, probs = jax.lax.map(one, jnp.arange(steps))
    return merge(out), (q_s, kp, vp, kg, vg, out, probs)

  def bwd(res, d_out):
    q_s, kp, vp, kg, vg, out, probs = res
    d_out = split(d_out)

    def step(carry, s):
      dkp, dvp, dkg, dvg = carry
      parts = rows.parts(s * group, group, kp, vp, kg, vg)
      dq, d_parts = _attend_parts_bwd(
          (q_s[s], parts, tuple(x[s] for x in probs), out[s]), d_out[s])
      dkp, dkg_s = rows.add_grads(dkp, d_parts, 0, s * group, group)
      dvp, dvg_s = rows.add_grads(dvp, d_parts, 1, s * group, group)
      if g_all:
        dkg, dvg = dkg + dkg_s, dvg + dvg_s
      return (dkp, dvp, dkg, dvg), dq

    zeros = jnp.zeros_like
    (dkp, dvp, dkg, dvg), dq_s = jax.lax.scan(
        step, (zeros(kp), zeros(vp), zeros(kg), zeros(vg)), jnp.arange(steps))
    return merge(dq_s), dkp, dvp, dkg, dvg

  run.defvjp(fwd, bwd)
  if extra:
    qb = jnp.pad(qb, [(0, 0), (0, 0), (0, extra), (0, 0), (0, 0)])
  return run(qb, kp, vp, kg, vg)[:, :, :n_rows]


def bigbird_block_sparse(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b t h p"],
    v: Float[Array, "b t h p"],
    *,
    block_size: int,
    num_rand_blocks: int = 3,
    global_left: int = 1,
    global_right: int = 1,
    seed: int = 0,
    causal: bool = False,
    kv_mask: Bool[Array, "b t"] | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng=None,
    rows_tokens: int | None = BIGBIRD_ROWS_TOKENS,
):
  """BigBird ITC attention in ``O(t (3 + g + r) bs)``; args as the reference.

  The non-global row blocks run as a loop over groups of about
  ``rows_tokens`` query tokens (``None``: all rows at once); each group
  takes only its own key/value blocks (attention dropout: all rows at once).
  Same result either way.
  """
  _check_bigbird(q, k, v, block_size, global_left, global_right,
                 num_rand_blocks)
  b, t, h, p = q.shape
  pv = v.shape[-1]
  bs = int(block_size)
  nb = t // bs
  gl, gr = _clamp_globals(nb, global_left, global_right)
  scale = 1.0 / math.sqrt(p) if scale is None else scale
  out_dtype = q.dtype
  q, k, v = _f32(q, k, v)
  valid = _kv_valid(kv_mask, b, t)
  rng_rows = rng_glob = None
  if dropout_rng is not None:
    rng_rows, rng_glob = jax.random.split(dropout_rng)
  qh = jnp.moveaxis(q * scale, 2, 1)          # [b, h, t, p]
  kh, vh = jnp.moveaxis(k, 2, 1), jnp.moveaxis(v, 2, 1)
  pos = jnp.arange(t)

  # Global rows: the first gl and last gr blocks, dense against every key,
  # as one [b, h, g bs, t] attention.
  g_rows = np.r_[0:gl * bs, (nb - gr) * bs:t]
  glob_out = None
  if len(g_rows):
    allowed = valid[:, None, None, :]
    if causal:
      allowed = allowed & (pos[None, :] <= g_rows[:, None])[None, None]
    q_glob = (qh[:, :, :t] if len(g_rows) == t else
              jnp.concatenate([qh[:, :, :gl * bs], qh[:, :, (nb - gr) * bs:]],
                              axis=2))
    glob_out = _attention_core(q_glob, kh, vh, allowed, dropout_rate,
                               rng_glob)
  parts = [] if glob_out is None else [glob_out[:, :, :gl * bs]]
  n_rows = nb - gl - gr
  if n_rows > 0:
    idx, ok = _bigbird_slots(nb, num_rand_blocks=num_rand_blocks,
                             num_heads=h, seed=seed, global_left=gl,
                             global_right=gr)
    qb = qh[:, :, gl * bs:(nb - gr) * bs].reshape(b, h, n_rows, bs, p)
    group = n_rows if rows_tokens is None else max(1, int(rows_tokens) // bs)
    out = _bigbird_rows(qb, kh, vh, valid, idx, ok, gl, gr, bs, group,
                        causal, dropout_rate, rng_rows)
    parts.append(out.reshape(b, h, n_rows * bs, pv))
  if gr:
    parts.append(glob_out[:, :, gl * bs:])
  out = jnp.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]
  return jnp.moveaxis(out, 1, 2).astype(out_dtype), None


def bigbird_attention(q, k, v, *, impl: Impl | str = Impl.AUTO, **kwargs):
  """Dispatcher: ``Impl.REFERENCE`` -> dense; otherwise the block-sparse XLA
  form (there is no Pallas kernel)."""
  impl = resolve_impl(impl, has_pallas=False)
  if impl is Impl.REFERENCE:
    return bigbird_reference(q, k, v, **kwargs)
  return bigbird_block_sparse(q, k, v, **kwargs)
