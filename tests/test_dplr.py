"""S4 DPLR kernel (kernels/dplr.py) vs the explicit C Abar^l Bbar reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import dplr, hippo
from numerics import rel_err

D, N = 3, 16  # channels, full state size
N2 = N // 2


def _params(rng, kind="legs", rank=1, dtype=jnp.complex64, channels=()):
  """(Lambda, P, B, C, log_dt): HiPPO-LegS NPLR (+ random C) or random P/B/C."""
  nplr = hippo.legs_nplr(N, rank, dtype=np.complex128)
  Lam = np.tile(nplr.Lambda, (D, 1))
  cn = lambda *s: rng.normal(size=s) + 1j * rng.normal(size=s)
  if kind == "legs":
    P = np.tile(nplr.P[:, None], (1, D, 1))
    B = np.tile(nplr.B, (D, 1))
  else:  # random P, B; perturbed Lambda (A stays dissipative for any P)
    Lam = (-0.5 * np.exp(0.3 * rng.normal(size=(D, N2)))
           + 1j * Lam.imag * np.exp(0.1 * rng.normal(size=(D, N2))))
    P = 0.5 * cn(rank, D, N2)
    B = cn(D, N2)
  C = cn(*channels, D, N2)
  log_dt = np.log(np.geomspace(1e-3, 1e-1, D))
  rdt = jnp.finfo(dtype).dtype
  return (jnp.asarray(Lam, dtype), jnp.asarray(P, dtype), jnp.asarray(B, dtype),
          jnp.asarray(C, dtype), jnp.asarray(log_dt, rdt))


def _tilde(Lam, P, B, C, log_dt, L):
  Abar, _ = dplr.dplr_bilinear(Lam, P, B, log_dt)
  return dplr.c_tilde_from_c(C, Abar, L)


@pytest.mark.parametrize("L", [16, 64, 256, 100, 7])
@pytest.mark.parametrize("kind", ["legs", "random"])
def test_kernel_matches_reference(rng, L, kind):
  Lam, P, B, C, log_dt = _params(rng, kind)
  K_ref = dplr.dplr_kernel_reference(Lam, P, B, C, log_dt, L)
  Ct = _tilde(Lam, P, B, C, log_dt, L)
  K = dplr.dplr_kernel(Lam, P, B, Ct, log_dt, L)
  assert K.shape == (D, L) and K.dtype == jnp.float32
  assert rel_err(K, K_ref) < 1e-4


def test_kernel_float64(rng):
  with jax.enable_x64(True):
    Lam, P, B, C, log_dt = _params(rng, "random", dtype=jnp.complex128)
    L = 64
    K = dplr.dplr_kernel(Lam, P, B, _tilde(Lam, P, B, C, log_dt, L), log_dt, L)
    assert K.dtype == jnp.float64
    assert rel_err(K, dplr.dplr_kernel_reference(Lam, P, B, C, log_dt,
                                                 L)) < 1e-10


@pytest.mark.parametrize("rank", [1, 2])
def test_kernel_rank_and_channels(rng, rank):
  """General-rank Woodbury solve and a leading C channel axis (bidirectional)."""
  Lam, P, B, C, log_dt = _params(rng, "random", rank=rank, channels=(2,))
  L = 32
  K_ref = dplr.dplr_kernel_reference(Lam, P, B, C, log_dt, L)
  K = dplr.dplr_kernel(Lam, P, B, _tilde(Lam, P, B, C, log_dt, L), log_dt, L)
  assert K.shape == (2, D, L)
  assert rel_err(K, K_ref) < 1e-4


def test_kernel_pallas_interpret(rng):
  L = 20  # 10 nodes and D = 3 channels, padded to the (2, 8) tiles
  Lam, P, B, C, log_dt = _params(rng, "random")
  Ct = _tilde(Lam, P, B, C, log_dt, L)
  K_ref = dplr.dplr_kernel_reference(Lam, P, B, C, log_dt, L)
  from kernels.cauchy import BlockSizes
  fn = lambda *a: dplr.dplr_kernel(*a, L, impl="pallas_interpret",
                                   block_sizes=BlockSizes(2, 8))
  assert rel_err(jax.jit(fn)(Lam, P, B, Ct, log_dt), K_ref) < 1e-4
  ct = jnp.asarray(rng.normal(size=(D, L)), jnp.float32)
  g = jax.jit(jax.grad(lambda *a: jnp.sum(ct * fn(*a)),
                       argnums=(0, 1, 2, 3, 4)))(Lam, P, B, Ct, log_dt)
  g_xla = jax.grad(lambda *a: jnp.sum(ct * dplr.dplr_kernel(*a, L, impl="xla")),
                   argnums=(0, 1, 2, 3, 4))(Lam, P, B, Ct, log_dt)
  for a, b in zip(g, g_xla):
    assert rel_err(a, b) < 1e-4


def test_impl_reference_path(rng):
  Lam, P, B, C, log_dt = _params(rng, "legs")
  L = 24
  Ct = _tilde(Lam, P, B, C, log_dt, L)
  K_ref = dplr.dplr_kernel_reference(Lam, P, B, C, log_dt, L)
  assert rel_err(dplr.dplr_kernel(Lam, P, B, Ct, log_dt, L, impl="reference"),
              K_ref) < 1e-4


@pytest.mark.parametrize("L", [16, 100])
@pytest.mark.parametrize("kind", ["legs", "random"])
def test_gradients_match_reference(rng, L, kind):
  """Grad of a random-cotangent loss w.r.t. Lambda, P, B, C~, log_dt.

  The reference (dense recurrence, C = C~ (I - Abar^L)^{-1}) runs in float64.
  """
  params = _params(rng, kind)
  ct = rng.normal(size=(D, L))
  Lam, P, B, C, log_dt = params
  Ct = _tilde(Lam, P, B, C, log_dt, L)
  args32 = (Lam, P, B, Ct, log_dt)
  g = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.asarray(ct, jnp.float32)
                                          * dplr.dplr_kernel(*a, L)),
                       argnums=(0, 1, 2, 3, 4)))(*args32)

  with jax.enable_x64(True):
    args64 = tuple(jnp.asarray(np.asarray(x), jnp.complex128
                               if jnp.iscomplexobj(x) else jnp.float64)
                   for x in args32)

    def ref_loss(Lam, P, B, Ct, log_dt):
      Abar, _ = dplr.dplr_bilinear(Lam, P, B, log_dt)
      C = dplr.c_from_c_tilde(Ct, Abar, L)
      return jnp.sum(jnp.asarray(ct) * dplr.dplr_kernel_reference(
          Lam, P, B, C, log_dt, L))

    g_ref = jax.jit(jax.grad(ref_loss, argnums=(0, 1, 2, 3, 4)))(*args64)
    g_ref = [np.asarray(x) for x in g_ref]
  for name, a, b in zip(("Lambda", "P", "B", "C~", "log_dt"), g, g_ref):
    assert a.shape == b.shape, name
    err = rel_err(a, b)
    assert err < 2e-3, (name, err)


def test_c_tilde_round_trip(rng):
  Lam, P, B, C, log_dt = _params(rng, "random", channels=(2,))
  Abar, _ = dplr.dplr_bilinear(Lam, P, B, log_dt)
  Ct = dplr.c_tilde_from_c(C, Abar, 32)
  assert Ct.shape == C.shape
  assert rel_err(dplr.c_from_c_tilde(Ct, Abar, 32), C) < 1e-4


@pytest.mark.parametrize("L_new", [100, 256, 40])  # longer, longer, shorter
def test_c_tilde_for_length(rng, L_new):
  Lam, P, B, C, log_dt = _params(rng, "legs")
  L_old = 64
  Ct_old = _tilde(Lam, P, B, C, log_dt, L_old)
  Ct_new = dplr.c_tilde_for_length(Ct_old, Lam, P, log_dt, L_old, L_new)
  K = dplr.dplr_kernel(Lam, P, B, Ct_new, log_dt, L_new)
  K_ref = dplr.dplr_kernel_reference(Lam, P, B, C, log_dt, L_new)
  assert rel_err(K, K_ref) < 1e-4


def test_abar_power_is_repeated_squaring(rng):
  Lam, P, B, C, log_dt = _params(rng, "random")
  Abar, _ = dplr.dplr_bilinear(Lam, P, B, log_dt)
  naive = Abar
  for _ in range(12):
    naive = jnp.einsum("dpq,dqr->dpr", naive, Abar)
  assert rel_err(dplr._power(Abar, 13), naive) < 1e-5


@pytest.mark.parametrize("real", [True, False])
def test_decode_reproduces_kernel(rng, real):
  """Impulse response of the recurrence = kernel; a random input = causal conv."""
  Lam, P, B, C, log_dt = _params(rng, "legs")
  L = 48
  Ct = _tilde(Lam, P, B, C, log_dt, L)
  K = np.asarray(dplr.dplr_kernel(Lam, P, B, Ct, log_dt, L), np.float64)
  Abar, Bbar, Cd = dplr.dplr_discrete(Lam, P, B, Ct, log_dt, L, real=real)
  assert Abar.shape == (D, N, N) and Bbar.shape == (D, N) and Cd.shape == (D, N)
  if real:
    assert not jnp.iscomplexobj(Abar) and not jnp.iscomplexobj(Cd)

  def run(u):  # u [L, D]
    def step(x, u_k):
      x = jnp.einsum("dpq,dq->dp", Abar, x) + Bbar * u_k[:, None]
      return x, jnp.real(jnp.sum(Cd * x, axis=-1))
    x0 = jnp.zeros((D, N), Abar.dtype)
    return np.asarray(jax.lax.scan(step, x0, u)[1])  # [L, D]

  impulse = np.zeros((L, D), np.float32)
  impulse[0] = 1
  y = run(jnp.asarray(impulse))
  assert rel_err(y.T, K) < 1e-4
  u = rng.normal(size=(L, D))
  y = run(jnp.asarray(u, jnp.float32))
  y_conv = np.stack([[np.dot(K[d, :t + 1][::-1], u[:t + 1, d]) for d in range(D)]
                     for t in range(L)])
  assert rel_err(y, y_conv) < 1e-4


@pytest.mark.shape_errors
def test_shape_errors(rng):
  Lam, P, B, C, log_dt = _params(rng)
  with pytest.raises(ValueError, match="P.shape"):
    dplr.dplr_kernel(Lam, P[0], B, C, log_dt, 8)
  with pytest.raises(ValueError, match="log_dt.shape"):
    dplr.dplr_kernel(Lam, P, B, C, log_dt[:2], 8)
  with pytest.raises(ValueError, match="L=0"):
    dplr.dplr_kernel(Lam, P, B, C, log_dt, 0)
