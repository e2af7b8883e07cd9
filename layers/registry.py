"""Sequence mixers by name: everything the rest of the tree knows about one.

A mixer module registers itself with everything that is about it::

  @register_mixer("s4", config=config, validate=validate, length_field="l_max")
  class S4(nn.Module):
    ...

* ``config()`` returns its fields, ``model.<name>.*``, with their defaults (and
  comments, in the mixer's module). configs/default.py builds
  ``config.model.<name>`` from it for every registered mixer. An optional
  ``optim_groups`` sub-config names the mixer's optimizer parameter groups:
  ``{group: {pattern, learning_rate, weight_decay}}`` with ``pattern`` a regex
  searched in a parameter's '/'-joined path (the mixer's module is always named
  ``mixer``, so its patterns start ``(^|/)mixer/``); the trainer adds them to
  ``config.optim.groups`` when the mixer is the model's.
* ``validate(cfg, ctx)`` checks ``cfg`` (``config.model.<name>``) before
  anything is built, raising ``ValueError`` that names the field by its full
  path (``ctx.prefix``).
* ``length_field``: the module field that must hold the longest sequence the
  mixer will see (``l_max``, ``max_length``); the model fills it from the task
  when the config leaves it None.
* ``shared(d_model, **fields)``: a module that every layer of a backbone shares
  (Linformer's layerwise projection), or None.

Nothing else in the tree names a mixer.
"""
import dataclasses
from typing import Any, Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class MixerContext:
  """What a mixer's config validation may know besides its own fields."""
  prefix: str  # The config path of the mixer's fields, e.g. "model.s4".
  d_model: int
  # The backbone's projection after the mixer: "glu", "linear" or "none".
  output: str = "glu"
  # The task's longest input (positions the mixer sees), None if unknown.
  max_length: int | None = None
  # True when the task predicts every position from the tokens up to it, so
  # the mixer must not see the future.
  causal: bool = False


def _no_fields() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict()


def _no_checks(cfg: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  del cfg, ctx


OPTIM_GROUPS = "optim_groups"


@dataclasses.dataclass(frozen=True)
class MixerSpec:
  """A registered mixer: its module and what it declares about itself."""
  name: str
  module: type
  config: Callable[[], ml_collections.ConfigDict] = _no_fields
  validate: Callable[[ml_collections.ConfigDict, MixerContext], None] = (
      _no_checks)
  length_field: str | None = None
  shared: Callable[..., Any] | None = None

  def default_config(self) -> ml_collections.ConfigDict:
    return self.config()

  def module_kwargs(self, cfg: ml_collections.ConfigDict | dict | None, *,
                    max_length: int | None) -> dict:
    """The module's keyword arguments from ``model.<name>`` (its defaults if
    None): every field but ``optim_groups``, the length field filled with
    ``max_length`` when it is None."""
    if cfg is None:
      cfg = self.config()
    kwargs = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    kwargs.pop(OPTIM_GROUPS, None)
    if self.length_field is not None and kwargs.get(self.length_field) is None:
      kwargs[self.length_field] = max_length
    return kwargs

  def optim_groups(self, cfg: ml_collections.ConfigDict | None) -> dict:
    """``{group: {pattern, learning_rate, weight_decay}}`` of ``cfg``."""
    if cfg is None:
      cfg = self.config()
    groups = cfg.get(OPTIM_GROUPS)
    if groups is None:
      return {}
    return {name: dict(group) for name, group in groups.items()}


SPECS: dict[str, MixerSpec] = {}
# name -> module class (the modules of SPECS).
MIXERS: dict[str, type] = {}


def register_mixer(name: str, *,
                   config: Callable[[], ml_collections.ConfigDict] = _no_fields,
                   validate: Callable[..., None] = _no_checks,
                   length_field: str | None = None,
                   shared: Callable[..., Any] | None = None
                   ) -> Callable[[type], type]:
  """Class decorator: makes a mixer available as ``model.mixer=name``."""

  def decorator(cls: type) -> type:
    if name in MIXERS and MIXERS[name] is not cls:
      raise ValueError(f"mixer {name!r} is already registered to {MIXERS[name]}")
    spec = MixerSpec(name, cls, config=config, validate=validate,
                     length_field=length_field, shared=shared)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec.config().keys()) - {OPTIM_GROUPS} - fields)
    if unknown:
      raise ValueError(
          f"mixer {name!r} declares config fields {unknown} that "
          f"{cls.__module__}.{cls.__name__} does not have")
    missing = sorted({"d_model", "dtype", "param_dtype"} - fields)
    if missing:
      raise ValueError(
          f"mixer {name!r}: {cls.__name__} has no field(s) {missing}; every "
          "mixer takes d_model, and dtype / param_dtype from the backbone")
    if length_field is not None and length_field not in fields:
      raise ValueError(f"mixer {name!r}: {length_field=} is not a field of "
                       f"{cls.__name__}")
    SPECS[name] = spec
    MIXERS[name] = cls
    return cls

  return decorator


def get_spec(name: str) -> MixerSpec:
  if name not in SPECS:
    raise ValueError(
        f"unknown mixer {name!r}; registered mixers: {sorted(SPECS)}")
  return SPECS[name]


def get_mixer(name: str) -> type:
  return get_spec(name).module


# Why a mixer that sees the future cannot serve a causal task.
CAUSAL_TASK = ("is impossible for a task whose targets are predicted at every "
               "position from the tokens up to it (a causal model)")


def check_impl(field: str, value, op: str) -> None:
  """``value`` must be an implementation the kernel ``op`` has
  (``kernels.supported_impls``); "pallas" also needs a GPU or TPU."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import checks  # pylint: disable=g-import-not-at-top
  from kernels import Impl, supported_impls  # pylint: disable=g-import-not-at-top
  allowed = supported_impls(op)
  if value not in allowed:
    why = f"is not one of {allowed} (the implementations of the {op!r} kernel)"
    if value in (Impl.PALLAS.value, Impl.PALLAS_INTERPRET.value):
      why = (f"is not one of {allowed}: the {op!r} kernel has no Pallas "
             "kernel")
    checks.fail(field, value, why)
  if value == Impl.PALLAS.value and jax.default_backend() == "cpu":
    checks.fail(field, value, "needs a GPU or TPU; on a CPU use 'xla', 'auto' "
                "or 'pallas_interpret'")


def check_module_impl(impl: str, op: str) -> None:
  """The module-level form of :func:`check_impl` (field names without the
  config path), for a mixer built directly."""
  from kernels import supported_impls  # pylint: disable=g-import-not-at-top
  if impl not in supported_impls(op):
    raise ValueError(f"impl={impl!r} is not one of {supported_impls(op)} (the "
                     f"implementations of the {op!r} kernel)")
