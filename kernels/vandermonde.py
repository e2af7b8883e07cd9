"""S4D convolution kernel: a Vandermonde product of a diagonal SSM.

Gu, Gupta, Goel, Re, "On the Parameterization and Initialization of Diagonal
State Space Models" (S4D, NeurIPS 2022), eqs. (4)-(6). For a diagonal continuous
SSM x' = A x + B u, y = C x with complex ``A, B, C`` of half state size ``n/2``
(the other half are the complex conjugates, hence the ``2 Re``), the discrete
convolution kernel is

  K_l = 2 Re( sum_n C_n Bbar_n Abar_n^l ),   l = 0 .. L-1,

with the discretisation of step ``dt = exp(log_dt)``:

  zoh:      Abar = exp(dt A),                    Bbar = (exp(dt A) - 1) / A * B
  bilinear: Abar = (1 + dt A / 2) / (1 - dt A / 2), Bbar = dt B / (1 - dt A / 2)

Shapes: ``d`` channels (independent SSMs), ``n2 = n/2`` complex modes, ``L``
kernel length.
"""
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

from kernels import Impl, register_op, resolve_impl

register_op("s4d_kernel")

DISCRETIZATIONS = ("zoh", "bilinear")


def discretize_diag(
    A: Complex[Array, "d n2"],
    B: Complex[Array, "d n2"],
    log_dt: Float[Array, "d"],
    *,
    discretization: str = "zoh",
) -> tuple[Complex[Array, "d n2"], Complex[Array, "d n2"], Complex[Array, "d n2"]]:
  """Discrete diagonal SSM.

  Returns:
    ``(Abar, Bbar, log_Abar)``: the discrete state matrix (diagonal), input
    matrix, and a logarithm of ``Abar`` (any branch: only integer powers
    ``exp(l * log_Abar) = Abar^l`` are used).
  """
  if discretization not in DISCRETIZATIONS:
    raise ValueError(f"{discretization=} is not one of {DISCRETIZATIONS}")
  A = jnp.asarray(A, jnp.complex64)
  B = jnp.asarray(B, jnp.complex64)
  dt = jnp.exp(jnp.asarray(log_dt, jnp.float32))[:, None]
  dtA = dt * A
  if discretization == "zoh":
    Abar = jnp.exp(dtA)
    Bbar = (Abar - 1.0) / A * B
    log_Abar = dtA
  else:
    denom = 1.0 - dtA / 2
    Abar = (1.0 + dtA / 2) / denom
    Bbar = dt * B / denom
    log_Abar = jnp.log(Abar)
  return Abar, Bbar, log_Abar


def _check_shapes(A, B, C, log_dt, L):
  if A.ndim != 2 or B.shape != A.shape or C.shape != A.shape:
    raise ValueError(
        f"A, B, C must all be [d, n2]; got {A.shape=} {B.shape=} {C.shape=}")
  if log_dt.shape != A.shape[:1]:
    raise ValueError(f"{log_dt.shape=} must be [d] with d={A.shape[0]}")
  if int(L) < 1:
    raise ValueError(f"{L=} must be >= 1")


def s4d_kernel_reference(
    A: Complex[Array, "d n2"],
    B: Complex[Array, "d n2"],
    C: Complex[Array, "d n2"],
    log_dt: Float[Array, "d"],
    L: int,
    *,
    discretization: str = "zoh",
) -> Float[Array, "d L"]:
  """K_l = 2 Re(sum_n C_n Bbar_n Abar_n^l), powers by repeated multiplication."""
  _check_shapes(A, B, C, log_dt, L)
  Abar, Bbar, _ = discretize_diag(A, B, log_dt, discretization=discretization)
  CB = jnp.asarray(C, jnp.complex64) * Bbar

  def step(power, _):
    k_l = 2 * jnp.sum(CB * power, axis=-1).real
    return power * Abar, k_l

  _, K = jax.lax.scan(step, jnp.ones_like(Abar), None, length=int(L))
  return K.T


def _block_size(L: int) -> int:
  """Inner block ``m`` of the split ``l = a m + j``; about sqrt(L)."""
  return max(1, math.isqrt(L - 1) + 1) if L > 1 else 1


def s4d_kernel_xla(
    A: Complex[Array, "d n2"],
    B: Complex[Array, "d n2"],
    C: Complex[Array, "d n2"],
    log_dt: Float[Array, "d"],
    L: int,
    *,
    discretization: str = "zoh",
) -> Float[Array, "d L"]:
  """Blocked Vandermonde product; O(d n sqrt(L)) exponentials, one matmul.

  Writing ``l = a m + j`` (``0 <= j < m``, ``0 <= a < ceil(L / m)``),

    K_{a m + j} = 2 Re sum_n [C_n Bbar_n Abar_n^{a m}] [Abar_n^j]
                = 2 (Re U @ Re W - Im U @ Im W)[a, j],

  a real batched matmul ``[d, L/m, 2 n2] x [d, 2 n2, m]``. Powers are exact
  exponentials of ``l * log(Abar)`` (no error accumulates with ``l``), and
  nothing of size ``d n L`` is materialised. ``L`` need not be a multiple
  (or square) of anything: the last block is computed whole and cut.
  """
  _check_shapes(A, B, C, log_dt, L)
  L = int(L)
  _, Bbar, log_Abar = discretize_diag(
      A, B, log_dt, discretization=discretization)
  CB = jnp.asarray(C, jnp.complex64) * Bbar
  m = _block_size(L)
  n_blocks = -(-L // m)
  inner = jnp.exp(
      log_Abar[:, :, None] * jnp.arange(m, dtype=jnp.float32)[None, None, :])
  outer_exp = log_Abar[:, None, :] * (
      m * jnp.arange(n_blocks, dtype=jnp.float32))[None, :, None]
  outer = CB[:, None, :] * jnp.exp(outer_exp)  # [d, n_blocks, n2]
  lhs = jnp.concatenate([outer.real, -outer.imag], axis=-1)
  rhs = jnp.concatenate([inner.real, inner.imag], axis=-2)
  K = 2 * jnp.einsum("dan,dnj->daj", lhs, rhs,
                     precision=jax.lax.Precision.HIGHEST)
  return K.reshape(K.shape[0], n_blocks * m)[:, :L]


def s4d_kernel(
    A: Complex[Array, "d n2"],
    B: Complex[Array, "d n2"],
    C: Complex[Array, "d n2"],
    log_dt: Float[Array, "d"],
    L: int,
    *,
    discretization: str = "zoh",
    impl: Impl | str = Impl.AUTO,
) -> Float[Array, "d L"]:
  """S4D convolution kernel ``K [d, L]`` (float32).

  Args:
    A: diagonal of the continuous state matrix (Re < 0), complex ``[d, n2]``.
    B: input matrix ``[d, n2]``.
    C: output matrix ``[d, n2]``.
    log_dt: log step size ``[d]``.
    L: kernel length (static int).
    discretization: ``"zoh"`` or ``"bilinear"``.
    impl: ``Impl.REFERENCE`` (scan of powers) or the XLA form (AUTO); there is
      no Pallas kernel for this op, so asking for one raises a ValueError.
  """
  impl = resolve_impl(impl, op="s4d_kernel")
  if impl is Impl.REFERENCE:
    return s4d_kernel_reference(A, B, C, log_dt, L,
                                discretization=discretization)
  return s4d_kernel_xla(A, B, C, log_dt, L, discretization=discretization)
