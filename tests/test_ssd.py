"""Mamba-2 SSD: chunked and quadratic forms against the sequential reference.

Values and gradients (random cotangents on every output) are compared with
the relative error of the difference against the reference's scale; the
reference itself, the window (state difference) and the state clipping are
checked against brute-force numpy recurrences written here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import Impl
from kernels.ssd import ssd, ssd_quadratic, ssd_reference
from kernels.ssd_chunked import ssd_chunked
from numerics import rel_err

FORMS = {"chunked": ssd_chunked, "quadratic": ssd_quadratic}


def _inputs(seed, b=2, t=24, h=4, p=3, g=1, n=5, init=False):
  rng = np.random.default_rng(seed)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  x = f32(rng.normal(size=(b, t, h, p)))
  dt = f32(np.log1p(np.exp(rng.normal(size=(b, t, h)) - 1.0)))  # softplus
  A = f32(-rng.uniform(0.3, 2.0, size=h))
  B = f32(rng.normal(size=(b, t, g, n)))
  C = f32(rng.normal(size=(b, t, g, n)))
  h0 = f32(rng.normal(size=(b, h, p, n))) if init else None
  return x, dt, A, B, C, h0


def _numpy_states(x, dt, A, B, C, h0=None, tau=None):
  """All states h_t [t, b, h, p, n] and outputs y [b, t, h, p] of the
  recurrence, token by token in float64 (tau: clip to Frobenius norm)."""
  x, dt, A, B, C = (np.asarray(v, np.float64) for v in (x, dt, A, B, C))
  b, t, h, p = x.shape
  g, n = B.shape[2:]
  Bh, Ch = np.repeat(B, h // g, axis=2), np.repeat(C, h // g, axis=2)
  state = np.zeros((b, h, p, n)) if h0 is None else np.asarray(h0, np.float64)
  states, ys = [], []
  for i in range(t):
    state = (np.exp(dt[:, i] * A)[:, :, None, None] * state +
             (dt[:, i, :, None] * x[:, i])[..., None] * Bh[:, i, :, None, :])
    if tau is not None:
      norm = np.sqrt(np.sum(state ** 2, axis=(-2, -1), keepdims=True))
      state = state * np.minimum(1.0, tau / np.maximum(norm, 1e-300))
    states.append(state)
    ys.append(np.einsum("bhpn,bhn->bhp", state, Ch[:, i]))
  return np.stack(states), np.stack(ys, axis=1)


def _numpy_window(x, dt, A, B, C, r):
  """Brute force: every output from a recurrence restarted r tokens back."""
  t = x.shape[1]
  ys, states = [], []
  for i in range(t):
    lo = max(0, i - r + 1)
    st, y = _numpy_states(x[:, lo:i + 1], dt[:, lo:i + 1], A,
                          B[:, lo:i + 1], C[:, lo:i + 1])
    ys.append(y[:, -1])
    states.append(st[-1])
  return np.stack(states), np.stack(ys, axis=1)


def _chunk_ends(t, Q):
  return [min((c + 1) * Q, t) - 1 for c in range(-(-t // Q))]


def test_reference_is_the_recurrence():
  x, dt, A, B, C, h0 = _inputs(0, t=13, h=4, g=2, init=True)
  states, y_np = _numpy_states(x, dt, A, B, C, h0)
  y, final, cs = ssd_reference(x, dt, A, B, C, initial_state=h0,
                               chunk_size=5, return_chunk_states=True)
  assert y.shape == x.shape and final.shape == h0.shape
  assert cs.shape == (2, 3, 4, 3, 5)
  assert rel_err(y, y_np) < 1e-5
  assert rel_err(final, states[-1]) < 1e-5
  assert rel_err(cs, np.moveaxis(states[_chunk_ends(13, 5)], 0, 1)) < 1e-5


def _compare(form, args, kw, tol_y=1e-5, tol_g=2e-5):
  """Values and VJPs of every output of ``form`` vs the reference."""
  x, dt, A, B, C, h0 = args
  diff = (x, dt, A, B, C) + (() if h0 is None else (h0,))

  def run(f):
    def fn(*a):
      init = a[5] if len(a) > 5 else None
      return f(*a[:5], initial_state=init, **kw)
    return fn

  out, vjp = jax.vjp(jax.jit(run(form)), *diff)
  out_ref, vjp_ref = jax.vjp(jax.jit(run(ssd_reference)), *diff)
  assert len(out) == len(out_ref)
  for o, r in zip(out, out_ref):
    assert o.shape == r.shape and o.dtype == r.dtype
    assert rel_err(o, r) < tol_y, (rel_err(o, r), o.shape)
  rng = np.random.default_rng(1)
  cts = tuple(jnp.asarray(rng.normal(size=o.shape), jnp.float32) for o in out)
  names = ["x", "dt", "A", "B", "C", "initial_state"]
  for name, gf, gr in zip(names, vjp(cts), vjp_ref(cts)):
    assert gf.shape == gr.shape
    assert rel_err(gf, gr) < tol_g, (name, rel_err(gf, gr))


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("t,Q,g,init", [
    (24, 8, 1, False),   # Q divides t
    (24, 8, 2, True),    # groups, initial state
    (23, 8, 1, True),    # Q does not divide t
    (23, 5, 2, False),
    (7, 16, 1, True),    # one partial chunk
    (16, 1, 2, False),   # chunk of one token
])
def test_forms_match_reference(form, t, Q, g, init):
  args = _inputs(t * 10 + Q + g, t=t, g=g, init=init)
  # Both output paths: with and without the per-chunk states.
  _compare(FORMS[form], args, dict(chunk_size=Q, return_chunk_states=init))


@pytest.mark.parametrize("window", [None, 70])
def test_chunked_at_the_default_chunk_size(window):
  # Q = 64 as in the layer and the benchmark: the in-chunk cumulative sums
  # (a product with a triangular matrix), the chunk recurrence over
  # several chunks and a partial one, and the backward's gradient of the
  # decays (the j-side terms gathered into u . du), with groups.
  args = _inputs(5, b=1, t=200, h=4, p=3, g=2, n=4,
                 init=window is None)
  _compare(ssd_chunked, args, dict(chunk_size=64, window=window,
                                   return_chunk_states=True))


@pytest.mark.parametrize("r", [1, 3, 8, 19, 23, 40])
def test_window_is_a_restart_r_tokens_back(r):
  """r = 1, < Q, = Q, k Q + m (19 = 2*8 + 3), = t, > t."""
  t, Q = 23, 8
  x, dt, A, B, C, _ = _inputs(r, t=t, g=2)
  states, y_np = _numpy_window(x, dt, A, B, C, r)
  cs_np = np.moveaxis(states[_chunk_ends(t, Q)], 0, 1)
  for f in (ssd_reference, ssd_quadratic, ssd_chunked):
    y, final, cs = jax.jit(lambda *a: f(*a, chunk_size=Q, window=r,
                                        return_chunk_states=True))(
                                            x, dt, A, B, C)
    assert rel_err(y, y_np) < 1e-5, f.__name__
    assert rel_err(final, states[-1]) < 1e-5, f.__name__
    assert rel_err(cs, cs_np) < 1e-5, f.__name__


@pytest.mark.parametrize("r", [2, 11])
def test_window_gradients(r):
  args = _inputs(100 + r, t=21, g=2)
  for form in FORMS.values():
    _compare(form, args, dict(chunk_size=4 if r == 11 else 8, window=r,
                              return_chunk_states=True))


def test_window_long_decay_is_accurate():
  """log P_t is summed per chunk, not as a difference of global prefix sums:
  a long sequence with large cumulative decay keeps windowed outputs exact."""
  x, dt, A, B, C, _ = _inputs(5, b=1, t=300, h=2, g=1)
  dt = dt * 3.0   # cumulative log decay reaches about -1000
  r = 37
  states, y_np = _numpy_window(x[:, -80:], dt[:, -80:], A, B[:, -80:],
                               C[:, -80:], r)
  y, final = jax.jit(lambda *a: ssd_chunked(*a, chunk_size=16, window=r))(
      x, dt, A, B, C)
  # Tokens >= r from the start of the slice see only tokens inside it.
  assert rel_err(y[:, -80 + r:], y_np[:, r:]) < 1e-5
  assert rel_err(final, states[-1]) < 1e-5


def test_state_norm_clips_and_matches_numpy():
  x, dt, A, B, C, h0 = _inputs(7, t=30, g=2, init=True)
  tau = 1.5
  states, y_np = _numpy_states(x, dt, A, B, C, h0, tau=tau)
  y, final, cs = ssd_reference(x, dt, A, B, C, initial_state=h0,
                               state_norm=tau, chunk_size=8,
                               return_chunk_states=True)
  assert rel_err(y, y_np) < 1e-5
  assert rel_err(final, states[-1]) < 1e-5
  norms = np.sqrt(np.sum(np.asarray(cs) ** 2, axis=(-2, -1)))
  assert norms.max() <= tau * (1 + 1e-5)
  assert np.sqrt(np.sum(np.asarray(final) ** 2, axis=(-2, -1))).max() <= (
      tau * (1 + 1e-5))
  # The clip is active somewhere (otherwise this test checks nothing).
  plain = np.sqrt(np.sum(states_plain(x, dt, A, B, C, h0) ** 2, (-2, -1)))
  assert plain.max() > 2 * tau
  grads = jax.grad(lambda *a: jnp.sum(ssd_reference(
      *a, initial_state=h0, state_norm=tau)[0]), argnums=(0, 1, 2, 3, 4))(
          x, dt, A, B, C)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def states_plain(x, dt, A, B, C, h0):
  return _numpy_states(x, dt, A, B, C, h0)[0]


def test_state_norm_huge_tau_is_plain():
  x, dt, A, B, C, h0 = _inputs(8, t=20, init=True)
  out = ssd_reference(x, dt, A, B, C, initial_state=h0, state_norm=1e15)
  ref = ssd_reference(x, dt, A, B, C, initial_state=h0)
  for o, r in zip(out, ref):
    np.testing.assert_array_equal(o, r)


def test_dispatcher_and_dtypes():
  x, dt, A, B, C, h0 = _inputs(9, t=20, g=2, init=True)
  y_ref, s_ref = ssd(x, dt, A, B, C, initial_state=h0, chunk_size=8,
                     impl="reference")
  for impl in (Impl.AUTO, Impl.XLA, "xla"):
    y, s = jax.jit(lambda *a: ssd(*a, initial_state=h0, chunk_size=8,
                                  impl=impl))(x, dt, A, B, C)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
  with pytest.raises(ValueError, match="Pallas"):
    ssd(x, dt, A, B, C, impl="pallas")
  with pytest.raises(ValueError, match="impl"):
    ssd(x, dt, A, B, C, impl="cuda")
  # bfloat16 in -> bfloat16 out, float32 inside; states stay float32.
  y16, s16 = ssd(x.astype(jnp.bfloat16), dt, A, B.astype(jnp.bfloat16),
                 C.astype(jnp.bfloat16), chunk_size=8)
  assert y16.dtype == jnp.bfloat16 and s16.dtype == jnp.float32
  y32, _ = ssd(x.astype(jnp.bfloat16).astype(jnp.float32), dt, A,
               B.astype(jnp.bfloat16).astype(jnp.float32),
               C.astype(jnp.bfloat16).astype(jnp.float32), chunk_size=8)
  assert rel_err(y16.astype(jnp.float32), y32) < 1e-2


@pytest.mark.shape_errors
def test_errors_name_the_values():
  x, dt, A, B, C, h0 = _inputs(10, t=12, h=4, g=2, init=True)
  for f in (ssd_reference, ssd_quadratic, ssd_chunked):
    with pytest.raises(ValueError, match=r"dt.shape=\(2, 11, 4\)"):
      f(x, dt[:, :11], A, B, C)
    with pytest.raises(ValueError, match=r"A.shape=\(3,\)"):
      f(x, dt, A[:3], B, C)
    with pytest.raises(ValueError, match="h=4 must be a multiple of groups g=3"):
      f(x, dt, A, jnp.zeros((2, 12, 3, 5)), jnp.zeros((2, 12, 3, 5)))
    with pytest.raises(ValueError, match=r"C.shape=\(2, 12, 2, 6\)"):
      f(x, dt, A, B, jnp.zeros((2, 12, 2, 6)))
    with pytest.raises(ValueError, match=r"initial_state.shape=\(2, 4, 3, 4\)"):
      f(x, dt, A, B, C, initial_state=h0[..., :4])
    with pytest.raises(ValueError, match="window=3.*initial_state"):
      f(x, dt, A, B, C, window=3, initial_state=h0)
    with pytest.raises(ValueError, match="window=0"):
      f(x, dt, A, B, C, window=0)
    with pytest.raises(ValueError, match="chunk_size=0"):
      f(x, dt, A, B, C, chunk_size=0)
  for f in (ssd_quadratic, ssd_chunked):
    with pytest.raises(ValueError, match="state_norm=1.0.*nonlinear"):
      f(x, dt, A, B, C, state_norm=1.0)
  with pytest.raises(ValueError, match="state_norm=0"):
    ssd_reference(x, dt, A, B, C, state_norm=0)
  with pytest.raises(ValueError, match="cannot be combined"):
    ssd_reference(x, dt, A, B, C, state_norm=1.0, window=2)
