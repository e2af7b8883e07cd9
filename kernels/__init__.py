"""Pure array functions for the hot operations of long-sequence models.

Notation used in shapes throughout kernels/ (jaxtyping dimension names):
  b batch, t (or l) time, d model width / channels, h heads, n state size,
  c chunk, k kernel length.

Each op comes in up to three implementations with one signature:
  * ``<op>_reference``: the paper's equation written the obvious way (the spec);
  * the XLA form: the fast jnp algorithm;
  * the Pallas kernel (``interpret=True`` runs it on CPU).
``impl=Impl.AUTO`` picks Pallas on GPU/TPU and the XLA form on CPU.

This package never imports Flax.
"""
import enum

import jax


class Impl(str, enum.Enum):
  """Which implementation of a kernel to run."""
  AUTO = "auto"
  REFERENCE = "reference"
  XLA = "xla"
  PALLAS = "pallas"
  PALLAS_INTERPRET = "pallas_interpret"


def resolve_impl(impl: "Impl | str", *, has_pallas: bool = True,
                 auto_pallas: bool = True) -> Impl:
  """Resolves ``Impl.AUTO`` for the default backend; validates strings.

  Args:
    impl: the requested implementation.
    has_pallas: whether the op has a Pallas kernel at all.
    auto_pallas: whether AUTO may pick that kernel on GPU/TPU. An op sets it
      False until its kernel has been validated natively on that hardware
      (interpret mode alone does not prove the lowering); ``impl="pallas"``
      still opts in explicitly.
  """
  try:
    impl = Impl(impl)
  except ValueError:
    raise ValueError(
        f"{impl=} is not one of {[i.value for i in Impl]}") from None
  if impl is Impl.AUTO:
    backend = jax.default_backend()
    if has_pallas and auto_pallas and backend in ("gpu", "cuda", "rocm", "tpu"):
      return Impl.PALLAS
    return Impl.XLA
  if impl in (Impl.PALLAS, Impl.PALLAS_INTERPRET) and not has_pallas:
    raise ValueError(f"{impl=} requested but this op has no Pallas kernel")
  return impl


# Ops that have a Pallas kernel.
_PALLAS_OPS = ("cauchy", "dplr_kernel", "attention")  # the others: XLA only


def supported_impls(op: str) -> tuple[str, ...]:
  """The ``Impl`` values the kernel ``op`` accepts."""
  if op in _PALLAS_OPS:
    return tuple(i.value for i in Impl)
  return (Impl.AUTO.value, Impl.REFERENCE.value, Impl.XLA.value)
