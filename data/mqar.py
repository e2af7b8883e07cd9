"""The "mqar" task: multi-query associative recall (Zoology), a causal language model.

Its config namespace is ``config.data.mqar`` (:func:`config`); the generator is
``data.mqar_gen``, the TFDS builder ``data.mqar_builder`` (imported when the data is
built), the element layout ``data.probes``.
"""
from typing import Any, Mapping

import ml_collections
import numpy as np

from configs import checks
from data import mqar_gen
from data import probes
from data import tasks

NAME = "mqar"


def config() -> ml_collections.ConfigDict:
  """``config.data.mqar``: the MQAR task's fields and their defaults (zoology's)."""
  cfg = ml_collections.ConfigDict()
  # Tokens per sequence (at least 4 * num_kv_pairs); the model is built for it.
  cfg.max_length = 2000
  # Key-value pairs per sequence, each key queried once.
  cfg.num_kv_pairs = mqar_gen.MQAR_NUM_KV_PAIRS
  # Exponent of the power law of the gaps between queries (zoology's power_a;
  # 1 = uniform).
  cfg.power_a = mqar_gen.MQAR_POWER_A
  # Vocabulary size (keys from the lower half, values from the upper).
  cfg.vocab_size = mqar_gen.MQAR_VOCAB_SIZE
  # Fill the positions that are neither pairs nor queries with random tokens
  # (True, zoology's default) or with 0.
  cfg.random_non_queries = True
  # Train on every next token (a language model) instead of on the queried values
  # only (zoology's loss); the accuracy always scores the values.
  cfg.lm_loss = False
  return cfg


def fields(data_config: Any) -> ml_collections.ConfigDict:
  """``config.data.mqar`` (the defaults where a config has no such namespace)."""
  return tasks.task_fields(data_config, TASK)


def validate(data_config: ml_collections.ConfigDict) -> None:
  """Checks ``config.data.mqar``; errors name ``data.mqar.<field>``."""
  own = fields(data_config)
  checks.check_int("data.mqar.num_kv_pairs", own.num_kv_pairs, minimum=1)
  checks.check_int("data.mqar.max_length", own.max_length,
                   minimum=mqar_gen.mqar_min_length(own.num_kv_pairs))
  checks.check_int("data.mqar.vocab_size", own.vocab_size,
                   minimum=2 * (own.num_kv_pairs + 1))
  checks.check_float("data.mqar.power_a", own.power_a, low=0.0, low_open=True)
  checks.check_bool("data.mqar.random_non_queries", own.random_non_queries)
  checks.check_bool("data.mqar.lm_loss", own.lm_loss)


def task_info(data_config: Any) -> tasks.TaskInfo:
  own = fields(data_config)
  return tasks.TaskInfo(num_classes=own.vocab_size, max_length=own.max_length,
                        input_kind="tokens", vocab_size=own.vocab_size,
                        pad_id=probes.PAD_ID, output_kind="tokens")


def task_sources(data_config: Any) -> dict[str, tasks.RandomAccessSource]:
  from data import mqar_builder  # pylint: disable=g-import-not-at-top
  builder = mqar_builder.prepare(data_config)
  return {split: builder.as_data_source(split=split) for split in probes.SPLITS}


def preprocess(example: Mapping[str, Any], data_config: Any) -> dict[str, np.ndarray]:
  """Sparse stored example -> dense element padded to ``data.mqar.max_length``,
  with ``loss_mask`` (every next token with ``data.mqar.lm_loss``)."""
  own = fields(data_config)
  return probes.preprocess_sparse(example, max_length=own.max_length,
                                  lm_loss=bool(own.lm_loss))


TASK = tasks.register_task(tasks.Task(
    name=NAME, info=task_info, sources=task_sources, preprocess=preprocess,
    config=config, validate=validate))
