"""The "text" task: LRA Text, byte-level IMDB sentiment (two classes).

As the LRA pipeline has it (lra_benchmarks/text_classification/
input_pipeline.py ``get_tc_datasets`` over TFDS ``imdb_reviews``): each review
is its file's bytes with surrounding whitespace stripped (TFDS's reading),
encoded as ids ``byte + 1`` (tfds ``ByteTextEncoder``: 1..256, 0 pads, a
vocabulary of 257), truncated to ``data.text.max_length``; labels neg 0, pos 1;
25,000 train and 25,000 test reviews, the test split also serving as
validation. LRA's config uses 1000 bytes; S4 and S5 use 4096 (the default).
``data.num_<split>`` takes a fixed random subset of a split (small runs).

Its config namespace is ``config.data.text``; the reader and the TFDS builder
are ``data.text_builder`` (imported when the data is built).
"""
from typing import Any, Mapping

import ml_collections
import numpy as np

from configs import checks
from data import tasks

NAME = "text"
NUM_CLASSES = 2
PAD_ID = 0
VOCAB_SIZE = 257  # Byte values 0..255 as ids 1..256, and padding 0.
# Where each split comes from: LRA evaluates on the test reviews for both.
SPLIT_SOURCES = {"train": "train", "validation": "test", "test": "test"}


def config() -> ml_collections.ConfigDict:
  """``config.data.text``: the Text task's fields and their defaults."""
  cfg = ml_collections.ConfigDict()
  # Bytes per review: longer ones are truncated, shorter ones padded (LRA's
  # config: 1000; S4 and S5: 4096).
  cfg.max_length = 4096
  return cfg


def validate(data_config: ml_collections.ConfigDict) -> None:
  """Checks ``config.data.text``; errors name ``data.text.<field>``."""
  own = tasks.task_fields(data_config, TASK)
  checks.check_int(f"data.{NAME}.max_length", own.max_length, minimum=1)


def task_info(data_config: Any) -> tasks.TaskInfo:
  return tasks.TaskInfo(
      num_classes=NUM_CLASSES,
      max_length=tasks.task_fields(data_config, TASK).max_length,
      input_kind="tokens", vocab_size=VOCAB_SIZE, pad_id=PAD_ID)


def task_sources(data_config: Any) -> dict[str, tasks.RandomAccessSource]:
  from data import text_builder  # pylint: disable=g-import-not-at-top
  builder = text_builder.prepare(data_config)
  out = {}
  for i, (split, source) in enumerate(SPLIT_SOURCES.items()):
    out[split] = builder.as_data_source(split=source)
    size = tasks.config_field(data_config, f"num_{split}")
    if size is not None:  # A fixed random subset (the cpu/test presets).
      out[split] = tasks.Subset(out[split], size, seed=i,
                                field=f"data.num_{split}")
  return out


def encode(text: bytes) -> np.ndarray:
  """``byte + 1`` ids of ``text`` (int32)."""
  return np.frombuffer(text, dtype=np.uint8).astype(np.int32) + 1


def preprocess(example: Mapping[str, Any], data_config: Any) -> dict[str, np.ndarray]:
  """Truncates/pads the ids to ``data.text.max_length``; adds the mask."""
  max_length = tasks.task_fields(data_config, TASK).max_length
  ids = np.asarray(example["inputs"], dtype=np.int32)[:max_length]
  inputs = np.full((max_length,), PAD_ID, dtype=np.int32)
  inputs[:ids.shape[0]] = ids
  return {"inputs": inputs, "mask": np.arange(max_length) < ids.shape[0],
          "targets": np.asarray(example["targets"], dtype=np.int32)}


TASK = tasks.register_task(tasks.Task(
    name=NAME, info=task_info, sources=task_sources, preprocess=preprocess,
    config=config, validate=validate))
