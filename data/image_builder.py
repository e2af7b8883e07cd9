"""LRA Image TFDS builder: the CIFAR-10 images as they are (uint8 RGB).

Source: the official python version of CIFAR-10
(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz), extracted by the
user (``data.manual_dir``: the ``cifar-10-batches-py`` folder or the one
holding it) or downloaded and extracted by the builder. Its pickles
``data_batch_1`` .. ``data_batch_5`` (the 50,000 training images, in that
order: TFDS's ``train`` order) and ``test_batch`` each hold ``b"data"``, uint8
``[10000, 3072]`` (the red, green and blue 32 x 32 planes, row-major), and
``b"labels"``. Grayscale and splits are the task's (``data/image.py``).
"""
from __future__ import annotations

import os
import pathlib
import pickle
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data import builder_base

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)],
           "test": ["test_batch"]}
_MANUAL = (f"Download {URL}, extract it (tar xzf) and set data.manual_dir to "
           f"the {FOLDER} folder or the folder holding it; without "
           "data.manual_dir the builder downloads it.")


def find_folder(manual_dir: str | os.PathLike) -> pathlib.Path:
  """The ``cifar-10-batches-py`` folder: ``manual_dir`` or inside it."""
  root = pathlib.Path(manual_dir).expanduser()
  names = [n for split in BATCHES.values() for n in split]
  for path in (root, root / FOLDER):
    if all((path / n).is_file() for n in names):
      return path
  raise FileNotFoundError(
      f"data.manual_dir={os.fspath(manual_dir)!r} holds no CIFAR-10 python "
      f"batches ({', '.join(names)}; tried {os.fspath(root)} and "
      f"{os.fspath(root / FOLDER)}). {_MANUAL}")


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """``(images uint8 [n, 32, 32, 3], labels int64 [n])`` of one pickle;
  ``ValueError`` naming the file when it is not a CIFAR-10 batch."""
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], np.uint8)
    labels = np.asarray(batch[b"labels"], np.int64)
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError,
          ValueError) as e:
    raise ValueError(f"{path}: not a CIFAR-10 python batch "
                     f"({type(e).__name__}: {e})") from None
  if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
    raise ValueError(f"{path}: data {data.shape} and {len(labels)} labels; "
                     "a CIFAR-10 batch has [n, 3072] and n labels")
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise ValueError(f"{path}: labels outside 0..9")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels


class LraImage(builder_base.FolderBuilder):
  """CIFAR-10 RGB images and labels, in the python batches' order."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "cifar-10-batches-py, train and test."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
  URL = URL
  SPLITS = tuple(BATCHES)
  find_folder = staticmethod(find_folder)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html")

  def _generate_examples(self, folder, split) -> Iterator[tuple[int, dict]]:
    index = 0  # The key orders the examples as the files do.
    for name in BATCHES[split]:
      images, labels = read_batch(pathlib.Path(folder) / name)
      for image, label in zip(images, labels):
        yield index, {"image": image, "label": int(label)}
        index += 1


def make_builder(data_config: Any) -> LraImage:
  return builder_base.make_folder_builder(LraImage, data_config)


def prepare(data_config: Any) -> LraImage:
  """Builds the data set if it is missing and returns its builder."""
  return builder_base.prepare_folder(
      LraImage, data_config,
      lambda folder: [folder / n for names in BATCHES.values() for n in names])
