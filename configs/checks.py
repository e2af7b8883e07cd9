"""Small field checkers shared by every config validator (configs/, data/, layers/).

Each raises ``ValueError`` naming the field by its full path and its value, e.g.
``ValueError("data.pathfinder.difficulty='medium' is not one of ('easy', ...)")``.
Imports nothing of the project, so that task and mixer modules can use it without
importing configs/validate.py.
"""
import math
from typing import Any, Iterable


def fail(field: str, value: Any, why: str):
  """Raises ``ValueError(f"{field}={value!r} {why}")``."""
  raise ValueError(f"{field}={value!r} {why}")


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
  choices = tuple(choices)
  if value not in choices:
    fail(field, value, f"is not one of {choices}")


def check_int(field: str, value: Any, *, minimum: int | None = None,
              optional: bool = False) -> None:
  """An integer (not a bool) >= ``minimum``; None passes when ``optional``."""
  if value is None and optional:
    return
  if not isinstance(value, int) or isinstance(value, bool):
    fail(field, value, "must be an integer")
  if minimum is not None and value < minimum:
    fail(field, value, f"must be >= {minimum}")


def check_float(field: str, value: Any, *, low: float | None = None,
                high: float | None = None, low_open: bool = False,
                optional: bool = False) -> None:
  """A finite number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
  if value is None and optional:
    return
  if not isinstance(value, (int, float)) or isinstance(value, bool) or (
      not math.isfinite(value)):
    fail(field, value, "must be a finite number")
  if low is not None and (value <= low if low_open else value < low):
    fail(field, value, f"must be {'>' if low_open else '>='} {low}")
  if high is not None and value > high:
    fail(field, value, f"must be <= {high}")


def check_bool(field: str, value: Any) -> None:
  if not isinstance(value, bool):
    fail(field, value, "must be True or False")
