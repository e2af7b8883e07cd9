"""LRA Retrieval TFDS builder: the AAN pairs of the LRA release.

Reads ``tsv_data/new_aan_pairs.{train,eval,test}.tsv`` under
``data.manual_dir`` (the release's folder layouts: data/release.py). Each
line: ``label \\t id1 \\t id2 \\t text1 \\t text2``, label ``0``/``1`` written
as a float (``1.0``); quote characters are part of the text, as in LRA's
``make_csv_dataset`` reading. Texts are stored as ``byte + 1`` ids of their
first 10,000 bytes (LRA cuts the strings at 10,000 bytes before encoding and
the ids at 4,000: ``data.retrieval.max_length`` does the second cut).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data import builder_base
from data import provenance
from data import release
from data import tasks
from data import text

RELEASE_DIR = "tsv_data"
SPLIT_FILES = {"train": "new_aan_pairs.train.tsv",
               "validation": "new_aan_pairs.eval.tsv",
               "test": "new_aan_pairs.test.tsv"}
OFFICIAL_SIZES = {"train": 147_086, "validation": 18_090, "test": 17_437}
STRING_BYTES = 10_000  # LRA's cut of each string before encoding.
_FIELDS = 5


def find_split_files(manual_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  folder = release.find_release_dir(
      manual_dir, RELEASE_DIR,
      accept=lambda p: all((p / f).is_file() for f in SPLIT_FILES.values()),
      expected=", ".join(SPLIT_FILES.values()),
      hint="Download lra_release.gz (github.com/google-research/"
      "long-range-arena), extract it and point data.manual_dir at it.")
  return {split: folder / name for split, name in SPLIT_FILES.items()}


def read_tsv(path: str | os.PathLike) -> Iterator[tuple[int, int, bytes, bytes]]:
  """``(line number, label, text1, text2)`` per line; ``ValueError`` with
  ``file:line`` for a malformed line, and for a file without lines."""
  count = 0
  with open(path, "rb") as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip(b"\n").rstrip(b"\r")
      if not line:
        continue
      fields = line.split(b"\t")
      if len(fields) != _FIELDS:
        raise ValueError(f"{path}:{number}: expected {_FIELDS} tab-separated "
                         f"fields (label, id1, id2, text1, text2), got "
                         f"{len(fields)}")
      try:
        value = float(fields[0])
      except ValueError:
        value = None
      if value not in (0.0, 1.0):
        raise ValueError(f"{path}:{number}: label {fields[0][:20]!r} is not "
                         "0 or 1")
      count += 1
      yield number, int(value), fields[3], fields[4]
  if not count:
    raise ValueError(f"{path}:1: no pairs (empty file)")


class LraRetrieval(builder_base.Builder):
  """LRA Retrieval: two byte-id documents and whether they are linked."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "tsv_data/new_aan_pairs.*.tsv, byte + 1 ids."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download lra_release.gz from github.com/google-research/long-range-"
      "arena, extract it and set data.manual_dir to it.")


  def _info(self) -> tfds.core.DatasetInfo:
    ids = tfds.features.Tensor(shape=(None,), dtype=np.int32)
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "inputs1": ids, "inputs2": ids,
            "targets": tfds.features.ClassLabel(num_classes=2)}),
        homepage="https://github.com/google-research/long-range-arena")

  def _split_generators(self, dl_manager):
    files = find_split_files(dl_manager.manual_dir)
    return {split: self._generate_examples(files[split])
            for split in SPLIT_FILES}

  def _generate_examples(self, path):
    for number, label, text1, text2 in read_tsv(path):
      yield number, {"inputs1": text.encode(text1[:STRING_BYTES]),
                     "inputs2": text.encode(text2[:STRING_BYTES]),
                     "targets": label}


def prepare(data_config: Any) -> LraRetrieval:
  manual_dir = tasks.config_field(data_config, "manual_dir")
  if not manual_dir:
    raise ValueError(
        "data.manual_dir=None: LRA Retrieval is read from the LRA release "
        "(no download): extract lra_release.gz and set data.manual_dir")
  builder = LraRetrieval(data_dir=tasks.config_field(data_config, "data_dir"),
                         file_format="array_record")
  files = find_split_files(os.path.expanduser(manual_dir))
  provenance.prepare(
      builder, provenance.manual_source(manual_dir, files.values()),
      lambda: builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(
              manual_dir=os.path.expanduser(manual_dir))))
  return builder
