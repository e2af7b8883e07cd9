"""FFT convolution against the direct sum: values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import Impl
from kernels.fftconv import fft_size, fftconv, fftconv_reference
from numerics import rel_err


def _inputs(seed, b, t, d, t_k):
  rng = np.random.default_rng(seed)
  u = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(d, t_k)), jnp.float32)
  k_rev = jnp.asarray(rng.normal(size=(d, t_k)), jnp.float32)
  return u, k, k_rev


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("t,t_k", [(1, 1), (16, 16), (37, 37), (37, 10),
                                   (50, 64), (100, 1)])
def test_values_and_grads_vs_reference(bidirectional, t, t_k):
  u, k, k_rev = _inputs(t * 7 + t_k, 2, t, 3, t_k)
  args = (u, k, k_rev) if bidirectional else (u, k)

  def fast(u, k, k_rev=None):
    return fftconv(u, k, k_reverse=k_rev)

  def ref(u, k, k_rev=None):
    return fftconv_reference(u, k, k_reverse=k_rev)

  y, vjp_fast = jax.vjp(fast, *args)
  y_ref, vjp_ref = jax.vjp(ref, *args)
  assert y.shape == u.shape and y.dtype == u.dtype
  assert rel_err(y, y_ref) < 1e-5
  ct = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), jnp.float32)
  for g, g_ref in zip(vjp_fast(ct), vjp_ref(ct)):
    assert g.shape == g_ref.shape
    assert rel_err(g, g_ref) < 1e-5


def test_reference_convention_by_hand():
  """y_i = sum_s k_s u_{i-s} + sum_{s>=1} k_reverse_{s-1} u_{i+s}."""
  t = 5
  u = jnp.zeros((1, t, 1), jnp.float32).at[0, 2, 0].set(1.0)  # impulse at 2
  k = jnp.asarray([[1.0, 2.0, 3.0]])
  k_rev = jnp.asarray([[10.0, 20.0, 30.0]])
  for impl in (Impl.REFERENCE, Impl.XLA):
    y = fftconv(u, k, impl=impl)[0, :, 0]
    np.testing.assert_allclose(y, [0, 0, 1, 2, 3], atol=1e-5)
    y = fftconv(u, k, k_reverse=k_rev, impl=impl)[0, :, 0]
    np.testing.assert_allclose(y, [20, 10, 1, 2, 3], atol=1e-5)


def test_bfloat16_input_computes_in_float32():
  u, k, _ = _inputs(0, 2, 33, 4, 33)
  y = jax.jit(fftconv)(u.astype(jnp.bfloat16), k)
  assert y.dtype == jnp.bfloat16
  assert rel_err(y.astype(jnp.float32), fftconv_reference(u, k)) < 2e-2


def test_fft_size_is_smooth_and_minimal():
  def smooth(x):
    for p in (2, 3, 5):
      while x % p == 0:
        x //= p
    return x == 1
  for n in list(range(1, 200)) + [2001, 4097, 32768, 32769]:
    m = fft_size(n)
    assert m >= n and smooth(m)
    assert not any(smooth(j) for j in range(n, m))


@pytest.mark.shape_errors
def test_rejects_bad_shapes():
  u, k, _ = _inputs(0, 1, 8, 3, 8)
  with pytest.raises(ValueError, match="k must be"):
    fftconv(u, k[:2])
  with pytest.raises(ValueError, match="k_reverse.shape"):
    fftconv(u, k, k_reverse=k[:, :4])
