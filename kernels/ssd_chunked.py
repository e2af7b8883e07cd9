"""The chunked SSD algorithm (Dao & Gu 2024, Sec. 6) with a hand-written
backward pass: ``ssd_chunked``, the XLA form of ``kernels.ssd.ssd``.

Time is split into chunks of ``Q`` tokens: a quadratic form inside each chunk
(diagonal blocks), the state each chunk leaves behind, a short recurrence
over chunk states, and the states' contribution to the next chunk's outputs
(off-diagonal blocks, low rank). See kernels/ssd.py for the recurrence, the
sliding window by state difference and the notation.

Performance (CPU, float32, b=4 h=8 p=64 n=64 g=1, Q=64; see
benchmarks/bench_ssd.py): the chunked form has a hand-written backward pass
(``_chunked_core``) whose products are batched matmuls on operands already in
the layout the matmul wants; ``precision=HIGHEST`` costs nothing on CPU (same
timings as the default) and keeps float32 on GPU/TPU. The in-chunk cumulative
sums are products with a triangular matrix (``_chunk_cumsum``), the chunk
recurrence is a loop that writes along the chunk axis in place
(``_chunk_recurrence``), and the backward gathers every ``acs_j`` term into
``u_j . du_j`` (which ``dt`` needs anyway); see those for the measured reasons.
The backward gets the off-diagonal blocks' ``d acs_i`` from the per-head
product ``G = (E dy) H^T`` that also gives ``dC``, so ``y_off`` is no residual
(the loss's forward need not compute it), and takes column sums as products
with a row of ones on the left (a natural-layout matmul; ones on the right
contract the second-minor axis, about 2.5x slower).

Shapes (jaxtyping names): ``b`` batch, ``t`` time, ``h`` heads, ``p`` head dim,
``g`` groups of ``B``/``C``, ``n`` state size, ``c`` chunks. Computation is in
float32; outputs have ``x.dtype`` (states are float32).
"""
import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from kernels import ssd_common as common

_HI = jax.lax.Precision.HIGHEST


def _bmm(lhs, rhs, lc, rc, nb):
  """Batched matmul: the first ``nb`` axes are batch, contract ``lc``/``rc``."""
  return jax.lax.dot_general(
      lhs, rhs, (((lc,), (rc,)), (tuple(range(nb)), tuple(range(nb)))),
      precision=_HI)


def _rsum(v, axis):
  """``jnp.sum(v, axis)`` written as a product with a vector of ones.

  XLA:CPU (jaxlib 0.10) lowers a fused multiply-reduce whose operand has
  size-1 axes (``g = 1``, ``m = 1`` here) to a generic kernel about 25x
  slower than the same reduction on the collapsed array; a dot is not.
  """
  axis = axis % v.ndim
  ones = jnp.ones((v.shape[axis],), v.dtype)
  return jax.lax.dot_general(v, ones, (((axis,), (0,)), ((), ())),
                             precision=_HI)


def _chunk_cumsum(a, *, reverse=False):
  """Inclusive cumulative sum over the time axis ``2`` of ``a [b, c, Q, h]``,
  returned head-major ``[b, c, h, Q]`` (``reverse``: sums from the end).

  A product with a triangular matrix of ones rather than ``jnp.cumsum``:
  XLA:CPU (jaxlib 0.10) lowers the cumsum to a two-level reduce-window whose
  second level is re-fused into every consumer, and a consumer that
  broadcasts it to ``[.., Q, Q]`` (the decay matrix) then runs about 10x
  slower than on a materialised operand. The terms are the same (same sign),
  summed in another order.
  """
  Q = a.shape[2]
  u = jax.lax.broadcasted_iota(jnp.int32, (Q, Q), 0)
  i = jax.lax.broadcasted_iota(jnp.int32, (Q, Q), 1)
  tri = (u >= i if reverse else u <= i).astype(a.dtype)    # [u, i]
  return jax.lax.dot_general(a, tri, (((2,), (0,)), ((), ())), precision=_HI)


