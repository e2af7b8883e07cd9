"""Name -> mixer class registry."""
from typing import Callable

MIXERS: dict[str, type] = {}


def register_mixer(name: str) -> Callable[[type], type]:
  """Class decorator: makes a mixer available to configs as ``model.mixer=name``."""

  def decorator(cls: type) -> type:
    if name in MIXERS and MIXERS[name] is not cls:
      raise ValueError(f"mixer {name!r} is already registered to {MIXERS[name]}")
    MIXERS[name] = cls
    return cls

  return decorator


def get_mixer(name: str) -> type:
  if name not in MIXERS:
    raise ValueError(
        f"unknown mixer {name!r}; registered mixers: {sorted(MIXERS)}")
  return MIXERS[name]
