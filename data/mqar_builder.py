"""The MQAR probe's TFDS builder (``probe_mqar``): generated examples, stored sparsely."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import tensorflow_datasets as tfds

from data import mqar_gen
from data import probe_builder
from data import probes
from data import tasks


@dataclasses.dataclass(eq=False)
class MqarConfig(tfds.core.BuilderConfig):
  """Generated MQAR data; everything that changes the data is in the name."""
  length: int = 2000
  num_kv_pairs: int = mqar_gen.MQAR_NUM_KV_PAIRS
  vocab_size: int = mqar_gen.MQAR_VOCAB_SIZE
  power_a: float = mqar_gen.MQAR_POWER_A
  random_non_queries: bool = True
  num_train: int = probes.DEFAULT_SIZES["train"]
  num_validation: int = probes.DEFAULT_SIZES["validation"]
  num_test: int = probes.DEFAULT_SIZES["test"]
  seed: int = 0

  @classmethod
  def make(cls, *, length: int, num_kv_pairs: int, vocab_size: int, power_a: float,
           random_non_queries: bool, sizes: Mapping[str, int],
           seed: int) -> "MqarConfig":
    mqar_gen.check_mqar(length, num_kv_pairs, vocab_size, power_a)
    name = (f"len{length}_kv{num_kv_pairs}_vocab{vocab_size}_a{power_a:g}_"
            f"noise{int(random_non_queries)}_{probe_builder.sizes_name(sizes, seed)}")
    return cls(name=name, length=length, num_kv_pairs=num_kv_pairs,
               vocab_size=vocab_size, power_a=power_a,
               random_non_queries=random_non_queries, num_train=sizes["train"],
               num_validation=sizes["validation"], num_test=sizes["test"], seed=seed,
               description=f"MQAR, {length} tokens, {num_kv_pairs} pairs, vocabulary "
               f"{vocab_size}, power_a {power_a:g}, seed {seed}")

  @property
  def sizes(self) -> dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}

  def sparse_example(self, split: str, index: int):
    rng = probes.example_rng(self.seed, index, stream=probes.SPLITS.index(split))
    return mqar_gen.mqar_sparse(rng, self.length, num_kv_pairs=self.num_kv_pairs,
                       vocab_size=self.vocab_size, power_a=self.power_a,
                       random_non_queries=self.random_non_queries)


_DEFAULT_CONFIG = MqarConfig.make(
    length=2000, num_kv_pairs=mqar_gen.MQAR_NUM_KV_PAIRS,
    vocab_size=mqar_gen.MQAR_VOCAB_SIZE, power_a=mqar_gen.MQAR_POWER_A,
    random_non_queries=True, sizes=probes.DEFAULT_SIZES, seed=0)


class ProbeMqar(probe_builder.ProbeBuilder):
  """Multi-query associative recall (Arora et al. 2023, Zoology)."""

  BUILDER_CONFIGS = [_DEFAULT_CONFIG]

  def _info(self) -> tfds.core.DatasetInfo:
    return self._probe_info(
        description=("Multi-query associative recall: key-value pairs, then queries "
                     "of the keys at power-law distributed slots."),
        homepage="https://github.com/HazyResearch/zoology",
        citation=("@article{arora2023zoology, title={Zoology: Measuring and "
                  "Improving Recall in Efficient Language Models}, author={Arora, "
                  "Simran and Eyuboglu, Sabri and others}, journal={arXiv:2312.04927}, "
                  "year={2023}}"),
    )


# ----------------------------------------------------------------------------
# Tasks.


def builder_config(data_config: Any) -> MqarConfig:
  """From ``config.data``: ``mqar.max_length``, ``mqar.num_kv_pairs``,
  ``mqar.vocab_size``, ``mqar.power_a``, ``mqar.random_non_queries``, the split
  sizes and ``generate_seed``."""
  from data import mqar  # pylint: disable=g-import-not-at-top
  own = mqar.fields(data_config)
  config = MqarConfig.make(
      length=own.max_length, num_kv_pairs=own.num_kv_pairs, vocab_size=own.vocab_size,
      power_a=own.power_a, random_non_queries=bool(own.random_non_queries),
      sizes=probe_builder.split_sizes(data_config),
      seed=tasks.config_field(data_config, "generate_seed", 0))
  return probe_builder.reuse_class_config(config, ProbeMqar)


def prepare(data_config: Any) -> ProbeMqar:
  """Builds the dataset if it is missing and returns its builder."""
  return probe_builder.prepare(ProbeMqar, builder_config(data_config), data_config)
