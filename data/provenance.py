"""Where a built data set came from, recorded beside it and checked on reuse.

TFDS reuses a data set once it is built in ``data.data_dir``, whatever
``data.manual_dir`` says now. So each builder's ``prepare`` describes its
source: the release files it reads (their real paths, sizes and modification
times, and the ``manual_dir`` given), or the generator's parameters. The
description is written as ``SOURCE.json`` in the built folder; a later run
whose source differs fails before training, saying what changed and what to
do, instead of training on the cached data.
"""
import hashlib
import json
import logging
import os
from typing import Any, Callable, Iterable, Mapping

FILENAME = "SOURCE.json"


class StaleDataError(ValueError):
  """The data set built in ``data_dir`` came from another source."""


def _walk(path: str) -> Iterable[str]:
  if os.path.isdir(path):
    for root, dirs, names in os.walk(path):
      dirs.sort()
      for name in sorted(names):
        yield os.path.join(root, name)
  else:
    yield path


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> dict[str, Any]:
  """Count, total size and a SHA-256 over (path, size, mtime) of every file
  under ``paths`` (files or folders)."""
  digest, count, size = hashlib.sha256(), 0, 0
  for top in paths:
    top = os.path.realpath(os.fspath(top))
    for path in _walk(top):
      st = os.stat(path)
      digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
      count, size = count + 1, size + st.st_size
  return {"files": count, "bytes": size, "stats_sha256": digest.hexdigest()}


def manual_source(manual_dir: str, read: Iterable[str | os.PathLike]
                  ) -> dict[str, Any]:
  """The source of a data set built from the release files ``read``."""
  read = [os.path.realpath(os.fspath(p)) for p in read]
  return {"manual_dir": os.path.realpath(os.path.expanduser(manual_dir)),
          "read": read, **files_fingerprint(read)}


def generated_source(parameters: Mapping[str, Any]) -> dict[str, Any]:
  """The source of a generated data set: its generator's parameters."""
  return {"generated": json.loads(json.dumps(dict(parameters), default=repr,
                                             sort_keys=True))}


def _describe(source: Mapping[str, Any]) -> str:
  if "generated" in source:
    return f"generated with {source['generated']}"
  if "download" in source:
    return f"downloaded from {source['download']}"
  return (f"data.manual_dir={source['manual_dir']!r} ({source['files']} "
          f"files, {source['bytes']} bytes, fingerprint "
          f"{source['stats_sha256'][:12]})")


def prepare(builder, source: Mapping[str, Any],
            build: Callable[[], None]) -> None:
  """Runs ``build`` (the builder's ``download_and_prepare``) and records
  ``source`` in the built folder; when the data set is already built, first
  checks that it was built from ``source`` (``StaleDataError`` if not)."""
  folder = os.fspath(builder.data_dir)
  record = os.path.join(folder, FILENAME)
  source = json.loads(json.dumps(dict(source), sort_keys=True))
  built = os.path.exists(os.path.join(folder, "dataset_info.json"))
  if built and os.path.exists(record):
    with open(record) as f:
      old = json.load(f)
    if old != source:
      raise StaleDataError(
          f"{folder} was built from {_describe(old)}; this run's source is "
          f"{_describe(source)}. Delete that folder to rebuild from the new "
          "source, or set data.data_dir to another folder")
  elif built:
    logging.warning("%s has no %s (built before sources were recorded): "
                    "recording this run's source, %s, without checking it",
                    folder, FILENAME, _describe(source))
  build()
  if not os.path.exists(record) or not built:
    with open(record + ".tmp", "w") as f:
      json.dump(source, f, indent=1, sort_keys=True)
    os.replace(record + ".tmp", record)
