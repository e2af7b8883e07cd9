"""Argument checks and small helpers shared by the SSD forms (ssd.py,
ssd_chunked.py); see kernels/ssd.py for the op and its notation."""
import jax
import jax.numpy as jnp


def check_args(x, dt, A, B, C, chunk_size, initial_state, window):
  """Validates shapes and options; returns ``(b, t, h, p, g, n)``."""
  if x.ndim != 4:
    raise ValueError(f"x must be [b, t, h, p]; got {x.shape=}")
  b, t, h, p = x.shape
  if dt.shape != (b, t, h):
    raise ValueError(f"dt must be [b, t, h] = {(b, t, h)}; got {dt.shape=}")
  if A.shape != (h,):
    raise ValueError(f"A must be [h] = {(h,)}; got {A.shape=}")
  if B.ndim != 4 or B.shape[:2] != (b, t):
    raise ValueError(f"B must be [b, t, g, n] with b={b}, t={t}; got {B.shape=}")
  if C.shape != B.shape:
    raise ValueError(f"C must have B's shape {B.shape}; got {C.shape=}")
  g, n = B.shape[2:]
  if g < 1 or h % g:
    raise ValueError(f"heads h={h} must be a multiple of groups g={g}")
  if initial_state is not None and initial_state.shape != (b, h, p, n):
    raise ValueError(f"initial_state must be [b, h, p, n] = {(b, h, p, n)}; "
                     f"got {initial_state.shape=}")
  if int(chunk_size) < 1:
    raise ValueError(f"{chunk_size=} must be >= 1")
  if window is not None:
    if int(window) < 1:
      raise ValueError(f"{window=} must be >= 1")
    if initial_state is not None:
      raise ValueError(
          f"{window=} needs initial_state=None (the window restarts the "
          f"recurrence from zero r tokens back); got an initial_state of shape "
          f"{initial_state.shape}")
  return b, t, h, p, g, n



def as_float32(*arrays):
  return tuple(None if a is None else jnp.asarray(a, jnp.float32)
               for a in arrays)



def per_head(M, h):
  """[b, t, g, n] -> [b, t, h, n]: head i reads group i // (h // g)."""
  return jnp.repeat(M, h // M.shape[2], axis=2)



def lower_triangle(t, *, strict=False, lead=0):
  """Lower-triangular bool mask ``[1]*lead + [t, t]`` (``i >= j``)."""
  i = jax.lax.broadcasted_iota(jnp.int32, (t, t), 0)
  j = jax.lax.broadcasted_iota(jnp.int32, (t, t), 1)
  m = i > j if strict else i >= j
  return m.reshape((1,) * lead + (t, t))



def reject_state_norm(state_norm, name):
  if state_norm is not None:
    raise ValueError(
        f"{name} does not support {state_norm=}: the rescaling is a nonlinear "
        "function of the state, so the state is no longer a linear "
        "combination of the inputs with data-independent decay products, "
        "which this form relies on; use ssd_reference")
