"""The run-time checker that conftest.py's jaxtyping import hook applies to
every function of kernels/, layers/ and models/."""
import beartype

# PEP 484's numeric tower: an int is accepted where a float is annotated.
_beartype = beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))


def beartype_checker(fn):
  """beartype for every function but ``__init__``.

  jaxtyping also hands each dataclass's generated ``__init__`` to the
  checker; a Flax module's fields carry no array shapes and include Flax's own
  hints that cannot be checked at run time (``nn.Dense.dot_general``, a
  Protocol), so those are left alone.
  """
  if getattr(fn, "__name__", None) == "__init__":
    return fn
  return _beartype(fn)
