"""LRA Text TFDS builder: the IMDB reviews as byte ids.

Source: the ``aclImdb`` folder of the official archive
(ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz, the file TFDS's
``imdb_reviews`` downloads), either extracted by the user
(``data.manual_dir``: the ``aclImdb`` folder or the one holding it) or
downloaded and extracted by the builder. Layout: ``{train,test}/{pos,neg}/
<id>_<rating>.txt``, ratings 7..10 under ``pos`` and 1..4 under ``neg``.
Each file is read as TFDS reads it (its bytes, surrounding whitespace
stripped) and stored as ``data.text.encode`` ids.
"""
from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data import builder_base
from data import text

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
FOLDER = "aclImdb"
SPLITS = ("train", "test")
LABELS = ("neg", "pos")  # TFDS imdb_reviews' ClassLabel order: neg 0, pos 1.
OFFICIAL_SIZES = {"train": 25_000, "test": 25_000}
_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")
_RATINGS = {"neg": range(1, 5), "pos": range(7, 11)}
_MANUAL = (f"Download {URL}, extract it (tar xzf) and set data.manual_dir to "
           f"the {FOLDER} folder or the folder holding it; without "
           "data.manual_dir the builder downloads it.")


def find_folder(manual_dir: str | os.PathLike) -> pathlib.Path:
  """The ``aclImdb`` folder: ``manual_dir`` itself or ``manual_dir/aclImdb``."""
  root = pathlib.Path(manual_dir).expanduser()
  for path in (root, root / FOLDER):
    if all((path / s / label).is_dir() for s in SPLITS for label in LABELS):
      return path
  raise FileNotFoundError(
      f"data.manual_dir={os.fspath(manual_dir)!r} holds no IMDB folder with "
      f"{{train,test}}/{{pos,neg}}/ (tried {os.fspath(root)} and "
      f"{os.fspath(root / FOLDER)}). {_MANUAL}")


def review_files(folder: str | os.PathLike, split: str
                 ) -> list[tuple[pathlib.Path, int]]:
  """``(path, label)`` of every review of ``split``, sorted by path.

  Raises ``ValueError`` naming the file when a name is not
  ``<id>_<rating>.txt`` or its rating does not belong to its folder.
  """
  out = []
  for label, name in enumerate(LABELS):
    directory = pathlib.Path(folder) / split / name
    for path in sorted(directory.iterdir()):
      found = _NAME.match(path.name)
      if not found:
        raise ValueError(f"{path}: not an IMDB review file name "
                         "(<id>_<rating>.txt)")
      rating = int(found.group(2))
      if rating not in _RATINGS[name]:
        raise ValueError(f"{path}: rating {rating} does not belong under "
                         f"{name}/ (ratings {_RATINGS[name].start}.."
                         f"{_RATINGS[name].stop - 1})")
      out.append((path, label))
  return out


def read_review(path: str | os.PathLike) -> bytes:
  """The review's bytes as TFDS reads them (surrounding whitespace stripped);
  ``ValueError`` naming the file when nothing is left."""
  with open(path, "rb") as f:
    data = f.read().strip()
  if not data:
    raise ValueError(f"{path}:1: empty review")
  return data


class LraText(builder_base.FolderBuilder):
  """LRA Text: IMDB reviews as int32 byte ids and a neg/pos label."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "aclImdb train/test, byte + 1 ids."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
  URL = URL
  SPLITS = SPLITS
  find_folder = staticmethod(find_folder)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "targets": tfds.features.ClassLabel(names=LABELS),
        }),
        supervised_keys=("inputs", "targets"),
        homepage="https://ai.stanford.edu/~amaas/data/sentiment/")

  def _generate_examples(self, folder, split) -> Iterator[tuple[str, dict]]:
    for path, label in review_files(folder, split):
      yield f"{split}/{LABELS[label]}/{path.name}", {
          "inputs": text.encode(read_review(path)), "targets": label}


def make_builder(data_config: Any) -> LraText:
  return builder_base.make_folder_builder(LraText, data_config)


def prepare(data_config: Any) -> LraText:
  """Builds the data set if it is missing (recording its source) and returns
  its builder."""
  return builder_base.prepare_folder(
      LraText, data_config,
      lambda folder: [folder / s / label for s in SPLITS for label in LABELS])
