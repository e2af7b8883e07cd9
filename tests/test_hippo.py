"""HiPPO-LegS, its NPLR form and the S4D inits (kernels/hippo.py)."""
import numpy as np
import pytest

from kernels import hippo


def test_legs_transition_matches_definition():
  A, B = hippo.legs_transition(4)
  s = np.sqrt(2 * np.arange(4) + 1)
  for n in range(4):
    for k in range(4):
      want = -s[n] * s[k] if n > k else (-(n + 1) if n == k else 0.0)
      assert A[n, k] == pytest.approx(want)
  np.testing.assert_allclose(B, s)


@pytest.mark.parametrize("N", [8, 64])
def test_rank_correction_makes_skew_plus_half(N):
  A, _ = hippo.legs_transition(N)
  P = hippo.legs_rank_correction(N)
  AP = A + P.T @ P
  S = AP + 0.5 * np.eye(N)
  np.testing.assert_allclose(S, -S.T, atol=1e-12)


@pytest.mark.parametrize("N", [8, 64])
@pytest.mark.parametrize("dtype,rtol", [(np.complex64, 1e-4), (np.complex128, 1e-10)])
def test_nplr_reconstructs_legs(N, dtype, rtol):
  A, B = hippo.legs_transition(N)
  nplr = hippo.legs_nplr(N, dtype=dtype, b_clip=None)
  assert nplr.Lambda.shape == (N // 2,) and nplr.P.shape == (1, N // 2)
  assert nplr.B.shape == (N // 2,) and nplr.V.shape == (N, N // 2)
  assert nplr.Lambda.dtype == dtype
  Lam, P, Bv, V = (x.astype(np.complex128) for x in nplr)
  A_rec = hippo.nplr_dense(Lam, P, V)
  scale = np.abs(A).max()
  assert np.abs(A_rec.imag).max() / scale < rtol
  assert np.abs(A_rec.real - A).max() / scale < rtol
  B_rec = 2 * (V @ Bv).real
  assert np.abs(B_rec - B).max() / np.abs(B).max() < rtol


@pytest.mark.parametrize("N", [8, 64])
def test_nplr_spectrum_and_basis(N):
  nplr = hippo.legs_nplr(N, dtype=np.complex128)
  np.testing.assert_allclose(nplr.Lambda.real, -0.5, atol=1e-10)
  assert np.all(nplr.Lambda.imag > 0)
  assert np.all(np.diff(nplr.Lambda.imag) > 0)  # documented order
  V = nplr.V
  np.testing.assert_allclose(V.conj().T @ V, np.eye(N // 2), atol=1e-10)
  np.testing.assert_allclose(V.T @ V, 0, atol=1e-10)  # orthogonal to conj half
  # P = V^* P_orig, and the eigenpairs hold: (A + P P^T) V = V diag(Lambda).
  A, _ = hippo.legs_transition(N)
  P0 = hippo.legs_rank_correction(N)
  np.testing.assert_allclose(nplr.P[0], V.conj().T @ P0[0], atol=1e-10)
  AP = A + P0.T @ P0
  np.testing.assert_allclose(AP @ V, V * nplr.Lambda[None], atol=1e-8 * N)


def test_nplr_b_clip_and_rank():
  raw = hippo.legs_nplr(64, b_clip=None, dtype=np.complex128)
  clipped = hippo.legs_nplr(64, dtype=np.complex128)  # official default 2.0
  assert np.abs(raw.B.imag).max() > 2.0
  assert np.abs(clipped.B.imag).max() <= 2.0 + 1e-12
  np.testing.assert_allclose(clipped.B.real, raw.B.real)
  r2 = hippo.legs_nplr(16, rank=2)
  assert r2.P.shape == (2, 8)
  np.testing.assert_allclose(r2.P[1], 0)


def test_s4d_inits():
  N = 16
  n = np.arange(N // 2)
  np.testing.assert_allclose(hippo.s4d_lin(N), -0.5 + 1j * np.pi * n, rtol=1e-6)
  np.testing.assert_allclose(
      hippo.s4d_inv(N), -0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1),
      rtol=1e-6)
  lam, b = hippo.s4d_legs(N, dtype=np.complex128)
  nplr = hippo.legs_nplr(N, dtype=np.complex128)
  np.testing.assert_allclose(lam, nplr.Lambda)
  np.testing.assert_allclose(b, nplr.B)
  for init in ("lin", "inv", "legs"):
    lam, b = hippo.s4d_init(init, N)
    assert lam.shape == b.shape == (N // 2,)
    assert np.all(lam.real < 0) and np.all(lam.imag >= 0)
  np.testing.assert_allclose(hippo.s4d_init("lin", N)[1], 1)


def test_errors_name_values():
  with pytest.raises(ValueError, match="N=7"):
    hippo.legs_nplr(7)
  with pytest.raises(ValueError, match="rank=0"):
    hippo.legs_nplr(8, rank=0)
  with pytest.raises(ValueError, match="init='foo'"):
    hippo.s4d_init("foo", 8)
