"""Small checks of config values, shared by the config's owners.

Each raises ``ConfigError`` (a ``ValueError``) naming the field by its full
path and its value, e.g.
``ConfigError("model.s4.d_state=63 must be even ...")``. Used by
``configs/validate.py`` (fields common to all runs), by each mixer's
declaration in ``layers/`` (``model.<mixer>.*``) and by each task's in
``data/`` (``data.<task>.*``).
"""
import math
import re
from typing import Any, Iterable


class ConfigError(ValueError):
  """A config field's value cannot be run (the message names the field)."""


def fail(field: str, value: Any, why: str):
  raise ConfigError(f"{field}={value!r} {why}")


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
  choices = tuple(choices)
  if value not in choices:
    fail(field, value, f"is not one of {choices}")


def check_bool(field: str, value: Any) -> None:
  if not isinstance(value, bool):
    fail(field, value, "must be True or False")


def check_int(field: str, value: Any, *, minimum: int | None = None,
              optional: bool = False) -> None:
  if value is None and optional:
    return
  if not isinstance(value, int) or isinstance(value, bool):
    fail(field, value, "must be an integer")
  if minimum is not None and value < minimum:
    fail(field, value, f"must be >= {minimum}")


def check_float(field: str, value: Any, *, low: float | None = None,
                high: float | None = None, low_open: bool = False,
                high_open: bool = False, optional: bool = False) -> None:
  if value is None and optional:
    return
  if not isinstance(value, (int, float)) or isinstance(value, bool) or (
      not math.isfinite(value)):
    fail(field, value, "must be a finite number")
  if low is not None and (value <= low if low_open else value < low):
    fail(field, value, f"must be {'>' if low_open else '>='} {low}")
  if high is not None and (value >= high if high_open else value > high):
    fail(field, value, f"must be {'<' if high_open else '<='} {high}")


def check_regex(field: str, value: Any) -> None:
  if not isinstance(value, str) or not value:
    fail(field, value, "must be a non-empty regex string")
  try:
    re.compile(value)
  except re.error as e:
    fail(field, value, f"is not a valid regex ({e})")
