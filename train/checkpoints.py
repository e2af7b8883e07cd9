"""Checkpoints that are verified before they are trusted.

Orbax writes each checkpoint asynchronously. Once a save has finished, the
run writes ``<step>/CHECKSUMS.json`` inside the step folder: the size and
SHA-256 of every file of the checkpoint. A restore first verifies them. A
checkpoint that fails to verify or to read (a flipped byte, a truncated or
overwritten chunk, an emptied metadata file, no checksums because the run was
killed before they were written) is reported, with its step and the file,
moved out of the way to ``<checkpoints>_unusable/<step>``, and the run falls
back to the previous checkpoint (or to step 0), with a warning. Training is
deterministic, so the resumed run still ends where an uninterrupted one does.
A checkpoint whose files verify but that fails to restore was written by
another config or code: that is an error, not a fallback.
"""
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Callable

import orbax.checkpoint as ocp

MANIFEST = "CHECKSUMS.json"
_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used: it fails to verify or to restore."""


def manager(directory: str, *, max_to_keep: int, best: bool,
            metric: str = "accuracy",
            mode: str = "max") -> ocp.CheckpointManager:
  """Orbax's manager of ``directory``: the latest ``max_to_keep`` steps, or
  with ``best`` the best by ``metric`` (``mode`` "min" or "max")."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      best_fn=(lambda m: m[metric]) if best else None,
      best_mode=mode,
      keep_checkpoints_without_metrics=not best,
      create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def step_dir(mgr: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(mgr.directory), str(step))


def _files(directory: str) -> list[str]:
  out = []
  for root, _, names in os.walk(directory):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), directory)
      if rel != MANIFEST:
        out.append(rel)
  return sorted(out)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def write_manifest(directory: str) -> None:
  """Records the size and SHA-256 of every file under ``directory`` (a
  finished checkpoint step), atomically."""
  files = {rel: {"bytes": os.path.getsize(os.path.join(directory, rel)),
                 "sha256": _sha256(os.path.join(directory, rel))}
           for rel in _files(directory)}
  path = os.path.join(directory, MANIFEST)
  with open(path + ".tmp", "w") as f:
    json.dump({"files": files}, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)


def verify(directory: str) -> None:
  """Raises ``CheckpointError`` naming the first file of ``directory`` that
  is missing, added, or differs from its ``CHECKSUMS.json`` entry."""
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path) as f:
      files = json.load(f)["files"]
  except FileNotFoundError:
    raise CheckpointError(
        f"{directory} has no {MANIFEST}: its save never finished (the run "
        "was stopped while writing it) or the file was removed") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{path} cannot be read: {e}") from None
  present = set(_files(directory))
  for rel in sorted(set(files) - present):
    raise CheckpointError(f"{os.path.join(directory, rel)} is missing")
  for rel in sorted(present - set(files)):
    raise CheckpointError(f"{os.path.join(directory, rel)} is not part of "
                          "the checkpoint that was saved")
  for rel, want in sorted(files.items()):
    full = os.path.join(directory, rel)
    size = os.path.getsize(full)
    if size != want["bytes"]:
      raise CheckpointError(f"{full} has {size} bytes, {want['bytes']} were "
                            "saved")
    if _sha256(full) != want["sha256"]:
      raise CheckpointError(f"{full} differs from what was saved (SHA-256)")


class Checksums:
  """Writes the manifests of a manager's saves once they have finished."""

  def __init__(self, mgr: ocp.CheckpointManager, *, enabled: bool = True):
    self._mgr, self._enabled, self._pending = mgr, enabled, []

  def saved(self, step: int) -> None:
    """Call after ``mgr.save(step, ...)`` has started."""
    if self._enabled:
      self._pending.append(step)

  def poll(self, *, wait: bool = False) -> None:
    """Writes the pending manifests if the saves have finished (``wait``:
    waits for them first)."""
    if not self._pending:
      return
    if wait:
      self._mgr.wait_until_finished()
    elif self._mgr.is_saving_in_progress():
      return
    self._mgr.check_for_errors()
    for step in self._pending:
      directory = step_dir(self._mgr, step)
      if os.path.isdir(directory):  # Else deleted since (max_to_keep).
        write_manifest(directory)
    self._pending = []


def _set_aside(mgr: ocp.CheckpointManager, step: int) -> str:
  """Moves an unusable step out of the manager's folder; returns where."""
  source = step_dir(mgr, step)
  target_root = str(mgr.directory).rstrip(os.sep) + "_unusable"
  os.makedirs(target_root, exist_ok=True)
  target = os.path.join(target_root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  shutil.move(source, target)
  mgr.reload()
  return target


def restore_verified(mgr: ocp.CheckpointManager, step: int,
                     args: Any) -> Any:
  """``mgr.restore(step, args)`` after verifying the step's checksums;
  ``CheckpointError`` names what failed."""
  directory = step_dir(mgr, step)
  verify(directory)
  try:
    return mgr.restore(step, args=args)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise CheckpointError(
        f"{directory} verifies but fails to restore: {type(e).__name__}: "
        f"{first[:300]}") from e


def restore_latest_usable(mgr: ocp.CheckpointManager,
                          make_args: Callable[[], Any], *,
                          set_aside: bool = True) -> tuple[int | None, Any]:
  """``(step, restored)`` of the newest checkpoint that verifies; ``(None,
  None)`` when none does (the run starts from step 0).

  Each newer checkpoint that fails to verify is logged as a warning (its step
  and the file) and, with ``set_aside``, moved to ``<directory>_unusable/``.
  A checkpoint that verifies (its files are exactly those saved) but does not
  restore into this run is not corrupt: it was written by another config or
  code, and ``CheckpointError`` says so instead of falling back.
  """
  unusable = 0
  for step in sorted(mgr.all_steps(), reverse=True):
    try:
      verify(step_dir(mgr, step))
    except CheckpointError as e:
      unusable += 1
      where = _set_aside(mgr, step) if set_aside else None
      logging.warning(
          "checkpoint of step %d is unusable: %s%s; falling back to the "
          "previous checkpoint", step, e,
          f" (moved to {where})" if where else "")
      continue
    return step, restore_verified(mgr, step, make_args())
  if unusable:
    logging.warning(
        "no usable checkpoint is left in %s: the run starts again from step "
        "0 (training is deterministic: it ends where an uninterrupted run "
        "does)", mgr.directory)
  return None, None
