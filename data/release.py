"""Finding a task's folder in the extracted LRA release (``lra_release.gz``).

The release tarball (github.com/google-research/long-range-arena) unpacks to
``lra_release/`` and, in the copies people download, often to
``lra_release/lra_release/``; its task folders (``listops-1000``,
``pathfinder32`` ... ``pathfinder256``, ``tsv_data``) sit inside. ``data.manual_dir``
may name the task folder itself, the release folder, or any of the folders above
it that those two layouts give.
"""
import os
import pathlib
from typing import Callable

# Where a task folder may sit under data.manual_dir, in the order tried.
RELEASE_PREFIXES = (".", "lra_release", os.path.join("lra_release", "lra_release"))


def release_candidates(manual_dir: str | os.PathLike,
                       relative: str | os.PathLike) -> list[pathlib.Path]:
  """``manual_dir`` itself, then ``manual_dir/<prefix>/relative`` per prefix."""
  root = pathlib.Path(manual_dir).expanduser()
  return [root] + [root / prefix / relative for prefix in RELEASE_PREFIXES]


def find_release_dir(manual_dir: str | os.PathLike, relative: str | os.PathLike, *,
                     accept: Callable[[pathlib.Path], bool] = pathlib.Path.is_dir,
                     expected: str = "", hint: str = "") -> pathlib.Path:
  """The first candidate folder (:func:`release_candidates`) that ``accept``\\ s.

  Args:
    manual_dir: ``config.data.manual_dir``.
    relative: the task folder inside the release, e.g. ``"listops-1000"``.
    accept: whether a folder holds the task's files (default: it exists); the
      manual_dir itself is a candidate so that it may name the task folder.
    expected: what ``accept`` looks for, for the error message.
    hint: appended to the error message (what to download, which field to set).

  Raises:
    FileNotFoundError: no candidate is accepted; names every folder tried and
      what ``manual_dir`` holds.
  """
  candidates = release_candidates(manual_dir, relative)
  for path in candidates:
    if path.is_dir() and accept(path):
      return path
  root = candidates[0]
  try:
    found = sorted(p.name for p in root.iterdir()) if root.is_dir() else None
  except OSError:
    found = None
  holds = ("does not exist" if found is None else
           f"holds {found[:12]}" + (" ..." if len(found) > 12 else ""))
  raise FileNotFoundError(
      f"no {relative} folder{' with ' + expected if expected else ''} under "
      f"data.manual_dir={os.fspath(manual_dir)!r} (which {holds}); tried "
      f"{[os.fspath(p) for p in candidates]}." + (f" {hint}" if hint else ""))