def _chunk_terms(x, dt, A, B, Cs, Q):
  """Per-chunk operands in the layouts the matmuls want.

  Batch axes lead every operand as ``(b, c, g)`` (then ``k`` for per-head
  products), so each product below is a plain batched matmul on the
  arrays' natural layout; for ``g = 1`` none of these reshapes moves data
  except the head-major copy ``uh`` of the inputs.
  """
  b, T, h, p = x.shape
  g, n = B.shape[2:]
  m = Cs.shape[0]
  k, c = h // g, T // Q
  a = (dt * A[None, None, :]).reshape(b, c, Q, h)
  acs_hq = _chunk_cumsum(a)                                  # [b, c, h, Q]
  acs = jnp.swapaxes(acs_hq, 2, 3)                           # [b, c, Q, h]
  acs_h = acs_hq.reshape(b, c, g, k, Q)
  seg = acs_h[..., :, None] - acs_h[..., None, :]            # [b,c,g,k,i,j]
  Lmat = jnp.exp(jnp.where(common.lower_triangle(Q, lead=4), seg, -jnp.inf))
  u = (x * dt[..., None]).reshape(b, c, Q, g, k * p)
  ut = jnp.swapaxes(u, 2, 3)                                 # [b,c,g,Q,kp]
  uh = jnp.swapaxes(ut.reshape(b, c, g, Q, k, p), 3, 4)      # [b,c,g,k,Q,p]
  Bt = jnp.swapaxes(B.reshape(b, c, Q, g, n), 2, 3)          # [b,c,g,Q,n]
  Ct = jnp.moveaxis(Cs.reshape(m, b, c, Q, g, n), (0, 4), (3, 2))
  Ct = Ct.reshape(b, c, g, m * Q, n)                         # [b,c,g,(m i),n]
  CB = _bmm(Ct, Bt, 4, 4, 3).reshape(b, c, g, m, Q, Q)
  return acs, Lmat, ut, uh, Bt, Ct, CB


def _decay_terms(acs, g, k):
  """``E_i = exp(acs_i)`` ``[b,c,g,1,Q,k,1]`` and ``w_j = exp(acs_last -
  acs_j)`` ``[b,c,g,Q,k,1]`` in the time-major layout; chunk decays."""
  b, c, Q, h = acs.shape
  at = jnp.swapaxes(acs.reshape(b, c, Q, g, k), 2, 3)        # [b,c,g,Q,k]
  E = jnp.exp(at).reshape(b, c, g, 1, Q, k, 1)
  w = jnp.exp(at[:, :, :, -1:, :] - at)[..., None]
  return E, w, jnp.exp(acs[:, :, -1, :])                     # [b, c, h]


def _scores(CB, Lmat):
  """``[b,c,g,k,(m i),j]``: the masked decay times ``C . B``, per head."""
  b, c, g, m, Q, _ = CB.shape
  k = Lmat.shape[3]
  S = CB[:, :, :, None] * Lmat[:, :, :, :, None]            # [b,c,g,k,m,i,j]
  return S.reshape(b, c, g, k, m * Q, Q)


