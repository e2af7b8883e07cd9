"""Mamba-2 state-space duality (SSD) scan, with state-collapse mitigations.

Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality" (ICML 2024), Sec. 6 and Listing 1.
Per head, with a scalar decay ``alpha_t = exp(dt_t A)`` (``A < 0``, ``dt > 0``):

  h_t = alpha_t h_{t-1} + dt_t x_t B_t^T        (h_t in R^{p x n})
  y_t = h_t C_t

Head ``i`` reads the input/output projections of group ``i // (h // g)``. The
same map written as a masked "attention" (the quadratic form) is

  y = (L o C B^T) (dt x),  L[t, s] = exp(sum_{s < u <= t} dt_u A) for s <= t,

and the chunked form splits time into chunks of ``Q`` tokens: a quadratic form
inside each chunk (diagonal blocks), the state each chunk leaves behind, a
short recurrence over chunk states, and the states' contribution to the next
chunk's outputs (off-diagonal blocks, low rank).

Mitigations for state collapse (Chen et al., "Stuffed Mamba", arXiv
2410.07145, training-free mitigations):
  * ``window=r``: sliding window by state difference,
    ``h^(r)_t = h_t - (prod_{t-r < u <= t} alpha_u) h_{t-r}``; by linearity this
    is the state of the recurrence restarted from zero ``r`` tokens back (it
    holds tokens ``t-r+1 .. t`` only), so ``y^(r)_t = h^(r)_t C_t`` is exact in
    every form.
  * ``state_norm=tau`` (sequential form only): after every update the state of
    each head is rescaled so that its Frobenius norm over ``(p, n)`` never
    exceeds ``tau``: ``h_t <- h_t min(1, tau / ||h_t||)``. This is a nonlinear
    function of the state, so the state is no longer a linear combination of
    the inputs with data-independent decay products, which the chunked and
    quadratic forms rely on; they reject it.
  * decay / insertion scaling (``A -> lambda A``, ``B -> gamma B``) live in the
    layer: they are plain inputs here.

The chunked form and its hand-written backward are in ssd_chunked.py.

Shapes (jaxtyping names): ``b`` batch, ``t`` time, ``h`` heads, ``p`` head dim,
``g`` groups of ``B``/``C``, ``n`` state size, ``c`` chunks. Computation is in
float32; outputs have ``x.dtype`` (states are float32).
"""
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from kernels import Impl, register_op, resolve_impl
from kernels import ssd_common as common
from kernels.ssd_chunked import ssd_chunked

register_op("ssd")

_HI = jax.lax.Precision.HIGHEST


def _clip_norm(state, tau):
  """Rescales each head's state to Frobenius norm <= tau."""
  sq = jnp.sum(state * state, axis=(-2, -1), keepdims=True)
  # Gradient-safe: the where picks 1 wherever the norm is within tau (also
  # at zero), so sqrt is never differentiated at 0 on a taken branch.
  over = sq > tau * tau
  norm = jnp.sqrt(jnp.where(over, sq, 1.0))
  return state * jnp.where(over, tau / norm, 1.0)



