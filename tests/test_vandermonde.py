"""S4D Vandermonde kernel: the blocked XLA form against the explicit powers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import Impl
from kernels.vandermonde import (discretize_diag, s4d_kernel,
                                 s4d_kernel_reference, s4d_kernel_xla)
from numerics import rel_err


def _params(seed, d=4, n2=8):
  rng = np.random.default_rng(seed)
  # S4D-Lin-like modes with some spread in the real parts.
  re = -rng.uniform(0.1, 1.0, (d, n2))
  im = np.pi * np.arange(n2)[None, :] + rng.normal(0, 0.3, (d, n2))
  A = jnp.asarray(re + 1j * im, jnp.complex64)
  B = jnp.asarray(rng.normal(size=(d, n2)) + 1j * rng.normal(size=(d, n2)),
                  jnp.complex64)
  C = jnp.asarray(rng.normal(size=(d, n2)) + 1j * rng.normal(size=(d, n2)),
                  jnp.complex64)
  log_dt = jnp.asarray(rng.uniform(np.log(1e-3), np.log(1e-1), d), jnp.float32)
  return A, B, C, log_dt


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("L", [1, 2, 7, 64, 100, 257])
def test_values_and_grads_vs_reference(discretization, L):
  args = _params(L)
  f_fast = lambda *a: s4d_kernel(*a, L, discretization=discretization)
  f_ref = lambda *a: s4d_kernel_reference(*a, L, discretization=discretization)
  k_fast, vjp_fast = jax.vjp(f_fast, *args)
  k_ref, vjp_ref = jax.vjp(f_ref, *args)
  assert k_fast.shape == (4, L) and k_fast.dtype == jnp.float32
  assert rel_err(k_fast, k_ref) < 2e-5
  ct = jnp.asarray(np.random.default_rng(1).normal(size=k_ref.shape),
                   jnp.float32)
  for name, g_fast, g_ref in zip("A B C log_dt".split(), vjp_fast(ct),
                                 vjp_ref(ct)):
    assert g_fast.dtype == g_ref.dtype, name
    assert rel_err(g_fast, g_ref) < 1e-4, (name, rel_err(g_fast, g_ref))


def test_reference_is_the_equation():
  """Spot-check the reference against an independent float64 NumPy sum."""
  A, B, C, log_dt = _params(3, d=2, n2=3)
  L = 9
  dt = np.exp(np.asarray(log_dt, np.float64))[:, None]
  A64, B64, C64 = (np.asarray(x, np.complex128) for x in (A, B, C))
  for disc in ("zoh", "bilinear"):
    if disc == "zoh":
      Ab, Bb = np.exp(dt * A64), (np.exp(dt * A64) - 1) / A64 * B64
    else:
      Ab = (1 + dt * A64 / 2) / (1 - dt * A64 / 2)
      Bb = dt * B64 / (1 - dt * A64 / 2)
    want = np.stack(
        [2 * np.sum(C64 * Bb * Ab**l, -1).real for l in range(L)], -1)
    got = s4d_kernel(A, B, C, log_dt, L, discretization=disc,
                     impl=Impl.REFERENCE)
    assert rel_err(got, want) < 1e-5


def test_long_kernel_matches_float64_and_is_jittable():
  """L = 2000 (not a square, not a power of two) against a float64 sum."""
  A, B, C, log_dt = _params(5, d=2, n2=4)
  L = 2000
  k = jax.jit(s4d_kernel_xla, static_argnums=4)(A, B, C, log_dt, L)
  Ab, Bb, _ = discretize_diag(A, B, log_dt)
  l = np.arange(L)
  logA = np.log(np.asarray(Ab, np.complex128))
  want = 2 * np.einsum("dn,dnl->dl", np.asarray(C * Bb, np.complex128),
                       np.exp(logA[..., None] * l)).real
  assert rel_err(k, want) < 1e-4


@pytest.mark.shape_errors
def test_rejects_bad_shapes():
  A, B, C, log_dt = _params(0)
  with pytest.raises(ValueError, match="log_dt.shape"):
    s4d_kernel(A, B, C, log_dt[:2], 8)
  with pytest.raises(ValueError, match="discretization"):
    s4d_kernel(A, B, C, log_dt, 8, discretization="euler")
