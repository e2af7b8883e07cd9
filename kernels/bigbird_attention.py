"""BigBird ITC attention: window, global and random key blocks.

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

Softmax and backward: ``kernels.block_sparse_attention`` (``attend``, and
``_attend_parts`` here, its backward on parts). ``causal=True`` intersects the pattern with ``j <= i``
(the BigBird pattern itself is unchanged). Returns ``(out, None)``.

Checked beside the official code (a scratch run, not a test): the official
sampler's legal random blocks per row equal ours at lengths where its plan
draws over all blocks.

Shapes (jaxtyping names): ``b`` batch, ``t`` time, ``h`` heads, ``p`` head
dim, ``nb`` blocks, ``bs`` block size.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from kernels import Impl, register_op, resolve_impl
from kernels import attention_common as common
from kernels.block_sparse_attention import (as_f32, attend_or_dropout,
                                            check_qkv, dense_attention,
                                            key_value_grads, kv_valid,
                                            transposed_copy)

register_op("bigbird_attention")

_HI = jax.lax.Precision.HIGHEST

# ------------------------------------------------------------ XLA:CPU tuning
# BigBird: query tokens (whole row blocks) per step of a scan over row groups;
# None: all rows at once. Layer (benchmarks/bench_attention.py, block 64,
# r = 3, this 2-core CPU, train/host.py's malloc settings), t = 16384, forward
# + backward: groups of 1024 tokens 5.2-5.4 s with an XLA memory estimate of
# 2.85 GiB (groups of 512: 5.7 s; 2048: 5.3 s); all rows at once 4.4-4.7 s
# but an estimate of 6.2 GiB, and the heap grows to 14-19 GiB around its
# 1 GiB blocks, with first steps of up to 16 s.
BIGBIRD_ROWS_TOKENS = 1024
# --------------------------------------------------------------------------


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
  check_qkv(q, k, v)
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
    kv_mask: Bool[ArrayLike, "b t"] | None = None,
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
  scale = common.default_scale(scale, p)
  out_dtype = q.dtype
  q, k, v = as_f32(q, k, v)
  blk = bigbird_block_mask(t // block_size, num_rand_blocks=num_rand_blocks,
                           num_heads=h, seed=seed, global_left=global_left,
                           global_right=global_right)
  dense = np.repeat(np.repeat(blk, block_size, 1), block_size, 2)
  if causal:
    dense = dense & np.tril(np.ones((t, t), bool))[None]
  allowed = (jnp.asarray(dense)[None] &
             kv_valid(kv_mask, b, t)[:, None, None, :])
  out = dense_attention(q, k, v, allowed, scale, dropout_rate, dropout_rng)
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
  n_i]``. A row with no allowed key gives 0. Backward as ``attend``'s, from
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
  delta = common.softmax_delta(d_out, out)
  dq, d_parts, small_t, flat_t = None, [], None, None
  for (k, v, allowed), pr in zip(parts, probs):
    dp = _part_scores(d_out, v)
    ds = common.softmax_scores_grad(pr, dp, delta)
    if k.ndim == 5:
      dq_i = jnp.einsum("bhrmn,bhrnp->bhrmp", ds, k, precision=_HI)
      if small_t is None and k.shape[-2] <= 4 * m:
        # Shared by the parts.
        small_t = transposed_copy(d_out), transposed_copy(q)
      dk, dv = key_value_grads(pr, ds, d_out, q, small_t)
    else:
      dq_i = jnp.einsum("bhrmn,bhnp->bhrmp", ds, k, precision=_HI)
      # A shared part's gradients sum over every row: dV^T = dO^T P as one
      # [p, r m] x [r m, n] product per head, from [p, r m] copies of dO and
      # Q. (Contracting P's [r m] axis directly made XLA transpose P and dS,
      # [r m, n] each: 0.6 s of the 16k layer step.)
      if flat_t is None:
        flat = lambda x: transposed_copy(x.reshape(b, h, r * m, x.shape[-1]))
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
    return attend_or_dropout(qb, cat(0), cat(1), allowed, dropout_rate, rng)
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
    kv_mask: Bool[ArrayLike, "b t"] | None = None,
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
  scale = common.default_scale(scale, p)
  out_dtype = q.dtype
  q, k, v = as_f32(q, k, v)
  valid = kv_valid(kv_mask, b, t)
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
    glob_out = attend_or_dropout(q_glob, kh, vh, allowed, dropout_rate,
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
  """Dispatcher, ``(out, None)``: ``Impl.REFERENCE`` -> dense; otherwise the
  block-sparse XLA form (there is no Pallas kernel: asking for one raises a
  ValueError)."""
  impl = resolve_impl(impl, op="bigbird_attention")
  if impl is Impl.REFERENCE:
    return bigbird_reference(q, k, v, **kwargs)
  return bigbird_block_sparse(q, k, v, **kwargs)