def _chunk_recurrence(decay, new, s0, *, reverse=False):
  """``s_{c+1} = decay_c s_c + new_c`` over the chunk axis ``1``.

  Args:
    decay: ``[b, c, h]`` per-chunk, per-head factors.
    new: ``[b, c, g, n, (k p)]`` per-chunk inputs.
    s0: ``[b, g, n, (k p)]`` the state entering the first chunk (the last
      one for ``reverse``).

  Returns:
    ``(final, states)``: the state after the last step and ``states
    [b, c, g, n, (k p)]``, the state entering each chunk (``reverse``: with
    the chunks taken last to first, as entering the step from the right).

  A ``fori_loop`` that reads ``new`` and writes the states in place along
  the chunk axis: ``lax.scan`` wants the chunk axis leading, i.e. transposed
  copies of ``new`` and of the states. (Writing the states over ``new`` in
  place makes XLA copy the whole buffer every step.)
  """
  b, c, g, n, kp = new.shape
  k = decay.shape[2] // g
  p = kp // k
  # (g n) as one axis: a size-1 g axis gets its own layout in the loop,
  # which costs a physically no-op copy of the whole buffer.
  new = new.reshape(b, c, g * n, kp)

  def body(i, carry):
    state, buf = carry
    ci = c - 1 - i if reverse else i
    inp = jax.lax.dynamic_index_in_dim(new, ci, 1, keepdims=False)
    dec = jax.lax.dynamic_index_in_dim(decay, ci, 1, keepdims=False)
    buf = jax.lax.dynamic_update_index_in_dim(buf, state, ci, 1)
    # Read back from the buffer: the carried state then dies at the write,
    # so XLA needs no copy of it to update it in place.
    state = jax.lax.dynamic_index_in_dim(buf, ci, 1, keepdims=False)
    nxt = dec.reshape(b, g, 1, k, 1) * state.reshape(b, g, n, k, p)
    return nxt.reshape(b, g * n, kp) + inp, buf

  # The output buffer starts as a copy of ``new`` (every slot is
  # overwritten): cheaper than materialising zeros.
  final, states = jax.lax.fori_loop(
      0, c, body, (s0.reshape(b, g * n, kp), new))
  return final.reshape(b, g, n, kp), states.reshape(b, c, g, n, kp)


def _chunk_forward(x, dt, A, B, Cs, state0, Q):
  b, T, h, p = x.shape
  g, n = B.shape[2:]
  m = Cs.shape[0]
  k, c = h // g, T // Q
  acs, Lmat, ut, uh, Bt, Ct, CB = _chunk_terms(x, dt, A, B, Cs, Q)
  E, w, chunk_decay = _decay_terms(acs, g, k)
  # 1. Diagonal blocks: y_i = sum_{j <= i} (C_i . B_j) exp(acs_i - acs_j) u_j.
  y_diag = _bmm(_scores(CB, Lmat), uh, 5, 4, 4)             # [b,c,g,k,(m i),p]
  y_diag = jnp.moveaxis(y_diag.reshape(b, c, g, k, m, Q, p), 3, 5)
  # 2. The state each chunk leaves behind (from zero), stored transposed:
  #    [b, c, g, n, (k p)].
  uw = (ut.reshape(b, c, g, Q, k, p) * w).reshape(b, c, g, Q, k * p)
  BtT = jnp.swapaxes(Bt, 3, 4)                               # [b,c,g,n,j]
  chunk_states = _bmm(BtT, uw, 4, 3, 3)                      # [b,c,g,n,kp]
  # 3. Recurrence over chunks (c sequential steps of size b h p n).
  s0 = jnp.moveaxis(state0.reshape(b, g, k * p, n), 3, 2)   # [b, g, n, kp]
  final, states_in = _chunk_recurrence(chunk_decay, chunk_states, s0)
  # 4. Off-diagonal blocks: the entering state read out inside the chunk.
  y_off = _bmm(Ct, states_in, 4, 3, 3)                       # [b,c,g,(m i),kp]
  y_off = y_off.reshape(b, c, g, m, Q, k, p) * E
  y = y_diag + y_off                                         # [b,c,g,m,i,k,p]
  return y, states_in, final, y_off


def _to_bhpn(state, k, p):
  """``[..., g, n, (k p)] -> [..., (g k), p, n]``."""
  *lead, g, n, _ = state.shape
  s = state.reshape(*lead, g, n, k, p)
  return jnp.moveaxis(s, -3, -1).reshape(*lead, g * k, p, n)


