"""Cauchy product (kernels/cauchy.py): XLA and Pallas vs the reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import Impl
from kernels import cauchy as cl
from numerics import rel_err

RTOL = {jnp.complex64: 2e-5, jnp.complex128: 1e-12}


def _c(rng, *shape, dtype=jnp.complex64):
  return jnp.asarray(rng.normal(size=shape) + 1j * rng.normal(size=shape), dtype)


def _problem(rng, vb=(2,), wb=(4,), n=8, l=16, dtype=jnp.complex64):
  v = _c(rng, *vb, *wb, n, dtype=dtype)
  w = _c(rng, *wb, n, dtype=dtype) - 1.5  # stable-ish poles, Re(w) < 0 mostly
  # S4's nodes are on the imaginary axis; add a real part so conj terms differ.
  z = jnp.asarray(0.3 + 1j * 4 * rng.normal(size=l), dtype)
  ct = _c(rng, *vb, *wb, l, dtype=dtype)
  return v, z, w, ct


def _check(fn, v, z, w, ct, conj, rtol):
  """Values and gradients (v, z, w) of a random-cotangent real loss."""
  ref = cl.cauchy_reference(v, z, w, conj=conj)
  out = jax.jit(fn)(v, z, w)
  assert out.shape == ref.shape and out.dtype == ref.dtype
  assert rel_err(out, ref) < rtol

  def loss(f):
    return lambda v, z, w: jnp.sum(jnp.real(jnp.conj(ct) * f(v, z, w)))

  g_ref = jax.grad(loss(lambda v, z, w: cl.cauchy_reference(v, z, w, conj=conj)),
                   argnums=(0, 1, 2))(v, z, w)
  g = jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))(v, z, w)
  for name, a, b in zip("vzw", g, g_ref):
    assert a.shape == b.shape, name
    assert rel_err(a, b) < rtol, (name, rel_err(a, b))


def test_reference_matches_numpy_loop(rng):
  v, z, w, _ = _problem(rng, vb=(), wb=(2,), n=3, l=4)
  v, z, w = (np.asarray(x, np.complex128) for x in (v, z, w))
  out = np.asarray(cl.cauchy_reference(jnp.asarray(v), jnp.asarray(z),
                                       jnp.asarray(w), conj=True))
  for m in range(2):
    for l in range(4):
      want = sum(v[m, k] / (z[l] - w[m, k])
                 + np.conj(v[m, k]) / (z[l] - np.conj(w[m, k]))
                 for k in range(3))
      assert abs(out[m, l] - want) < 1e-4 * abs(want)


@pytest.mark.parametrize("conj", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 4, 5, 64])  # divides l, does not, > l
def test_xla_matches_reference(rng, conj, chunk_size):
  v, z, w, ct = _problem(rng)
  fn = lambda v, z, w: cl.cauchy_xla(v, z, w, conj=conj, chunk_size=chunk_size)
  _check(fn, v, z, w, ct, conj, RTOL[jnp.complex64])


def test_xla_float64(rng):
  with jax.enable_x64(True):
    v, z, w, ct = _problem(rng, dtype=jnp.complex128)
    fn = lambda v, z, w: cl.cauchy_xla(v, z, w, conj=True, chunk_size=5)
    _check(fn, v, z, w, ct, True, RTOL[jnp.complex128])


def test_batch_shapes(rng):
  """Several numerators share denominators; several pole batch dims."""
  v, z, w, ct = _problem(rng, vb=(2, 3), wb=(2, 2), n=4, l=8)
  for impl in ("xla", "pallas_interpret"):
    fn = lambda v, z, w: cl.cauchy(v, z, w, conj=True, impl=impl,
                                   block_sizes=cl.BlockSizes(2, 8))
    _check(fn, v, z, w, ct, True, RTOL[jnp.complex64])


def test_dispatcher(rng):
  v, z, w, _ = _problem(rng)
  ref = cl.cauchy_reference(v, z, w, conj=True)
  for impl in (Impl.AUTO, "reference", "xla"):
    assert rel_err(cl.cauchy(v, z, w, conj=True, impl=impl), ref) < 2e-5
  with pytest.raises(ValueError, match="impl='bogus'"):
    cl.cauchy(v, z, w, impl="bogus")


@pytest.mark.shape_errors
def test_shape_errors(rng):
  v, z, w, _ = _problem(rng)
  with pytest.raises(ValueError, match="must equal"):
    cl.cauchy_xla(v[..., :3], z, w)
  with pytest.raises(ValueError, match="z.shape"):
    cl.cauchy_xla(v, z[None], w)


class TestCauchyPallas:
  """Native Pallas (GPU/TPU); the Interpret subclass reruns it on CPU."""
  interpret = False

  @pytest.fixture(autouse=True)
  def _needs_hardware(self):
    if not self.interpret and jax.default_backend() not in ("gpu", "cuda", "tpu"):
      pytest.skip("native Pallas needs a GPU or TPU")

  @pytest.mark.parametrize("conj", [False, True])
  @pytest.mark.parametrize("blocks", [(2, 8), (8, 128)])  # tiled; clamped to (4, 16)
  def test_matches_reference(self, rng, conj, blocks):
    v, z, w, ct = _problem(rng)
    fn = lambda v, z, w: cl.cauchy_pallas(
        v, z, w, conj=conj, interpret=self.interpret,
        block_sizes=cl.BlockSizes(*blocks))
    _check(fn, v, z, w, ct, conj, RTOL[jnp.complex64])

  def test_non_power_of_two_sizes(self, rng):
    """Numerator batch 3 and n = 6 are padded to powers of two inside."""
    v, z, w, ct = _problem(rng, vb=(3,), wb=(2,), n=6, l=8)
    fn = lambda v, z, w: cl.cauchy_pallas(
        v, z, w, conj=True, interpret=self.interpret,
        block_sizes=cl.BlockSizes(2, 8))
    _check(fn, v, z, w, ct, True, RTOL[jnp.complex64])

  def test_rejects_untileable(self, rng):
    v, z, w, _ = _problem(rng, wb=(6,), l=12)
    with pytest.raises(ValueError, match=r"l=12 is not a multiple of bl=8"):
      cl.cauchy_pallas(v, z, w, interpret=self.interpret,
                       block_sizes=cl.BlockSizes(2, 8))
    with pytest.raises(ValueError, match=r"m=6 is not a multiple of bm=4"):
      cl.cauchy_pallas(v, z, w, interpret=self.interpret,
                       block_sizes=cl.BlockSizes(4, 4))


class TestCauchyPallasInterpret(TestCauchyPallas):
  interpret = True
