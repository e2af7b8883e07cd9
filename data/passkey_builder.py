"""The passkey probe's TFDS builder (``probe_passkey``): generated prompts, stored sparsely."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import tensorflow_datasets as tfds

from data import passkey_gen
from data import probe_builder
from data import probes
from data import tasks


@dataclasses.dataclass(eq=False)
class PasskeyConfig(tfds.core.BuilderConfig):
  """Generated passkey data; everything that changes the data is in the name."""
  length: int = 2000
  key_length: int = 5
  depth: float | None = None
  num_train: int = probes.DEFAULT_SIZES["train"]
  num_validation: int = probes.DEFAULT_SIZES["validation"]
  num_test: int = probes.DEFAULT_SIZES["test"]
  seed: int = 0

  @classmethod
  def make(cls, *, length: int, key_length: int, depth: float | None,
           sizes: Mapping[str, int], seed: int) -> "PasskeyConfig":
    passkey_gen.check_depth(depth)
    minimal = passkey_gen.passkey_min_length(key_length)
    if length < minimal:
      raise ValueError(f"{length=} is below the passkey minimum {minimal} "
                       f"for {key_length=}")
    depth_name = "uniform" if depth is None else f"{depth:g}"
    name = (f"len{length}_key{key_length}_depth{depth_name}_"
            f"{probe_builder.sizes_name(sizes, seed)}")
    return cls(name=name, length=length, key_length=key_length, depth=depth,
               num_train=sizes["train"], num_validation=sizes["validation"],
               num_test=sizes["test"], seed=seed,
               description=f"passkey, {length} tokens, {key_length}-digit key, "
               f"depth {depth_name}, seed {seed}")

  @property
  def sizes(self) -> dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}

  def sparse_example(self, split: str, index: int):
    rng = probes.example_rng(self.seed, index, stream=probes.SPLITS.index(split))
    return passkey_gen.passkey_draw(rng, self.length, self.key_length, self.depth)


_DEFAULT_CONFIG = PasskeyConfig.make(
    length=2000, key_length=5, depth=None, sizes=probes.DEFAULT_SIZES, seed=0)


class ProbePasskey(probe_builder.ProbeBuilder):
  """Passkey retrieval (Mohtashami & Jaggi 2023), word-level tokens."""

  BUILDER_CONFIGS = [_DEFAULT_CONFIG]

  def _info(self) -> tfds.core.DatasetInfo:
    return self._probe_info(
        description=("Passkey retrieval: a key hidden in filler text, asked for at "
                     "the end; word-level ids of data/passkey_gen.py PASSKEY_VOCAB."),
        homepage="https://github.com/epfml/landmark-attention",
        citation=("@article{mohtashami2023landmark, title={Landmark Attention: "
                  "Random-Access Infinite Context Length for Transformers}, "
                  "author={Mohtashami, Amirkeivan and Jaggi, Martin}, "
                  "journal={arXiv:2305.16300}, year={2023}}"),
    )


def builder_config(data_config: Any) -> PasskeyConfig:
  """From ``config.data``: ``passkey.max_length``, ``passkey.key_length``,
  ``passkey.depth`` (None = uniform), the split sizes and ``generate_seed``."""
  from data import passkey  # pylint: disable=g-import-not-at-top
  own = passkey.fields(data_config)
  config = PasskeyConfig.make(
      length=own.max_length, key_length=own.key_length, depth=own.depth,
      sizes=probe_builder.split_sizes(data_config),
      seed=tasks.config_field(data_config, "generate_seed", 0))
  return probe_builder.reuse_class_config(config, ProbePasskey)


def prepare(data_config: Any) -> ProbePasskey:
  """Builds the dataset if it is missing and returns its builder."""
  return probe_builder.prepare(ProbePasskey, builder_config(data_config), data_config)
