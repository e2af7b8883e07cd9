"""The implementation dispatcher: one registry of ops, one AUTO rule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import Impl, resolve_impl
from kernels import attention, bigbird_attention, cauchy, fftconv
from kernels import linear_attention, longformer_attention, probsparse, ssd
from kernels import vandermonde

WITHOUT_PALLAS = ("s4d_kernel", "fftconv", "ssd", "linear_attention",
                  "longformer_attention", "bigbird_attention",
                  "probsparse_attention")
WITH_PALLAS = ("cauchy", "dplr_kernel", "attention")


def test_auto_is_xla_on_cpu():
  assert resolve_impl("auto", op="cauchy") is Impl.XLA
  assert resolve_impl(Impl.AUTO, op="fftconv") is Impl.XLA
  assert resolve_impl("reference", op="cauchy") is Impl.REFERENCE


def test_bad_impl_names_the_value():
  with pytest.raises(ValueError, match="impl='fast'"):
    resolve_impl("fast", op="cauchy")
  with pytest.raises(ValueError, match="no Pallas kernel"):
    resolve_impl("pallas", op="fftconv")


def test_registry_covers_every_op():
  assert set(kernels.PALLAS_KERNEL) == set(WITHOUT_PALLAS + WITH_PALLAS)
  for op, kernel in kernels.PALLAS_KERNEL.items():
    assert (kernel is None) == (op in WITHOUT_PALLAS), op
    assert kernel is None or kernel in kernels.NATIVE_VALIDATED, op
  with pytest.raises(ValueError, match="op='conv'"):
    resolve_impl("auto", op="conv")
  with pytest.raises(ValueError, match="op='conv'"):
    kernels.supported_impls("conv")


@pytest.mark.parametrize("op", WITHOUT_PALLAS + WITH_PALLAS)
def test_auto_resolves_to_xla_on_cpu_for_every_op(op):
  assert jax.default_backend() == "cpu"
  assert resolve_impl(Impl.AUTO, op=op) is Impl.XLA


def test_auto_picks_pallas_only_where_validated(monkeypatch):
  monkeypatch.setitem(kernels.NATIVE_VALIDATED, "cauchy",
                      frozenset({"cpu"}))
  assert resolve_impl("auto", op="cauchy") is Impl.PALLAS
  assert resolve_impl("auto", op="dplr_kernel") is Impl.PALLAS
  assert resolve_impl("auto", op="attention") is Impl.XLA
  assert resolve_impl("xla", op="cauchy") is Impl.XLA


@pytest.mark.parametrize("op", WITHOUT_PALLAS)
@pytest.mark.parametrize("impl", ["pallas", "pallas_interpret"])
def test_pallas_for_an_op_without_one_names_both(op, impl):
  with pytest.raises(ValueError, match=f"{op}: impl='{impl}'.*no Pallas"):
    resolve_impl(impl, op=op)


def test_supported_impls():
  every = tuple(i.value for i in Impl)
  for op in WITH_PALLAS:
    assert kernels.supported_impls(op) == every
  for op in WITHOUT_PALLAS:
    assert kernels.supported_impls(op) == ("auto", "reference", "xla")
  for op in WITHOUT_PALLAS + WITH_PALLAS:  # every listed value resolves
    for impl in kernels.supported_impls(op):
      resolve_impl(impl, op=op)


def _f32(*shape):
  return jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)


def _dispatch_calls():
  """One small call of every dispatcher without a Pallas kernel, by op."""
  q = _f32(1, 8, 1, 4)
  A = jnp.full((1, 2), -0.5 + 1j, jnp.complex64)
  return {
      "s4d_kernel": lambda impl: vandermonde.s4d_kernel(
          A, A, A, jnp.zeros((1,)), 8, impl=impl),
      "fftconv": lambda impl: fftconv.fftconv(_f32(1, 8, 2), _f32(2, 8),
                                              impl=impl),
      "ssd": lambda impl: ssd.ssd(q, jnp.ones((1, 8, 1)), -jnp.ones((1,)),
                                  q, q, impl=impl),
      "linear_attention": lambda impl: linear_attention.linear_attention(
          q, q, q, impl=impl),
      "longformer_attention": lambda impl: (
          longformer_attention.longformer_attention(q, q, q, window=2,
                                                    impl=impl)),
      "bigbird_attention": lambda impl: bigbird_attention.bigbird_attention(
          q, q, q, block_size=2, impl=impl),
      "probsparse_attention": lambda impl: probsparse.probsparse_attention(
          q, q, q, key=jax.random.key(0), impl=impl),
  }


@pytest.mark.parametrize("op", WITHOUT_PALLAS)
def test_dispatchers_raise_for_pallas_without_a_kernel(op):
  call = _dispatch_calls()[op]
  # One return arity: the reference and the XLA form give the same structure.
  assert (jax.tree.structure(call("reference")) ==
          jax.tree.structure(call("xla")))
  with pytest.raises(ValueError, match=f"{op}: impl='pallas'"):
    call("pallas")


def test_dispatchers_with_pallas_use_the_registry():
  """Their AUTO follows NATIVE_VALIDATED: XLA on CPU, the same values."""
  w = jnp.full((2, 4), -0.5 + 1j, jnp.complex64)
  v = jnp.ones((2, 4), jnp.complex64)
  z = jnp.exp(1j * jnp.linspace(0, 1, 8)).astype(jnp.complex64)
  np.testing.assert_array_equal(cauchy.cauchy(v, z, w),
                                cauchy.cauchy(v, z, w, impl="xla"))
  q = _f32(1, 8, 1, 4)
  out, state = attention.attention(q, q, q)
  assert state is None
  np.testing.assert_array_equal(out, attention.attention(q, q, q,
                                                         impl="xla")[0])
