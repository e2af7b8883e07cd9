"""The "passkey" task: retrieve a key hidden in filler text (a causal language model).

Its config namespace is ``config.data.passkey`` (:func:`config`); the generator is
``data.passkey_gen``, the TFDS builder ``data.passkey_builder`` (imported when the
data is built), the element layout ``data.probes``.
"""
from typing import Any, Mapping

import ml_collections
import numpy as np

from configs import checks
from data import passkey_gen
from data import probes
from data import tasks

NAME = "passkey"


def config() -> ml_collections.ConfigDict:
  """``config.data.passkey``: the passkey task's fields and their defaults."""
  cfg = ml_collections.ConfigDict()
  # Tokens per sequence: examples are generated at this length (and padded to it
  # when a stored one is shorter); the model is built for it.
  cfg.max_length = 2000
  # Digits of the pass key (one token each).
  cfg.key_length = 5
  # Where the key sentence sits in the filler (0 = start, 1 = end); None = uniform
  # at random per example, as the official prompt.
  cfg.depth = ml_collections.config_dict.placeholder(float)
  # Train on every next token (a language model) instead of on the answer digits
  # only; the accuracy always scores the answer.
  cfg.lm_loss = False
  return cfg


def fields(data_config: Any) -> ml_collections.ConfigDict:
  """``config.data.passkey`` (the defaults where a config has no such namespace)."""
  return tasks.task_fields(data_config, TASK)


def validate(data_config: ml_collections.ConfigDict) -> None:
  """Checks ``config.data.passkey``; errors name ``data.passkey.<field>``."""
  own = fields(data_config)
  checks.check_int("data.passkey.key_length", own.key_length, minimum=1)
  minimal = passkey_gen.passkey_min_length(own.key_length)
  checks.check_int("data.passkey.max_length", own.max_length, minimum=minimal)
  checks.check_float("data.passkey.depth", own.depth, low=0.0, high=1.0, optional=True)
  checks.check_bool("data.passkey.lm_loss", own.lm_loss)


def task_info(data_config: Any) -> tasks.TaskInfo:
  v = passkey_gen.PASSKEY_VOCAB_SIZE
  return tasks.TaskInfo(num_classes=v, max_length=fields(data_config).max_length,
                        input_kind="tokens", vocab_size=v, pad_id=probes.PAD_ID,
                        output_kind="tokens")


def task_sources(data_config: Any) -> dict[str, tasks.RandomAccessSource]:
  from data import passkey_builder  # pylint: disable=g-import-not-at-top
  builder = passkey_builder.prepare(data_config)
  return {split: builder.as_data_source(split=split) for split in probes.SPLITS}


def preprocess(example: Mapping[str, Any], data_config: Any) -> dict[str, np.ndarray]:
  """Sparse stored example -> dense element padded to ``data.passkey.max_length``,
  with ``loss_mask`` (every next token with ``data.passkey.lm_loss``)."""
  own = fields(data_config)
  return probes.preprocess_sparse(example, max_length=own.max_length,
                                  lm_loss=bool(own.lm_loss))


TASK = tasks.register_task(tasks.Task(
    name=NAME, info=task_info, sources=task_sources, preprocess=preprocess,
    config=config, validate=validate))