def ssd_reference(
    x: Float[Array, "b t h p"],
    dt: Float[Array, "b t h"],
    A: Float[Array, "h"],
    B: Float[Array, "b t g n"],
    C: Float[Array, "b t g n"],
    *,
    chunk_size: int = 64,
    initial_state: Float[Array, "b h p n"] | None = None,
    window: int | None = None,
    state_norm: float | None = None,
    return_chunk_states: bool = False,
):
  """The recurrence, one token at a time (``lax.scan`` over ``t``).

  Args:
    x: inputs ``[b, t, h, p]``.
    dt: positive step sizes ``[b, t, h]`` (already softplus'd).
    A: negative decay rates ``[h]``.
    B: input projections ``[b, t, g, n]``.
    C: output projections ``[b, t, g, n]``.
    chunk_size: only used to pick the positions of ``return_chunk_states``.
    initial_state: ``[b, h, p, n]`` or None (zeros).
    window: ``r >= 1``: sliding window by state difference (module docstring).
      Carried here as the lagged state ``h_{t-r}`` advanced from a ring buffer
      of the last ``r`` tokens' inputs.
    state_norm: ``tau > 0``: clip each head's state to Frobenius norm ``tau``
      after every update (module docstring).
    return_chunk_states: also return the (windowed / clipped) state after the
      last token of every chunk, ``[b, ceil(t / chunk_size), h, p, n]``.

  Returns:
    ``(y [b, t, h, p], final_state [b, h, p, n])`` and, if requested,
    ``chunk_states``.
  """
  b, t, h, p, g, n = common.check_args(x, dt, A, B, C, chunk_size,
                                       initial_state, window)
  if state_norm is not None and not state_norm > 0:
    raise ValueError(f"{state_norm=} must be > 0")
  if state_norm is not None and window is not None:
    raise ValueError(
        f"{window=} and {state_norm=} cannot be combined: the state "
        "difference is exact only for a linear recurrence")
  out_dtype = x.dtype
  x, dt, A, B, C, initial_state = common.as_float32(x, dt, A, B, C,
                                                    initial_state)
  Bh, Ch = common.per_head(B, h), common.per_head(C, h)
  a = dt * A[None, None, :]                      # log alpha, [b, t, h]
  u = dt[..., None] * x                          # [b, t, h, p]
  state0 = (jnp.zeros((b, h, p, n), jnp.float32) if initial_state is None
            else initial_state)
  Q = int(chunk_size)
  n_chunks = -(-t // Q)
  r = None if window is None else min(int(window), t)

  def step(carry, inp):
    state, lag, ring, chunk_states = carry
    i, a_t, u_t, B_t, C_t = inp
    state = (jnp.exp(a_t)[:, :, None, None] * state +
             u_t[..., :, None] * B_t[..., None, :])
    if state_norm is not None:
      state = _clip_norm(state, state_norm)
    out_state = state
    if r is not None:
      # Slot i % r holds token i - r (zeros before the start: an identity
      # step), which advances the lagged state to h_{i-r}.
      slot = i % r
      a_o, u_o, B_o = (jax.lax.dynamic_index_in_dim(v, slot, 0, False)
                       for v in ring)
      lag = (jnp.exp(a_o)[:, :, None, None] * lag +
             u_o[..., :, None] * B_o[..., None, :])
      ring = tuple(jax.lax.dynamic_update_index_in_dim(v, w, slot, 0)
                   for v, w in zip(ring, (a_t, u_t, B_t)))
      decay = jnp.exp(jnp.sum(ring[0], axis=0))  # prod of the last r alphas
      out_state = state - decay[:, :, None, None] * lag
    y_t = jnp.einsum("bhpn,bhn->bhp", out_state, C_t, precision=_HI)
    if chunk_states is not None:
      # Every token overwrites its chunk's slot: the last write is the state
      # after the chunk's last token.
      chunk_states = jax.lax.dynamic_update_index_in_dim(
          chunk_states, out_state, i // Q, 0)
    return (state, lag, ring, chunk_states), y_t

  lag0 = ring0 = None
  if r is not None:
    lag0 = jnp.zeros((b, h, p, n), jnp.float32)
    ring0 = (jnp.zeros((r, b, h), jnp.float32),
             jnp.zeros((r, b, h, p), jnp.float32),
             jnp.zeros((r, b, h, n), jnp.float32))
  cs0 = (jnp.zeros((n_chunks, b, h, p, n), jnp.float32)
         if return_chunk_states else None)
  tm = lambda v: jnp.moveaxis(v, 1, 0)
  xs = (jnp.arange(t), tm(a), tm(u), tm(Bh), tm(Ch))
  (state, lag, ring, chunk_states), y = jax.lax.scan(
      step, (state0, lag0, ring0, cs0), xs)
  final = state
  if r is not None:
    final = state - jnp.exp(jnp.sum(ring[0], axis=0))[:, :, None, None] * lag
  y = jnp.moveaxis(y, 0, 1).astype(out_dtype)
  if return_chunk_states:
    return y, final, jnp.moveaxis(chunk_states, 0, 1)
  return y, final


def _form(impl):
  """The form that ``impl`` picks: the sequential reference or the chunked
  XLA form (there is no Pallas kernel for this op)."""
  impl = resolve_impl(impl, op="ssd")
  return ssd_reference if impl is Impl.REFERENCE else ssd_chunked


def ssd(
    x: Float[Array, "b t h p"],
    dt: Float[Array, "b t h"],
    A: Float[Array, "h"],
    B: Float[Array, "b t g n"],
    C: Float[Array, "b t g n"],
    *,
    chunk_size: int = 64,
    initial_state: Float[Array, "b h p n"] | None = None,
    window: int | None = None,
    impl: Impl | str = Impl.AUTO,
) -> tuple[Float[Array, "b t h p"], Float[Array, "b h p n"]]:
  """SSD scan ``(y, final_state)``; see the module docstring.

  ``impl``: ``Impl.REFERENCE`` (sequential scan) or the XLA chunked form
  (AUTO); there is no Pallas kernel for this op (asking for one raises a
  ValueError). For ``state_norm`` call ``ssd_reference`` directly: it has no
  chunked form. ``ssd_chunk_states`` also returns the chunk states.
  """
  return _form(impl)(x, dt, A, B, C, chunk_size=chunk_size,
                     initial_state=initial_state, window=window)


def ssd_chunk_states(
    x: Float[Array, "b t h p"],
    dt: Float[Array, "b t h"],
    A: Float[Array, "h"],
    B: Float[Array, "b t g n"],
    C: Float[Array, "b t g n"],
    *,
    chunk_size: int = 64,
    initial_state: Float[Array, "b h p n"] | None = None,
    window: int | None = None,
    impl: Impl | str = Impl.AUTO,
) -> tuple[Float[Array, "b t h p"], Float[Array, "b h p n"],
           Float[Array, "b c h p n"]]:
  """``ssd`` that also returns the (windowed) state after the last token of
  every chunk: ``(y, final_state, chunk_states [b, ceil(t / chunk_size), h,
  p, n])``, for state-collapse diagnostics. Arguments as ``ssd``.
  """
  return _form(impl)(x, dt, A, B, C, chunk_size=chunk_size,
                     initial_state=initial_state, window=window,
                     return_chunk_states=True)


def _segsum(a):
  """``M[..., i, j] = sum_{j < u <= i} a_u`` for ``i >= j``, else ``-inf``.

  Summed directly (a cumsum of masked copies) rather than as a difference of
  prefix sums, so no cancellation: every ``a_u`` has the same sign.
  """
  t = a.shape[-1]
  lead = a.ndim - 1
  z = jnp.broadcast_to(a[..., :, None], a.shape + (t,))   # z[u, j] = a_u
  # Keep u > j.
  z = jnp.where(common.lower_triangle(t, strict=True, lead=lead), z, 0.0)
  M = jnp.cumsum(z, axis=-2)
  return jnp.where(common.lower_triangle(t, lead=lead), M, -jnp.inf)


def _chunk_ends(t, Q):
  return [min((c + 1) * Q, t) - 1 for c in range(-(-t // Q))]


def ssd_quadratic(
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
  """The masked-attention ("dual") form, ``O(t^2)`` time and memory.

  ``y = (L o C B^T)(dt x) + exp(cumsum(dt A)) C h_0`` with the segment sums of
  ``L`` computed stably (``_segsum``); a window ``r`` is the band mask
  ``t - r < s <= t``. A test and benchmark form, not an ``Impl``. Arguments
  and returns as ``ssd_reference``; ``chunk_size`` only places the chunk
  states.
  """
  b, t, h, p, g, n = common.check_args(x, dt, A, B, C, chunk_size,
                                       initial_state, window)
  common.reject_state_norm(state_norm, "ssd_quadratic")
  out_dtype = x.dtype
  x, dt, A, B, C, initial_state = common.as_float32(x, dt, A, B, C,
                                                    initial_state)
  k = h // g
  a = jnp.moveaxis(dt * A[None, None, :], 1, 2)            # [b, h, t]
  M = _segsum(a)                                           # [b, h, t, s]
  if window is not None:
    i = jax.lax.broadcasted_iota(jnp.int32, (t, t), 0)
    j = jax.lax.broadcasted_iota(jnp.int32, (t, t), 1)
    M = jnp.where((i - j < int(window))[None, None], M, -jnp.inf)
  L = jnp.exp(M).reshape(b, g, k, t, t)
  CB = jnp.einsum("bign,bjgn->bgij", C, B, precision=_HI)
  u = (dt[..., None] * x).reshape(b, t, g, k, p)
  y = jnp.einsum("bgkij,bjgkp->bigkp", CB[:, :, None] * L, u, precision=_HI)
  y = y.reshape(b, t, h, p)
  cum = jnp.cumsum(a, axis=-1)                             # [b, h, t]
  if initial_state is not None:
    y0 = jnp.einsum("bign,bgkpn->bigkp", C,
                    initial_state.reshape(b, g, k, p, n), precision=_HI)
    y = y + jnp.moveaxis(jnp.exp(cum), 1, 2)[..., None] * y0.reshape(b, t, h, p)
  ends = _chunk_ends(t, int(chunk_size))
  if not return_chunk_states:
    ends = ends[-1:]
  W = jnp.exp(M[:, :, jnp.asarray(ends), :])               # [b, h, e, s]
  states = jnp.einsum("bhes,bshp,bshn->behpn", W, u.reshape(b, t, h, p),
                      common.per_head(B, h), precision=_HI)
  if initial_state is not None:
    dec = jnp.exp(cum[:, :, jnp.asarray(ends)])            # [b, h, e]
    states = states + (jnp.moveaxis(dec, 1, 2)[..., None, None] *
                       initial_state[:, None])
  y = y.astype(out_dtype)
  if return_chunk_states:
    return y, states[:, -1], states
  return y, states[:, -1]

