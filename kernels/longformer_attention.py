"""Longformer attention: a sliding (dilated) window plus global tokens.

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

Softmax and backward: ``kernels.block_sparse_attention``. ``causal=True``
intersects the pattern with ``j <= i``. Returns ``(out, None)``.

Checked beside the official code (a scratch run, not a test): the Longformer
layer with the weights of the official ``LongformerSelfAttention``
(``sliding_chunks``, globals and padding) gives its outputs to 3e-7.

Shapes (jaxtyping names): ``b`` batch, ``t`` time, ``h`` heads, ``p`` head
dim, ``w`` window, ``G`` global tokens.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from kernels import Impl, register_op, resolve_impl
from kernels import attention_common as common
from kernels.block_sparse_attention import (as_f32, attend_or_dropout,
                                            check_qkv, dense_attention,
                                            kv_valid)

register_op("longformer_attention")

# Longformer query block (``block_size=None``); see ``longformer_blocked``.
DEFAULT_BLOCK = 128


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
  check_qkv(q, k, v)
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
    kv_mask: Bool[ArrayLike, "b t"] | None = None,
    global_mask: Bool[ArrayLike, "b t"] | None = None,
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
  scale = common.default_scale(scale, p)
  out_dtype = q.dtype
  q, k, v = as_f32(q, k, v)
  valid = kv_valid(kv_mask, b, t)
  allowed = jnp.asarray(longformer_band(t, window=window, dilation=dilation,
                                        causal=causal))[None]
  if global_mask is not None:
    g = global_mask.astype(bool) & valid
    allowed = allowed | g[:, None, :] | g[:, :, None]
  if causal:
    allowed = allowed & jnp.asarray(np.tril(np.ones((t, t), bool)))[None]
  allowed = allowed & valid[:, None, :]
  rngs = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
  out = dense_attention(q, k, v, allowed[:, None], scale, dropout_rate,
                        rngs[0])
  if global_mask is not None:
    qg, kg, vg = as_f32(*(a if a is not None else d for a, d in
                          ((q_global, q), (k_global, k), (v_global, v))))
    allowed_g = valid[:, None, :]
    if causal:
      allowed_g = allowed_g & jnp.asarray(np.tril(np.ones((t, t), bool)))[None]
    out_g = dense_attention(qg, kg, vg, allowed_g[:, None], scale,
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
    kv_mask: Bool[ArrayLike, "b t"] | None = None,
    global_mask: Bool[ArrayLike, "b t"] | None = None,
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
  scale = common.default_scale(scale, p)
  out_dtype = q.dtype
  q, k, v = as_f32(q, k, v)
  valid = kv_valid(kv_mask, b, t)
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
  out = attend_or_dropout(qb, kb, vb, allowed, dropout_rate, rng_local)

  out = jnp.moveaxis(out, 1, 3).reshape(b * d, Tp, h, pv)[:, :T]
  out = _from_residues(out, b, d, t)          # [b, t, h, pv]

  if use_global:
    qg_all, kg_all, vg_all = as_f32(*(
        a if a is not None else dflt
        for a, dflt in ((q_global, q), (k_global, k), (v_global, v))))
    qg = jnp.take_along_axis(qg_all, g_idx[:, :, None, None], axis=1) * scale
    allowed_r = valid[:, None, None, :] & g_ok[:, None, :, None]
    if causal:
      allowed_r = allowed_r & (jnp.arange(t)[None, None, None, :] <=
                               g_idx[:, None, :, None])
    heads = lambda a: jnp.moveaxis(a, 2, 1)
    out_g = jnp.moveaxis(attend_or_dropout(
        heads(qg), heads(kg_all), heads(vg_all), allowed_r, dropout_rate,
        rng_global), 1, 2)                    # [b, G, h, pv]
    rows = jnp.where(g_ok, g_idx, t)          # invalid -> dropped
    out = out.at[jnp.arange(b)[:, None], rows].set(out_g, mode="drop")
  return out.astype(out_dtype), None


def longformer_attention(q, k, v, *, impl: Impl | str = Impl.AUTO, **kwargs):
  """Dispatcher, ``(out, None)``: ``Impl.REFERENCE`` -> dense; otherwise the
  blocked form (there is no Pallas kernel: asking for one raises a
  ValueError). ``block_size``/``max_global`` are ignored by the reference."""
  impl = resolve_impl(impl, op="longformer_attention")
  if impl is Impl.REFERENCE:
    kwargs.pop("block_size", None)
    kwargs.pop("max_global", None)
    return longformer_reference(q, k, v, **kwargs)
  return longformer_blocked(q, k, v, **kwargs)
