"""The "retrieval" task: LRA Retrieval (AAN), whether two papers cite each
other, from their bytes.

As the LRA pipeline has it (lra_benchmarks/matching/input_pipeline.py): the
release's ``tsv_data/new_aan_pairs.{train,eval,test}.tsv`` (no header; label,
id1, id2, text1, text2, tab-separated; quote characters are text), each text
as ``byte + 1`` ids (0 pads, vocabulary 257) cut to ``data.retrieval.
max_length`` bytes (4000); 147,086 / 18,090 / 17,437 pairs. An example's
``inputs`` are ``[2, max_length]``: the two documents, which the model encodes
with one shared backbone (models/classifier.py, ``output_kind="pair"``).

Its config namespace is ``config.data.retrieval``; the reader and the TFDS
builder are ``data.retrieval_builder`` (imported when the data is built).
"""
from typing import Any, Mapping

import ml_collections
import numpy as np

from configs import checks
from data import tasks

NAME = "retrieval"
NUM_CLASSES = 2
PAD_ID = 0
VOCAB_SIZE = 257


def config() -> ml_collections.ConfigDict:
  """``config.data.retrieval``: the Retrieval task's fields."""
  cfg = ml_collections.ConfigDict()
  # Bytes per document (LRA: 4000); longer ones are cut, shorter ones padded.
  cfg.max_length = 4000
  return cfg


def validate(data_config: ml_collections.ConfigDict) -> None:
  own = tasks.task_fields(data_config, TASK)
  checks.check_int(f"data.{NAME}.max_length", own.max_length, minimum=1)
  if not tasks.config_field(data_config, "manual_dir"):
    checks.fail("data.manual_dir", None,
                "cannot be None for data.task='retrieval': the AAN pairs are "
                "read from the LRA release (lra_release.gz, no download); "
                "set data.manual_dir to the extracted release")


def task_info(data_config: Any) -> tasks.TaskInfo:
  return tasks.TaskInfo(
      num_classes=NUM_CLASSES,
      max_length=tasks.task_fields(data_config, TASK).max_length,
      input_kind="tokens", vocab_size=VOCAB_SIZE, pad_id=PAD_ID,
      output_kind="pair")


def task_sources(data_config: Any) -> dict[str, tasks.RandomAccessSource]:
  from data import retrieval_builder  # pylint: disable=g-import-not-at-top
  builder = retrieval_builder.prepare(data_config)
  out = {}
  for i, split in enumerate(("train", "validation", "test")):
    out[split] = builder.as_data_source(split=split)
    size = tasks.config_field(data_config, f"num_{split}")
    if size is not None:  # A fixed random subset (the cpu/test presets).
      out[split] = tasks.Subset(out[split], size, seed=i,
                                field=f"data.num_{split}")
  return out


def preprocess(example: Mapping[str, Any], data_config: Any) -> dict[str, np.ndarray]:
  """Both documents cut/padded to ``data.retrieval.max_length``: ``inputs``
  and ``mask`` ``[2, max_length]``."""
  n = tasks.task_fields(data_config, TASK).max_length
  inputs = np.full((2, n), PAD_ID, np.int32)
  mask = np.zeros((2, n), bool)
  for row, key in enumerate(("inputs1", "inputs2")):
    ids = np.asarray(example[key], np.int32)[:n]
    inputs[row, :len(ids)] = ids
    mask[row, :len(ids)] = True
  return {"inputs": inputs, "mask": mask,
          "targets": np.asarray(example["targets"], np.int32)}


TASK = tasks.register_task(tasks.Task(
    name=NAME, info=task_info, sources=task_sources, preprocess=preprocess,
    config=config, validate=validate))
