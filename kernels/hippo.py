"""HiPPO-LegS matrices, their normal-plus-low-rank (NPLR) form, and S4D inits.

Legend (shapes use the kernels/ notation):
  N      full (real) state size; ``n2 = N // 2`` complex modes are stored.
  r      rank of the low-rank correction (1 for LegS).
  A, B   HiPPO-LegS transition ``[N, N]`` and input ``[N]`` (real).
  P      rank correction ``[r, N]`` (real) such that ``A + P^T P`` is normal.
  V      ``[N, n2]`` unitary eigenvectors of ``A + P^T P`` for the kept half.
  Lambda ``[n2]`` eigenvalues of ``A + P^T P`` (the diagonal of the DPLR form).

HiPPO-LegS (Gu et al. 2020, "HiPPO"; S4 paper eq. (2)):
  A[n, k] = -sqrt(2n+1) sqrt(2k+1)  if n > k,  -(n+1) if n == k,  0 if n < k,
  B[n]    = sqrt(2n+1).
With ``P[n] = sqrt(n + 1/2)``, ``A + P P^T = S - I/2`` with ``S`` skew-symmetric
(S4 paper, Thm. 1), so it is unitarily diagonalisable with eigenvalues
``-1/2 + i mu``. They come in conjugate pairs; we keep one of each pair.

Convention (documented choice): we keep the eigenvalues with ``Im > 0`` sorted
by increasing imaginary part. The official code (state-spaces/s4,
``src/models/hippo/hippo.py::nplr``) keeps the ``Im < 0`` half; the two are the
same real SSM after conjugating ``(Lambda, P, B, C)`` together, which is what
every kernel here assumes (the conjugate half is always added back).

Reconstruction of the real matrices from the stored half, with
``V_full = [V, conj(V)]``, ``Lambda_full = [Lambda, conj(Lambda)]`` and
``P_full = [P, conj(P)]`` (eigenbasis, ``[r, N]``):
  A = V_full (diag(Lambda_full) - P_full^T conj(P_full)) V_full^*,
  B = V_full [B_eig, conj(B_eig)]   (= 2 Re(V B_eig)).

S4D initialisations (Gu et al. 2022, "On the Parameterization and
Initialization of Diagonal State Space Models"), same ``Im >= 0`` convention:
  S4D-Lin : Lambda_n = -1/2 + i pi n,
  S4D-Inv : Lambda_n = -1/2 + i (N/pi) (N/(2n+1) - 1),
  S4D-LegS: Lambda of the NPLR form of LegS, with its (eigenbasis) B.
Everything is computed in float64 numpy and cast at the end.
"""
from typing import NamedTuple

import numpy as np


def legs_transition(N: int) -> tuple[np.ndarray, np.ndarray]:
  """HiPPO-LegS transition ``A [N, N]`` and input ``B [N]`` (float64)."""
  if N < 1:
    raise ValueError(f"{N=} must be positive")
  q = np.arange(N, dtype=np.float64)
  r = np.sqrt(2 * q + 1)
  A = -np.tril(r[:, None] * r[None, :], k=-1) - np.diag(q + 1)
  return A, r.copy()


def legs_rank_correction(N: int, rank: int = 1) -> np.ndarray:
  """Low-rank ``P [rank, N]`` with ``A + P^T P`` normal; rows past 1 are zero."""
  if rank < 1:
    raise ValueError(f"{rank=} must be >= 1 for LegS")
  P = np.zeros((rank, N), dtype=np.float64)
  P[0] = np.sqrt(np.arange(N, dtype=np.float64) + 0.5)
  return P


class NPLR(NamedTuple):
  """Normal-plus-low-rank form of a HiPPO matrix (stored half, eigenbasis).

  Attributes:
    Lambda: ``[n2]`` complex eigenvalues (``Im > 0``, increasing).
    P: ``[r, n2]`` complex low-rank factor ``V^* P``.
    B: ``[n2]`` complex input ``V^* B``.
    V: ``[N, n2]`` complex eigenvectors.
  """
  Lambda: np.ndarray
  P: np.ndarray
  B: np.ndarray
  V: np.ndarray


