"""The config a workdir was started with: ``workdir/config.json``.

A run writes its config there; a restart in a workdir that has checkpoints
compares its config with it and refuses, in one line naming the fields that
differ, before building data or compiling anything. ``RESUMABLE`` lists the
fields a restart may change (how long to train, what to keep, the mesh).
"""
import json
import os
import re
from typing import Any

import ml_collections

FILENAME = "config.json"

# Fields a resumed run may change: none of them changes what a step computes
# (a longer run changes the learning-rate schedule's length, as intended).
RESUMABLE = (
    "train.num_epochs", "train.num_steps", "train.stop_after_step",
    "train.progress_bar", "train.test_at_end", "train.keep_checkpoints",
    "train.max_nonfinite_steps", "train.eval_steps", "train.log_every_steps",
    "train.checkpoint_every_steps", "mesh.*",
)


class ConfigMismatchError(ValueError):
  """A restart's config differs from the one its workdir was started with."""


def flatten(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``{"a.b.c": value}`` of every leaf, as JSON reads it back (tuples are
  lists; values JSON cannot hold are their ``repr``)."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      path = f"{prefix}{key}"
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        walk(path + ".", value)
      else:
        out[path] = json.loads(json.dumps(value, default=repr))

  walk("", config.to_dict() if hasattr(config, "to_dict") else config)
  return out


def resumable(field: str) -> bool:
  return any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), field)
             for p in RESUMABLE)


def _has_checkpoint(workdir: str) -> bool:
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(
      name.isdigit() for name in os.listdir(directory))


def check_and_record(config: ml_collections.ConfigDict, workdir: str, *,
                     write: bool = True) -> None:
  """Compares ``config`` with the workdir's recorded one when the workdir
  has checkpoints (``ConfigMismatchError`` naming every differing field
  that may not change on resume), then records ``config`` (atomically)."""
  path = os.path.join(workdir, FILENAME)
  new = flatten(config)
  if os.path.exists(path) and _has_checkpoint(workdir):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ConfigMismatchError(
          f"{path} cannot be read ({e}): it records the config this "
          "workdir's checkpoints were trained with; restore it or use a "
          "new --workdir") from None
    differ = sorted(k for k in set(old) | set(new)
                    if old.get(k, "<absent>") != new.get(k, "<absent>"))
    fixed = [k for k in differ if not resumable(k)]
    if fixed:
      shown = "; ".join(f"{k}: {old.get(k, '<absent>')!r} -> "
                        f"{new.get(k, '<absent>')!r}" for k in fixed)
      raise ConfigMismatchError(
          f"--workdir {workdir} holds checkpoints of another config "
          f"({shown}); resume with the recorded config ({path}) or use a "
          f"new --workdir (fields that may change on resume: "
          f"{', '.join(RESUMABLE)})")
  if write:
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(new, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
