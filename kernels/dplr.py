"""S4 convolution kernel for diagonal-plus-low-rank (DPLR) state matrices.

Gu, Goel & Re, "Efficiently Modeling Long Sequences with Structured State
Spaces" (ICLR 2022), Algorithm 1 and Appendix C.3; conventions follow the
official state-spaces/s4 ``SSMKernelDPLR`` (``src/models/sequence/kernels/ssm.py``).

Legend (kernels/ notation; ``n2 = N/2`` stored modes, ``N`` the real state size):
  d        channels (one SSM per channel, ``d_model``); ``c`` optional
           leading output channels of C (e.g. 2 for a bidirectional layer).
  r        rank of the low-rank term.
  Lambda   ``[d, n2]`` complex diagonal part (one of each conjugate pair).
  P        ``[r, d, n2]`` complex low-rank factor, ``Q = conj(P)``.
  B        ``[d, n2]`` complex input vector.
  C        ``[*c, d, n2]`` complex output vector; ``C_tilde = C (I - Abar^L)``.
  log_dt   ``[d]`` real, ``dt = exp(log_dt)``.
  L        kernel length; ``K`` is ``[*c, d, L]`` real.

The real SSM. Only half of each conjugate pair is stored; the state matrix is
the full ``N x N`` complex matrix (``^*`` is the conjugate transpose)
  A = diag([Lambda, conj(Lambda)]) - P_f P_f^*,   P_f = [P, conj(P)]  ([N, r]),
  B_f = [B, conj(B)],   C_f = [C, conj(C)],
which commutes with the pair swap + conjugation, so ``(A, B_f, C_f)`` is a real
SSM written in a complex basis: for a real input the state stays
``x_f = [x, conj(x)]`` and ``y = C_f x_f = 2 Re(C x)`` is real.

Bilinear discretisation (every DPLR path here; S4 eq. (3)):
  Abar = (I - dt/2 A)^{-1} (I + dt/2 A),   Bbar = (I - dt/2 A)^{-1} dt B_f.
Kernel: ``K[l] = C_f Abar^l Bbar`` for ``l < L``; recurrence
``x_k = Abar x_{k-1} + Bbar u_k``, ``y_k = C_f x_k`` gives ``y = K * u``.

Fast algorithm (``dplr_kernel``). With ``omega_k = exp(-2 pi i k / L)`` (the
rfft frequencies ``k = 0..L//2``) the truncated generating function is
  Khat(omega) = sum_{l<L} K[l] omega^l = C~_f (I - omega Abar)^{-1} Bbar
              = 2/(1+omega) * C~_f (z - dt A)^{-1} dt B_f,
  z = 2 (1 - omega)/(1 + omega)         (the dt-scaled nodes, as official),
and ``(z - dt A)^{-1}`` is the resolvent of a diagonal plus rank-r matrix:
Woodbury with ``R = (z - dt Lambda)^{-1}`` gives
  Khat = 2/(1+omega) [k00 - k01 (I + k11)^{-1} k10],
  k00 = C~ R B dt,  k01 = C~ R P dt,  k10 = Q R B dt,  k11 = Q R P dt,
each a Cauchy product ``cauchy(v, z, dt Lambda, conj=True)`` with
numerators ``v = {B, P} x {C~, Q} * dt``, all sharing one set of denominators.
At the Nyquist node (``omega = -1``, even L) ``z`` is infinite; there
``(I + Abar)^{-1} Bbar = dt B_f / 2`` exactly, so ``Khat = dt Re(sum C~ B)``.
``K = irfft(Khat, L)``.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from kernels import Impl, register_op, resolve_impl
from kernels import cauchy as cauchy_lib

register_op("dplr_kernel", pallas="cauchy")


def _conj_pair(x):
  """``[..., n2] -> [..., N]``: appends the conjugate half."""
  return jnp.concatenate([x, jnp.conj(x)], axis=-1)


def _cdtype(*xs):
  """Common complex dtype (at least complex64) of the arguments."""
  return jnp.result_type(*[x.dtype for x in xs], jnp.complex64)


def _check_shapes(Lambda, P, B, C, log_dt):
  """Raises a ValueError naming the shapes unless they follow the legend."""
  if Lambda.ndim != 2:
    raise ValueError(f"{Lambda.shape=} must be [d, n2]")
  d, n2 = Lambda.shape
  if P.ndim != 3 or P.shape[1:] != (d, n2):
    raise ValueError(f"{P.shape=} must be [r, d, n2] with {(d, n2)=}")
  if B.shape != (d, n2):
    raise ValueError(f"{B.shape=} must equal {Lambda.shape=}")
  if C is not None and (C.ndim < 2 or C.shape[-2:] != (d, n2)):
    raise ValueError(f"{C.shape=} must be [*c, d, n2] with {(d, n2)=}")
  if log_dt.shape != (d,):
    raise ValueError(f"{log_dt.shape=} must be [d] with {d=}")


def dplr_dense_state_matrix(Lambda: Complex[Array, "d n2"],
                            P: Complex[Array, "r d n2"]) -> Complex[Array, "d N N"]:
  """Full complex ``A = diag([L, conj L]) - P_f P_f^*``: ``[d, N, N]``.

  Args:
    Lambda: ``[d, n2]``.
    P: ``[r, d, n2]``.
  """
  Lf = _conj_pair(Lambda)  # [d, N]
  Pf = _conj_pair(P)  # [r, d, N]
  low_rank = jnp.einsum("rdp,rdq->dpq", Pf, jnp.conj(Pf))
  N = Lf.shape[-1]
  return Lf[:, :, None] * jnp.eye(N, dtype=Lf.dtype)[None] - low_rank


def dplr_bilinear(
    Lambda: Complex[Array, "d n2"], P: Complex[Array, "r d n2"],
    B: Complex[Array, "d n2"], log_dt: Float[Array, "d"],
) -> tuple[Complex[Array, "d N N"], Complex[Array, "d N"]]:
  """Bilinear discretisation of the full complex SSM.

  Args:
    Lambda: ``[d, n2]``; P: ``[r, d, n2]``; B: ``[d, n2]``; log_dt: ``[d]``.

  Returns:
    ``(Abar [d, N, N], Bbar [d, N])`` complex, full (both conjugate halves):
    ``Abar = (I - dt/2 A)^{-1}(I + dt/2 A)``, ``Bbar = (I - dt/2 A)^{-1} dt B_f``.
  """
  _check_shapes(Lambda, P, B, None, log_dt)
  cdt = _cdtype(Lambda, P, B)
  A = dplr_dense_state_matrix(Lambda.astype(cdt), P.astype(cdt))
  dt = jnp.exp(log_dt).astype(cdt)[:, None, None]
  eye = jnp.eye(A.shape[-1], dtype=cdt)[None]
  back = eye - dt / 2 * A
  fwd = eye + dt / 2 * A
  Abar = jnp.linalg.solve(back, fwd)
  Bbar = jnp.linalg.solve(back, (dt[:, :, 0] * _conj_pair(B.astype(cdt)))[..., None])[..., 0]
  return Abar, Bbar


def _full_to_real(M):
  """Real form ``U^{-1} M U`` of a conjugate-symmetric full ``M [..., N, N]``.

  ``M = [[M11, M12], [conj M12, conj M11]]`` acts on ``x_f = [x, conj x]``;
  in the basis ``s = [Re x, Im x]`` (``x_f = U s``) it is the real matrix
  ``[[Re(M11+M12), Im(M12-M11)], [Im(M11+M12), Re(M11-M12)]]``.
  """
  n2 = M.shape[-1] // 2
  M11, M12 = M[..., :n2, :n2], M[..., :n2, n2:]
  plus, minus = M11 + M12, M11 - M12
  top = jnp.concatenate([jnp.real(plus), -jnp.imag(minus)], axis=-1)
  bottom = jnp.concatenate([jnp.imag(plus), jnp.real(minus)], axis=-1)
  return jnp.concatenate([top, bottom], axis=-2)


def _real_to_full(R, cdtype):
  """Inverse of ``_full_to_real``."""
  n2 = R.shape[-1] // 2
  R11, R12 = R[..., :n2, :n2], R[..., :n2, n2:]
  R21, R22 = R[..., n2:, :n2], R[..., n2:, n2:]
  M11 = jax.lax.complex(R11 + R22, R21 - R12).astype(cdtype) / 2
  M12 = jax.lax.complex(R11 - R22, R21 + R12).astype(cdtype) / 2
  top = jnp.concatenate([M11, M12], axis=-1)
  bottom = jnp.concatenate([jnp.conj(M12), jnp.conj(M11)], axis=-1)
  return jnp.concatenate([top, bottom], axis=-2)


def _power(Abar, L):
  """``Abar^L`` by repeated squaring (``L`` a static int >= 0).

  Squares the real form (a real ``N x N`` matmul costs a quarter of a complex
  one), which is exact because ``Abar`` is conjugate-symmetric.
  """
  if L < 0:
    raise ValueError(f"{L=} must be >= 0")
  R = jnp.linalg.matrix_power(_full_to_real(Abar), int(L))
  return _real_to_full(R, Abar.dtype)


def _row_times(Cf, M):
  """``C_f M`` for ``Cf [*c, d, N]`` and ``M [d, N, N]``."""
  return jnp.einsum("...dp,dpq->...dq", Cf, M)


def c_tilde_from_c(C: Complex[Array, "*c d n2"], Abar: Complex[Array, "d N N"],
                   L: int) -> Complex[Array, "*c d n2"]:
  """``C~ = C (I - Abar^L)`` in the stored half.

  Args:
    C: ``[*c, d, n2]`` complex (stored half).
    Abar: ``[d, N, N]`` full complex discrete state matrix (``dplr_bilinear``).
    L: the length C~ is defined for.

  Returns:
    ``[*c, d, n2]``.
  """
  Cf = _conj_pair(C.astype(Abar.dtype))
  Ct = Cf - _row_times(Cf, _power(Abar, L))
  return Ct[..., : C.shape[-1]]


def c_from_c_tilde(C_tilde: Complex[Array, "*c d n2"],
                   Abar: Complex[Array, "d N N"], L: int) -> Complex[Array, "*c d n2"]:
  """Inverse of ``c_tilde_from_c``: ``C = C~ (I - Abar^L)^{-1}``.

  Args:
    C_tilde: ``[*c, d, n2]``; Abar: ``[d, N, N]`` full; L: C~'s length.

  Returns:
    ``[*c, d, n2]``.
  """
  Ctf = _conj_pair(C_tilde.astype(Abar.dtype))
  N = Abar.shape[-1]
  M = jnp.eye(N, dtype=Abar.dtype)[None] - _power(Abar, L)  # [d, N, N]
  # Row vector times M^{-1}: solve M^T x = C~^T per channel d.
  lead = Ctf.shape[:-2]
  rhs = jnp.moveaxis(Ctf.reshape(-1, *Ctf.shape[-2:]), 0, -1)  # [d, N, cc]
  Cf = jnp.linalg.solve(jnp.swapaxes(M, -1, -2), rhs)
  Cf = jnp.moveaxis(Cf, -1, 0).reshape(*lead, *Ctf.shape[-2:])
  return Cf[..., : C_tilde.shape[-1]]


def c_tilde_for_length(
    C_tilde: Complex[Array, "*c d n2"], Lambda: Complex[Array, "d n2"],
    P: Complex[Array, "r d n2"], log_dt: Float[Array, "d"], L_old: int,
    L_new: int) -> Complex[Array, "*c d n2"]:
  """Re-targets ``C~`` from length ``L_old`` to ``L_new``.

  ``C~_new = C~_old (I - Abar^L_old)^{-1} (I - Abar^L_new)``, so that
  ``dplr_kernel(..., C~_new, ..., L_new)`` is the length-``L_new`` kernel of the
  same SSM (official S4 only doubles: ``C~ (I + Abar^L)``; this is general).

  Args:
    C_tilde: ``[*c, d, n2]`` defined for ``L_old``.
    Lambda: ``[d, n2]``; P: ``[r, d, n2]``; log_dt: ``[d]``.
    L_old, L_new: static ints.

  Returns:
    ``[*c, d, n2]`` C~ for ``L_new``.
  """
  if L_old == L_new:
    return C_tilde
  Abar, _ = dplr_bilinear(Lambda, P, jnp.zeros_like(Lambda), log_dt)
  C = c_from_c_tilde(C_tilde, Abar, L_old)
  return c_tilde_from_c(C, Abar, L_new).astype(C_tilde.dtype)


def dplr_discrete(
    Lambda: Complex[Array, "d n2"], P: Complex[Array, "r d n2"],
    B: Complex[Array, "d n2"], C_tilde: Complex[Array, "*c d n2"],
    log_dt: Float[Array, "d"], L: int, *, real: bool = True,
) -> tuple[Array, Array, Array]:
  """Dense discrete SSM for step-by-step decoding, consistent with ``dplr_kernel``.

  ``x_k = Abar x_{k-1} + Bbar u_k``, ``y_k = C x_k`` (``x_{-1} = 0``) reproduces
  ``y = dplr_kernel(Lambda, P, B, C_tilde, log_dt, L) * u`` for ``k < L``.

  Args:
    Lambda: ``[d, n2]``; P: ``[r, d, n2]``; B: ``[d, n2]``;
    C_tilde: ``[*c, d, n2]`` defined for length ``L``; log_dt: ``[d]``.
    L: the length ``C_tilde`` is defined for.
    real: if True (default) return the real form in the basis
      ``s = [Re x, Im x]`` (``x`` the stored half of the state): all outputs
      real, state ``[..., d, N]`` real, ``y_k = sum_N C s_k`` exactly. If False
      return the full complex form (both conjugate halves): state
      ``x_f = [x, conj x]`` complex and ``y_k = Re(sum_N C x_f)``
      (``= 2 Re(C_half x)``; the imaginary part is rounding error).

  Returns:
    ``(Abar [d, N, N], Bbar [d, N], C [*c, d, N])``.
  """
  _check_shapes(Lambda, P, B, C_tilde, log_dt)
  Abar, Bbar = dplr_bilinear(Lambda, P, B, log_dt)
  C = c_from_c_tilde(C_tilde, Abar, L)
  Cf = _conj_pair(C)
  if not real:
    return Abar, Bbar, Cf
  n2 = Lambda.shape[-1]
  # x_f = U s with U = [[I, iI], [I, -iI]], s = [Re x, Im x] (see _full_to_real).
  Abar_r = _full_to_real(Abar)
  Bbar_r = jnp.concatenate([jnp.real(Bbar[:, :n2]), jnp.imag(Bbar[:, :n2])], -1)
  C_r = jnp.concatenate([2 * jnp.real(C), -2 * jnp.imag(C)], axis=-1)
  return Abar_r, Bbar_r, C_r


def dplr_kernel_reference(
    Lambda: Complex[Array, "d n2"], P: Complex[Array, "r d n2"],
    B: Complex[Array, "d n2"], C: Complex[Array, "*c d n2"],
    log_dt: Float[Array, "d"], L: int) -> Float[Array, "*c d L"]:
  """Explicit S4 kernel ``K[l] = C_f Abar^l Bbar`` (dense, a scan over l).

  Takes the TRUE C (not C~); see ``c_tilde_from_c``.

  Args:
    Lambda: ``[d, n2]``; P: ``[r, d, n2]``; B: ``[d, n2]``; C: ``[*c, d, n2]``;
    log_dt: ``[d]``; L: kernel length.

  Returns:
    ``K [*c, d, L]`` real.
  """
  _check_shapes(Lambda, P, B, C, log_dt)
  Abar, Bbar = dplr_bilinear(Lambda, P, B, log_dt)
  Cf = _conj_pair(C.astype(Abar.dtype))

  def step(x, _):
    y = jnp.einsum("...dn,dn->...d", Cf, x)  # [*c, d]
    return jnp.einsum("dpq,dq->dp", Abar, x), y

  _, ys = jax.lax.scan(step, Bbar, None, length=L)  # [L, *c, d]
  return jnp.moveaxis(jnp.real(ys), 0, -1).astype(jnp.real(Abar).dtype)


def _nodes(L):
  """Cauchy nodes ``z`` for rfft frequencies below Nyquist, and ``2/(1+omega)``."""
  nz = (L + 1) // 2  # k = 0 .. ceil(L/2)-1; the Nyquist bin is closed form
  k = np.arange(nz, dtype=np.float64)
  omega = np.exp(-2j * np.pi * k / L)
  z = 2 * (1 - omega) / (1 + omega)
  return z, 2 / (1 + omega)


def _pad_last(x, size, value):
  """Pads the last axis of x to ``size`` with ``value``."""
  pad = size - x.shape[-1]
  if pad == 0:
    return x
  widths = [(0, 0)] * (x.ndim - 1) + [(0, pad)]
  return jnp.pad(x, widths, constant_values=value)


def _cauchy_padded(v, z, w, impl, block_sizes):
  """Pads (d, l) to the Pallas tiles; padding nodes/poles are kept regular."""
  if impl not in (Impl.PALLAS, Impl.PALLAS_INTERPRET):
    return cauchy_lib.cauchy(v, z, w, conj=True, impl=impl)
  d, l = w.shape[0], z.shape[0]
  # Pad to whole tiles rather than clamping the tiles to (d, l), so the tiles
  # stay the (power-of-two) sizes the caller chose.
  bm, bl = block_sizes.block_m, block_sizes.block_l
  dp, lp = -(-d // bm) * bm, -(-l // bl) * bl
  # Padded nodes at z = 1 and poles at w = -1: |z - w| >= 1 since Re(dt Lambda) < 0.
  zp = _pad_last(z, lp, 1.0)
  wp = jnp.pad(w, ((0, dp - d), (0, 0)), constant_values=-1.0)
  vp = jnp.pad(v, [(0, 0)] * (v.ndim - 2) + [(0, dp - d), (0, 0)])
  r = cauchy_lib.cauchy(vp, zp, wp, conj=True, impl=impl,
                        block_sizes=cauchy_lib.BlockSizes(bm, bl))
  return r[..., :d, :l]


def dplr_kernel(
    Lambda: Complex[Array, "d n2"], P: Complex[Array, "r d n2"],
    B: Complex[Array, "d n2"], C_tilde: Complex[Array, "*c d n2"],
    log_dt: Float[Array, "d"], L: int, *, impl: Impl | str = Impl.AUTO,
    block_sizes: cauchy_lib.BlockSizes = cauchy_lib.BlockSizes(),
) -> Float[Array, "*c d L"]:
  """S4 DPLR convolution kernel (Cauchy + Woodbury + irfft).

  Args:
    Lambda: ``[d, n2]`` complex diagonal part.
    P: ``[r, d, n2]`` complex low-rank factor (``A = Lambda - P P^*``).
    B: ``[d, n2]`` complex.
    C_tilde: ``[*c, d, n2]`` complex, ``C (I - Abar^L)`` for this ``L``
      (see ``c_tilde_for_length`` to change L).
    log_dt: ``[d]`` real.
    L: kernel length (static int; any positive value, not only powers of 2).
    impl: Cauchy implementation (``REFERENCE`` runs the dense recurrence).
    block_sizes: Pallas tiles; d and the ``ceil(L/2)`` nodes are padded to them.

  Returns:
    ``K [*c, d, L]`` real, equal to ``dplr_kernel_reference`` with
    ``C = c_from_c_tilde(C_tilde, Abar, L)``.
  """
  _check_shapes(Lambda, P, B, C_tilde, log_dt)
  if L < 1:
    raise ValueError(f"{L=} must be positive")
  impl = resolve_impl(impl, op="dplr_kernel")
  if impl is Impl.REFERENCE:
    Abar, _ = dplr_bilinear(Lambda, P, B, log_dt)
    C = c_from_c_tilde(C_tilde, Abar, L)
    return dplr_kernel_reference(Lambda, P, B, C, log_dt, L)
  cdt = _cdtype(Lambda, P, B, C_tilde)
  rdt = jnp.finfo(cdt).dtype
  Lambda, P, B, C_tilde = (x.astype(cdt) for x in (Lambda, P, B, C_tilde))
  lead = C_tilde.shape[:-2]
  d, n2 = Lambda.shape
  r = P.shape[0]
  nc = math.prod(lead)
  dt = jnp.exp(log_dt.astype(rdt))  # [d]

  z_np, scale_np = _nodes(L)
  z = jnp.asarray(z_np, cdt)
  scale = jnp.asarray(scale_np, cdt)  # 2 / (1 + omega)
  w = dt.astype(cdt)[:, None] * Lambda  # [d, n2]
  Bs = jnp.concatenate([B[None], P], axis=0)  # [1+r, d, n2]
  Cs = jnp.concatenate([C_tilde.reshape(nc, d, n2), jnp.conj(P)], axis=0)  # [nc+r, d, n2]
  v = Bs[:, None] * (Cs * dt.astype(cdt)[None, :, None])[None]  # [1+r, nc+r, d, n2]
  res = _cauchy_padded(v, z, w, impl, block_sizes)  # [1+r, nc+r, d, nz]

  k00 = res[0, :nc]  # C~ R B      [nc, d, nz]
  k01 = res[1:, :nc]  # C~ R P_a   [r, nc, d, nz]
  k10 = res[0, nc:]  # Q_b R B     [r, d, nz]
  k11 = res[1:, nc:]  # Q_b R P_a  [a=r, b=r, d, nz]
  if r == 1:
    kf = k00 - k01[0] * k10[0][None] / (1 + k11[0, 0])[None]
  else:
    # M[b, a] = delta + Q_b R P_a;  y = M^{-1} k10 (indexed by a).
    M = jnp.eye(r, dtype=cdt)[:, :, None, None] + jnp.swapaxes(k11, 0, 1)
    M = jnp.moveaxis(M, (0, 1), (-2, -1))  # [d, nz, b, a]
    rhs = jnp.moveaxis(k10, 0, -1)[..., None]  # [d, nz, b, 1]
    y = jnp.linalg.solve(M, rhs)[..., 0]  # [d, nz, a]
    kf = k00 - jnp.einsum("acdz,dza->cdz", k01, y)
  kf = kf * scale[None, None, :]
  if L % 2 == 0:  # Nyquist bin: Khat(-1) = dt Re(sum_n C~ B).
    nyq = dt[None, :] * jnp.real(jnp.sum(C_tilde.reshape(nc, d, n2) * B[None], -1))
    kf = jnp.concatenate([kf, nyq.astype(cdt)[..., None]], axis=-1)
  K = jnp.fft.irfft(kf, n=L, axis=-1)  # [nc, d, L]
  return K.reshape(*lead, d, L).astype(rdt)
