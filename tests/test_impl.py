"""The implementation dispatcher."""
import pytest

from kernels import Impl, resolve_impl


def test_auto_is_xla_on_cpu():
  assert resolve_impl("auto") is Impl.XLA
  assert resolve_impl(Impl.AUTO, has_pallas=False) is Impl.XLA
  assert resolve_impl("reference") is Impl.REFERENCE


def test_bad_impl_names_the_value():
  with pytest.raises(ValueError, match="impl='fast'"):
    resolve_impl("fast")
  with pytest.raises(ValueError, match="no Pallas kernel"):
    resolve_impl("pallas", has_pallas=False)
