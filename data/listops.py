"""The "listops" task: LRA ListOps, a ten-way classification of nested expressions.

Its config namespace is ``config.data.listops`` (:func:`config`); the generator and
the official file format are ``data.listops_gen``, the TFDS builder
``data.listops_builder`` (imported when the data is built, so that building a config
imports no TFDS).
"""
from typing import Any, Mapping

import ml_collections
import numpy as np

from configs import checks
from data import tasks
from data.listops_gen import NUM_CLASSES, PAD_ID, SPLITS, VOCAB_SIZE, GeneratorOptions

NAME = "listops"


def config() -> ml_collections.ConfigDict:
  """``config.data.listops``: the ListOps task's fields and their defaults."""
  cfg = ml_collections.ConfigDict()
  # Sequence length in tokens: inputs are truncated or padded to it, and the model
  # is built for it (LRA uses 2000).
  cfg.max_length = 2000
  # Generated data only (data.manual_dir None): the LRA generator's flags
  # (data/listops_gen.py GeneratorOptions; the defaults are LRA's). An expression is
  # kept iff generate_min_length < length < generate_max_length, its length counted
  # in tokens without parentheses (as LRA's generator counts it).
  options = GeneratorOptions()
  cfg.generate_min_length = options.min_length
  cfg.generate_max_length = options.max_length
  # Nodes at this depth are leaves (the root has depth 1).
  cfg.generate_max_depth = options.max_depth
  # An operator takes 2..generate_max_args arguments.
  cfg.generate_max_args = options.max_args
  # Probability that a node above the depth limit is an operator.
  cfg.generate_value_p = options.value_p
  return cfg


def validate(data_config: ml_collections.ConfigDict) -> None:
  """Checks ``config.data.listops``; errors name ``data.listops.<field>``."""
  own = tasks.task_fields(data_config, TASK)
  prefix = f"data.{NAME}"
  checks.check_int(f"{prefix}.max_length", own.max_length, minimum=1)
  checks.check_int(f"{prefix}.generate_min_length", own.generate_min_length, minimum=0)
  checks.check_int(f"{prefix}.generate_max_length", own.generate_max_length, minimum=1)
  if own.generate_max_length - own.generate_min_length < 2:
    checks.fail(f"{prefix}.generate_max_length", own.generate_max_length,
                f"leaves no length n with {prefix}.generate_min_length="
                f"{own.generate_min_length} < n < generate_max_length")
  checks.check_int(f"{prefix}.generate_max_depth", own.generate_max_depth, minimum=2)
  checks.check_int(f"{prefix}.generate_max_args", own.generate_max_args, minimum=2)
  checks.check_float(f"{prefix}.generate_value_p", own.generate_value_p, low=0.0,
                     high=1.0, low_open=True)


def task_info(data_config: Any) -> tasks.TaskInfo:
  return tasks.TaskInfo(
      num_classes=NUM_CLASSES,
      max_length=tasks.task_fields(data_config, TASK).max_length,
      input_kind="tokens",
      vocab_size=VOCAB_SIZE,
      pad_id=PAD_ID,
  )


def task_sources(data_config: Any) -> dict[str, tasks.RandomAccessSource]:
  from data import listops_builder  # pylint: disable=g-import-not-at-top
  builder = listops_builder.prepare(data_config)
  return {split: builder.as_data_source(split=split) for split in SPLITS}


def preprocess(example: Mapping[str, Any], data_config: Any) -> dict[str, np.ndarray]:
  """Truncates/pads the ids to ``data.listops.max_length``; adds the mask (True =
  token)."""
  max_length = tasks.task_fields(data_config, TASK).max_length
  ids = np.asarray(example["inputs"], dtype=np.int32)[:max_length]
  inputs = np.full((max_length,), PAD_ID, dtype=np.int32)
  inputs[:ids.shape[0]] = ids
  return {
      "inputs": inputs,
      "mask": np.arange(max_length) < ids.shape[0],
      "targets": np.asarray(example["targets"], dtype=np.int32),
  }


TASK = tasks.register_task(tasks.Task(
    name=NAME, info=task_info, sources=task_sources, preprocess=preprocess,
    config=config, validate=validate))