def _to_y(y, T, h, p):
  """``[b,c,g,m,i,k,p] -> [m, b, T, h, p]``."""
  b, c, g, m, Q, k, _ = y.shape
  return jnp.moveaxis(y, 3, 0).swapaxes(3, 4).reshape(m, b, T, h, p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _chunked_core(x, dt, A, B, Cs, state0, Q):
  """The four steps of the chunked algorithm, for ``m`` output projections.

  Args:
    x, dt, B: float32 ``[b, T, h, p]``, ``[b, T, h]``, ``[b, T, g, n]`` with
      ``T`` a multiple of ``Q``.
    A: ``[h]``.
    Cs: ``[m, b, T, g, n]``: several query sequences share every ``B``-side
      quantity (the window form uses ``m = 2``).
    state0: ``[b, h, p, n]``.
    Q: chunk size (static).

  Returns:
    ``y [m, b, T, h, p]``, ``states_in [b, c, h, p, n]`` (the state entering
    each chunk) and ``final [b, h, p, n]``.

  The backward pass is written by hand (``_chunked_core_bwd``): autodiff of
  the forward spends most of its time in broadcast-reduce patterns (the
  ``C B^T`` factor shared by the heads of a group) and layout copies; the
  hand-written one recomputes the chunk terms and uses one batched matmul per
  gradient product on operands already in the layout it needs.
  """
  out, _ = _chunked_core_fwd(x, dt, A, B, Cs, state0, Q)
  return out


def _chunked_core_fwd(x, dt, A, B, Cs, state0, Q):
  b, T, h, p = x.shape
  k = h // B.shape[2]
  y, states_in, final, y_off = _chunk_forward(x, dt, A, B, Cs, state0, Q)
  out = (_to_y(y, T, h, p), _to_bhpn(states_in, k, p), _to_bhpn(final, k, p))
  return out, (x, dt, A, B, Cs, states_in)


def _chunked_core_bwd(Q, res, cts):
  x, dt, A, B, Cs, states_in = res
  dy, d_states_in, d_final = cts
  b, T, h, p = x.shape
  g, n = B.shape[2:]
  m = Cs.shape[0]
  k, c = h // g, T // Q
  acs, _, ut, uh, Bt, Ct, _ = _chunk_terms(x, dt, A, B, Cs, Q)
  E, w, chunk_decay = _decay_terms(acs, g, k)
  # dy in the forward's internal layout [b, c, g, m, i, k, p].
  dyt = jnp.moveaxis(dy.reshape(m, b, c, Q, g, k, p), (0, 4), (3, 2))
  def to_t(v):  # [..., h, p, n] -> [..., g, n, (k p)]
    lead = v.shape[:-3]
    v = jnp.moveaxis(v.reshape(*lead, g, k, p, n), -1, -3)
    return v.reshape(*lead, g, n, k * p)

  d_states_in = to_t(d_states_in)
  d_final = to_t(d_final)

  # 4. y_off = E * (C . H). One per-head product G = (E dy) H^T serves
  #    both dC (summed over the heads) and d acs_i = C_i . G_i (so y_off
  #    need not be saved, nor recomputed).
  acs_h = jnp.moveaxis(acs, 2, 3).reshape(b, c, g, k, Q)
  dyh = jnp.moveaxis(dyt, 5, 3).reshape(b, c, g, k, m * Q, p)
  dzh = (dyh.reshape(b, c, g, k, m, Q, p) *
         jnp.exp(acs_h)[:, :, :, :, None, :, None]).reshape(dyh.shape)
  Hh = jnp.moveaxis(states_in.reshape(b, c, g, n, k, p), 4, 3)  # [b,c,g,k,n,p]
  G = _bmm(dzh, Hh, 5, 5, 4)                                 # [b,c,g,k,(m i),n]
  dCt = sum(G[:, :, :, kk] for kk in range(k))               # [b,c,g,(m i),n]
  d_acs_h = _rsum(G * Ct[:, :, :, None], -1).reshape(b, c, g, k, m, Q)
  d_acs_h = sum(d_acs_h[:, :, :, :, mm] for mm in range(m))  # [b,c,g,k,Q]
  dz = (dyt * E).reshape(b, c, g, m * Q, k * p)
  CtT = jnp.swapaxes(Ct, 3, 4)                               # [b,c,g,n,(m i)]
  dH = _bmm(CtT, dz, 4, 3, 3) + d_states_in                  # [b,c,g,n,kp]

  # 3. Reverse recurrence: lam_c = e_c lam_{c+1} + dH_c, d st_c = lam_{c+1}.
  d_s0, d_st = _chunk_recurrence(chunk_decay, dH, d_final, reverse=True)
  d_decay = _rsum(_rsum((d_st * states_in).reshape(b, c, g, n, k, p), -1), 3)
  d_decay = d_decay.reshape(b, c, h) * chunk_decay

  # 2. st = sum_j (u_j w_j) B_j^T with w_j = exp(acs_last - acs_j).
  u6 = ut.reshape(b, c, g, Q, k, p)
  uw = (u6 * w).reshape(b, c, g, Q, k * p)
  duw = _bmm(Bt, d_st, 4, 3, 3).reshape(b, c, g, Q, k, p)    # [b,c,g,j,k,p]
  dBt = _bmm(uw, d_st, 4, 4, 3)                              # [b,c,g,j,n]
  dut = duw * w
  dw = _rsum(duw * u6, -1) * w[..., 0]                       # [b,c,g,Q,k]
  # (-dw, the j-side of w_j, is in the u . du term at the end.)
  d_last = _rsum(dw, 3).reshape(b, c, h) + d_decay           # [b, c, h]

  # 1. y_diag = (CB o L) u, per head; worked in the transposed (j, i)
  #    orientation so every product is a matmul on natural layouts.
  segT = acs_h[..., None, :] - acs_h[..., :, None]           # [b,c,g,k,j,i]
  upper = jnp.swapaxes(common.lower_triangle(Q, lead=4), -1, -2)
  LT = jnp.exp(jnp.where(upper, segT, -jnp.inf))
  CBT = _bmm(Bt, Ct, 4, 4, 3).reshape(b, c, g, Q, m, Q)      # [b,c,g,j,m,i]
  ST = (CBT[:, :, :, None] * LT[:, :, :, :, :, None]).reshape(
      b, c, g, k, Q, m * Q)                                  # [b,c,g,k,j,(m i)]
  duh = _bmm(ST, dyh, 5, 4, 4)                               # [b,c,g,k,j,p]
  dut = dut + jnp.swapaxes(duh, 3, 4)
  dST = _bmm(uh, dyh, 5, 5, 4).reshape(b, c, g, k, Q, m, Q)
  # Sums over the few heads of a group / queries as explicit adds (see
  # _rsum).
  dCBT = sum(dST[:, :, :, kk] * LT[:, :, :, kk, :, None]
             for kk in range(k))                             # [b,c,g,j,m,i]
  # d seg = dS o CB o L = dS o S (summed over the queries).
  dsegT = (dST * ST.reshape(dST.shape)).reshape(b * c * g * k, Q, m, Q)
  dsegT = sum(dsegT[:, :, mm] for mm in range(m))            # [(b c g k), j, i]
  # The i-side of seg_ij = acs_i - acs_j: column sums, as a batched product
  # with a row of ones on the left, dsegT the natural [K, N] operand (a plain
  # reduction, or ones on the right, makes XLA:CPU transpose dsegT first). The j-side, sum_i dsegT[j, i] =
  # u_j . duh_j, is in the u . du term at the end.
  ones = jnp.ones((b * c * g * k, 1, Q), jnp.float32)
  d_seg_i = _bmm(ones, dsegT, 2, 1, 1)[:, 0]                 # sum over j
  d_acs_h = d_acs_h + d_seg_i.reshape(b, c, g, k, Q)
  dCBT = dCBT.reshape(b, c, g, Q, m * Q)
  dCt = dCt + _bmm(dCBT, Bt, 3, 3, 3)
  dBt = dBt + _bmm(dCBT, Ct, 4, 3, 3)

  # acs = cumsum(dt A) inside each chunk; u = dt x.
  du = jnp.swapaxes(dut, 2, 3).reshape(b, T, h, p)
  # Every j-side term of acs (w_j and seg_ij) multiplies u_j = dt_j x_j, and
  # together they are -u_j . du_j = -dt_j (x_j . du_j), which dt needs too.
  x_du = _rsum(du * x, -1)                                   # [b, T, h]
  d_acs = jnp.moveaxis(d_acs_h, 4, 2).reshape(b, c, Q, h)
  d_acs = d_acs - (dt * x_du).reshape(b, c, Q, h)
  d_acs = d_acs.at[:, :, -1, :].add(d_last)
  da = jnp.swapaxes(_chunk_cumsum(d_acs, reverse=True), 2, 3).reshape(b, T, h)
  dx = du * dt[..., None]
  ddt = x_du + da * A[None, None, :]
  dA = _rsum((da * dt).reshape(b * T, h), 0)
  dB = jnp.swapaxes(dBt, 2, 3).reshape(b, T, g, n)
  dCs = jnp.moveaxis(dCt.reshape(b, c, g, m, Q, n), (3, 2), (0, 4))
  d_s0 = _to_bhpn(d_s0, k, p)
  return dx, ddt, dA, dB, dCs.reshape(m, b, T, g, n), d_s0


_chunked_core.defvjp(_chunked_core_fwd, _chunked_core_bwd)


def _shift_time(v, r, axis=1):
  """``out[t] = v[t - r]`` along ``axis`` (zeros for ``t < r``); ``r >= 0``."""
  t = v.shape[axis]
  pad = [(0, 0)] * v.ndim
  pad[axis] = (r, 0)
  return jax.lax.slice_in_dim(jnp.pad(v, pad), 0, t, axis=axis)


def _state_at(acs, u, B, states_in, j):
  """State after offset ``j`` of every chunk: ``[b, c, h, p, n]``."""
  b, c, Q, g, k, p = u.shape
  n = B.shape[-1]
  a_j = acs[:, :, j:j + 1, :]                                # [b, c, 1, h]
  keep = (jnp.arange(Q) <= j).reshape(1, 1, Q, 1)
  w = jnp.where(keep, jnp.exp(jnp.where(keep, a_j - acs, 0.0)), 0.0)
  part = jnp.einsum("bcjgn,bcjgkp->bcgkpn", B.reshape(b, c, Q, g, n),
                    u * w.reshape(b, c, Q, g, k, 1), precision=_HI)
  part = part.reshape(b, c, g * k, p, n)
  return part + jnp.exp(a_j[:, :, 0, :])[..., None, None] * states_in


def ssd_chunked(
    x: Float[Array, "b t h p"],
    dt: Float[Array, "b t h"],
    A: Float[Array, "h"],
    B: Float[Array, "b t g n"],
    C: Float[Array, "b t g n"],
    *,
    chunk_size: int = 64,
    initial_state: Float[Array, "b h p n"] | None = None,
    window: int | None = None,
    return_chunk_states: bool = False,
    state_norm: float | None = None,
):
  """The chunked SSD algorithm (Dao & Gu 2024, Sec. 6); ``O(t Q)`` work.

  ``chunk_size`` need not divide ``t``: the tail is padded with identity
  steps (``dt = 0``, ``x = 0``) and cut. ``B``/``C`` stay per group: heads are
  reshaped to ``(g, h / g)`` in every product, never materialised per head.

  Window ``r`` (state difference): with ``C'_s = C_{s+r}``,
  ``h_{t-r} . C_t = y'_{t-r}`` where ``y'`` is the plain output for the
  queries ``C'``, so ``y^(r)_t = y_t - P_t y'_{t-r}`` with
  ``P_t = prod_{t-r < u <= t} alpha_u``. Both query sets share every
  ``B``-side product (chunk states, recurrence), for any ``r`` (not only
  multiples of ``Q``); measured (benchmarks/bench_ssd.py) the forward costs
  about the plain form's, forward + backward about twice. ``log
  P_t`` is assembled from within-chunk cumulative sums plus a banded sum of
  whole-chunk totals (same-sign terms, no cancellation of global prefix
  sums).

  Arguments and returns as ``ssd_reference`` (no ``state_norm``).
  """
  b, t, h, p, g, n = common.check_args(x, dt, A, B, C, chunk_size,
                                       initial_state, window)
  common.reject_state_norm(state_norm, "ssd_chunked")
  out_dtype = x.dtype
  x, dt, A, B, C, initial_state = common.as_float32(x, dt, A, B, C,
                                                    initial_state)
  Q = int(chunk_size)
  c = -(-t // Q)
  T = c * Q
  r = None if window is None or int(window) >= t else int(window)
  pad = lambda v: jnp.pad(v, [(0, 0), (0, T - t)] + [(0, 0)] * (v.ndim - 2))
  xp, dtp, Bp, Cp = pad(x), pad(dt), pad(B), pad(C)
  Cs = Cp[None]
  if r is not None:
    C_ahead = jnp.pad(C[:, r:], [(0, 0), (0, T - t + r), (0, 0), (0, 0)])
    Cs = jnp.stack([Cp, C_ahead])
  state0 = (jnp.zeros((b, h, p, n), jnp.float32) if initial_state is None
            else initial_state)
  ys, states_in, final = _chunked_core(xp, dtp, A, Bp, Cs, state0, Q)
  if r is not None:
    acs = jnp.cumsum((dtp * A[None, None, :]).reshape(b, c, Q, h), axis=2)
    u = (xp * dtp[..., None]).reshape(b, c, Q, g, h // g, p)
  y = ys[0]
  if return_chunk_states:
    states_out = jnp.concatenate([states_in[:, 1:], final[:, None]], axis=1)
  if r is not None:
    log_p = _window_log_decay(acs, r, Q)                     # [b, T, h]
    y = y - jnp.exp(log_p)[..., None] * _shift_time(ys[1], r)
    # Windowed final state: h_{t-1} - P_{t-1} h_{t-1-r}.
    s_last = t - 1 - r
    lagged = _state_at(acs[:, s_last // Q:s_last // Q + 1],
                       u[:, s_last // Q:s_last // Q + 1],
                       Bp.reshape(b, c, Q, g, n)[:, s_last // Q:s_last // Q + 1],
                       states_in[:, s_last // Q:s_last // Q + 1], s_last % Q)
    final = final - jnp.exp(log_p[:, t - 1])[..., None, None] * lagged[:, 0]
    if return_chunk_states:
      # Full chunk c ends at cQ + Q - 1; its lagged token sits at offset
      # j = (Q - 1 - r) mod Q of chunk c - d.
      j = (Q - 1 - r) % Q
      d = (r - (Q - 1 - j)) // Q
      lag = _shift_time(_state_at(acs, u, Bp.reshape(b, c, Q, g, n),
                                  states_in, j), d)
      ends = jnp.arange(c) * Q + Q - 1
      p_end = jnp.exp(log_p[:, jnp.minimum(ends, T - 1)])    # [b, c, h]
      states_out = states_out - p_end[..., None, None] * lag
      states_out = states_out.at[:, -1].set(final)
  y = y[:, :t].astype(out_dtype)
  if return_chunk_states:
    return y, final, states_out
  return y, final


def _window_log_decay(acs, r, Q):
  """``log P_t = sum_{t-r < u <= t} dt_u A`` for every padded token ``t``.

  ``= acs[t] - acs[t-r] + sum of the totals of chunks c(t-r) .. c(t)-1``,
  where ``acs`` is the inclusive cumulative sum inside each chunk. ``t - r``
  lies ``kq`` or ``kq + 1`` chunks back (``r = kq Q + m``), depending on
  whether ``t``'s offset is ``>= m``. Meaningless (but finite) for ``t < r``.
  """
  b, c, _, h = acs.shape
  T = c * Q
  kq, m = divmod(r, Q)
  flat = acs.reshape(b, T, h)
  tot = acs[:, :, -1, :]                                     # [b, c, h]
  ci = jnp.arange(c)[:, None]
  cj = jnp.arange(c)[None, :]
  band_k = ((cj < ci) & (cj >= ci - kq)).astype(jnp.float32)
  band_k1 = ((cj < ci) & (cj >= ci - kq - 1)).astype(jnp.float32)
  w_k = jnp.einsum("de,beh->bdh", band_k, tot, precision=_HI)
  w_k1 = jnp.einsum("de,beh->bdh", band_k1, tot, precision=_HI)
  near = (jnp.arange(Q) >= m).reshape(1, 1, Q, 1)
  between = jnp.where(near, w_k[:, :, None, :], w_k1[:, :, None, :])
  return flat - _shift_time(flat, r) + between.reshape(b, T, h)
