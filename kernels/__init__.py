"""Pure array functions for the hot operations of long-sequence models.

Notation used in shapes throughout kernels/ (jaxtyping dimension names):
  b batch, t (or l) time, d model width / channels, h heads, n state size,
  c chunk, k kernel length.

One convention per kernel family (an "op"):
  * ``<op>_reference``: the paper's equation written the obvious way, in
    float32: the spec that every other form is tested against;
  * the XLA form(s): the fast jnp algorithms (``cauchy_xla``,
    ``attention_dense`` / ``attention_blocked``, ``ssd_chunked``, ...);
  * ``<op>_pallas`` where a Pallas kernel exists: it takes ``interpret``
    (True runs it on CPU) and a frozen ``BlockSizes`` of its module, which
    rejects bad tiles with a message naming the values;
  * one dispatcher ``<op>(..., impl=Impl.AUTO)`` with the reference's
    arguments and one return arity whatever ``impl`` picks: sequence ops
    return ``(output, final_state)`` (``None`` for a stateless op), kernel
    generators (``cauchy``, ``dplr_kernel``, ``s4d_kernel``) and ``fftconv``
    return one array.

The ops and their modules:
  ``cauchy`` (cauchy.py; Pallas), ``dplr_kernel`` (dplr.py; runs the Cauchy
  Pallas kernel), ``s4d_kernel`` (vandermonde.py), ``fftconv`` (fftconv.py),
  ``ssd`` (ssd.py, chunked form in ssd_chunked.py), ``linear_attention``
  (linear_attention.py), ``attention`` (attention.py, Pallas kernels in
  attention_pallas.py), ``longformer_attention`` (longformer_attention.py) and
  ``bigbird_attention`` (bigbird_attention.py), both on the masked softmax of
  block_sparse_attention.py, ``probsparse_attention`` (probsparse.py).
  attention_common.py holds what every softmax attention shares (the
  backward's ``dS = P o (dP - delta)``).

Choosing an implementation: every op's module records itself with
``register_op``: ``PALLAS_KERNEL`` then says, for every op, which Pallas
kernel it runs (None: it has none), and ``NATIVE_VALIDATED`` the backends on
which that kernel has passed its tests natively (interpret mode
alone does not prove the lowering). ``resolve_impl(impl, op=...)`` resolves
``Impl.AUTO`` to ``Impl.PALLAS`` only on such a backend, else to the XLA
form, and rejects a Pallas request for an op without a kernel;
``supported_impls(op)`` lists what an op accepts (for config validation).

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


# Every dispatcher, and the Pallas kernel it runs (None: XLA forms only), and
# Pallas kernel -> backends (``jax.default_backend()``) where it has passed
# its test class natively. Each kernel module records its own op with
# :func:`register_op` (so a new kernel family touches no other file). So far
# no kernel has passed natively: both Pallas kernels have only run in
# interpret mode on CPU (and been lowered / compiled ahead of time in tests),
# so AUTO picks the XLA forms everywhere; ``impl="pallas"`` opts in.
PALLAS_KERNEL: dict[str, str | None] = {}
NATIVE_VALIDATED: dict[str, frozenset[str]] = {}


def register_op(op: str, *, pallas: str | None = None,
                native_validated: frozenset[str] | None = None) -> None:
  """Records the dispatcher ``op``: the Pallas kernel it runs (None: none)
  and, for the module that defines that kernel, the backends where it has
  passed natively."""
  if PALLAS_KERNEL.get(op, pallas) != pallas:
    raise ValueError(f"{op=} is already registered with Pallas kernel "
                     f"{PALLAS_KERNEL[op]!r}")
  PALLAS_KERNEL[op] = pallas
  if native_validated is not None:
    if pallas is None:
      raise ValueError(f"{op=} has no Pallas kernel to validate")
    NATIVE_VALIDATED[pallas] = frozenset(native_validated)
  elif pallas is not None:
    NATIVE_VALIDATED.setdefault(pallas, frozenset())


def _pallas_kernel(op: str) -> str | None:
  try:
    return PALLAS_KERNEL[op]
  except KeyError:
    raise ValueError(
        f"{op=} is not a kernels op (registered: {sorted(PALLAS_KERNEL)}; an "
        "op is registered when its module is imported)") from None


def supported_impls(op: str) -> tuple[str, ...]:
  """The ``Impl`` values that ``op``'s dispatcher accepts."""
  if _pallas_kernel(op) is None:
    return tuple(i.value for i in Impl
                 if i not in (Impl.PALLAS, Impl.PALLAS_INTERPRET))
  return tuple(i.value for i in Impl)


def resolve_impl(impl: "Impl | str", *, op: str) -> Impl:
  """Validates ``impl`` for ``op`` and resolves ``Impl.AUTO``.

  AUTO is ``Impl.PALLAS`` where ``op``'s Pallas kernel has passed natively on
  the default backend (``NATIVE_VALIDATED``), else ``Impl.XLA``.

  Raises:
    ValueError: ``impl`` is not an ``Impl`` value, ``op`` is unknown, or a
      Pallas implementation is asked of an op without a Pallas kernel.
  """
  try:
    impl = Impl(impl)
  except ValueError:
    raise ValueError(
        f"{impl=} is not one of {[i.value for i in Impl]}") from None
  kernel = _pallas_kernel(op)
  if impl is Impl.AUTO:
    if kernel is not None and (jax.default_backend()
                               in NATIVE_VALIDATED[kernel]):
      return Impl.PALLAS
    return Impl.XLA
  if impl in (Impl.PALLAS, Impl.PALLAS_INTERPRET) and kernel is None:
    raise ValueError(
        f"{op}: impl={impl.value!r} requested but {op} has no Pallas kernel; "
        f"it accepts {supported_impls(op)}")
  return impl