def legs_nplr(N: int, rank: int = 1, *, dtype=np.complex64,
              b_clip: float | None = 2.0) -> NPLR:
  """NPLR form of HiPPO-LegS: ``A = V (Lambda - P P^*) V^*`` (+ conjugate half).

  Args:
    N: full real state size (even).
    rank: rank of the correction (extra rows are zero, as in the official code).
    dtype: complex output dtype.
    b_clip: if given, clip ``Im(B)`` to ``[-b_clip, b_clip]``. The default
      ``2.0`` is the official S4 init (``hippo.nplr(..., B_clip=2.0)``; the raw
      ``Im(V^* B)`` reaches ~40 at N=64); ``None`` keeps the exact ``V^* B`` so
      that ``B = 2 Re(V B_eig)`` reconstructs.

  Returns:
    ``NPLR(Lambda [n2], P [rank, n2], B [n2], V [N, n2])``.
  """
  if N < 2 or N % 2:
    raise ValueError(f"{N=} must be a positive even number")
  A, B = legs_transition(N)
  P = legs_rank_correction(N, rank)
  AP = A + P.T @ P
  skew = 0.5 * (AP - AP.T)
  diag = np.diag(AP)
  if not np.allclose(AP + AP.T, np.diag(2 * diag), atol=1e-8):
    raise AssertionError("A + P^T P is not skew-symmetric plus diagonal")
  if not np.allclose(diag, diag.mean(), atol=1e-8):
    raise AssertionError("A + P^T P does not have a constant diagonal")
  # -i S is Hermitian: eigh gives real mu and unitary V with S = V (i mu) V^*.
  mu, V = np.linalg.eigh(-1j * skew)
  order = np.argsort(mu)
  mu, V = mu[order], V[:, order]
  keep = slice(N // 2, N)  # the Im > 0 half, increasing
  mu, V = mu[keep], V[:, keep]
  if np.any(mu <= 1e-8):
    raise AssertionError(f"zero eigenvalue in LegS NPLR for {N=}: {mu.min()=}")
  Lambda = diag.mean() + 1j * mu
  Vh = V.conj().T
  P_eig = P.astype(np.complex128) @ Vh.T  # [r, n2] = (V^* P_r)_r
  B_eig = Vh @ B.astype(np.complex128)
  if b_clip is not None:
    B_eig = B_eig.real + 1j * np.clip(B_eig.imag, -b_clip, b_clip)
  cdtype = np.dtype(dtype)
  return NPLR(Lambda.astype(cdtype), P_eig.astype(cdtype),
              B_eig.astype(cdtype), V.astype(cdtype))


def nplr_dense(Lambda: np.ndarray, P: np.ndarray, V: np.ndarray) -> np.ndarray:
  """Rebuilds the real ``[N, N]`` matrix from a stored NPLR half (float64)."""
  Vf = np.concatenate([V, V.conj()], axis=-1)
  Lf = np.concatenate([Lambda, Lambda.conj()], axis=-1)
  Pf = np.concatenate([P, P.conj()], axis=-1)
  M = np.diag(Lf) - Pf.T @ Pf.conj()
  return Vf @ M @ Vf.conj().T


def s4d_lin(N: int, *, dtype=np.complex64) -> np.ndarray:
  """S4D-Lin diagonal ``Lambda [n2]``: ``-1/2 + i pi n``."""
  n = np.arange(N // 2, dtype=np.float64)
  return (-0.5 + 1j * np.pi * n).astype(dtype)


def s4d_inv(N: int, *, dtype=np.complex64) -> np.ndarray:
  """S4D-Inv diagonal ``Lambda [n2]``: ``-1/2 + i (N/pi)(N/(2n+1) - 1)``."""
  n = np.arange(N // 2, dtype=np.float64)
  return (-0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1)).astype(dtype)


def s4d_legs(N: int, *, dtype=np.complex64,
             b_clip: float | None = 2.0) -> tuple[np.ndarray, np.ndarray]:
  """S4D-LegS: ``(Lambda [n2], B [n2])`` from the LegS NPLR form (P dropped).

  As in the official code the real part is the NPLR's (exactly -1/2) and B is
  the eigenbasis LegS B with ``Im(B)`` clipped to ``b_clip`` (official 2.0).
  """
  nplr = legs_nplr(N, 1, dtype=np.complex128, b_clip=b_clip)
  return nplr.Lambda.astype(dtype), nplr.B.astype(dtype)


def s4d_init(init: str, N: int, *, dtype=np.complex64) -> tuple[np.ndarray, np.ndarray]:
  """``(Lambda [n2], B [n2])`` for ``init`` in ``("lin", "inv", "legs")``.

  For "lin"/"inv" B is all ones (official ``B_init="constant"``).
  """
  if init == "legs":
    return s4d_legs(N, dtype=dtype)
  if init == "lin":
    Lambda = s4d_lin(N, dtype=dtype)
  elif init == "inv":
    Lambda = s4d_inv(N, dtype=dtype)
  else:
    raise ValueError(f"{init=} is not one of ('lin', 'inv', 'legs')")
  return Lambda, np.ones(N // 2, dtype=dtype)
