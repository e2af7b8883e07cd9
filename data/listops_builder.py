"""LRA ListOps TFDS builder: the official TSVs (data.manual_dir) or generated ones.

The ``official`` config reads ``basic_{train,val,test}.tsv`` from the release folder
``listops-1000`` (found by :func:`data.release.find_release_dir` in every layout the
tarball unpacks to); the ``gen_*`` configs run the LRA generator
(``data.listops_gen``) and write the same files first. Examples are the token ids of
``listops_gen.VOCAB`` and the 0..9 target; array_record files, read without
TensorFlow.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data import builder_base
from data import provenance
from data import release
from data import tasks
from data.listops_gen import (GeneratorOptions, NUM_CLASSES, OFFICIAL_SIZES, RELEASE_DIR,
                              SPLIT_FILES, SPLITS, generate_splits, read_tsv, write_splits)


def find_split_files(manual_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """The three TSVs of the release folder ``listops-1000`` under ``manual_dir``
  (or in ``manual_dir`` itself); see :mod:`data.release` for the layouts."""
  folder = release.find_release_dir(
      manual_dir, RELEASE_DIR,
      accept=lambda path: all((path / name).is_file() for name in SPLIT_FILES.values()),
      expected=f"the files {sorted(SPLIT_FILES.values())}",
      hint="Download lra_release.gz from github.com/google-research/long-range-arena, "
      "extract it and point data.manual_dir at lra_release/listops-1000 (or a folder "
      "above it).")
  return {split: folder / name for split, name in SPLIT_FILES.items()}


# ----------------------------------------------------------------------------
# TFDS builder.

_DESCRIPTION = (
    "LRA ListOps (Tay et al. 2021; Nangia & Bowman 2018): the value 0..9 of a nested "
    "MIN/MAX/MED/SM expression over digits, as token ids of data/listops_gen.py VOCAB.")

_MANUAL_INSTRUCTIONS = """\
Download lra_release.gz from https://github.com/google-research/long-range-arena,
extract it (tar xzf), and set data.manual_dir to the folder holding
basic_{train,val,test}.tsv (lra_release/listops-1000), to lra_release, or to its
parent. Without data.manual_dir the builder generates the data with the LRA
generator instead.
"""


@dataclasses.dataclass(eq=False)
class ListopsConfig(tfds.core.BuilderConfig):
  """``source="manual"`` reads the official TSVs; ``"generated"`` runs the generator."""
  source: str = "manual"
  num_train: int = OFFICIAL_SIZES["train"]
  num_validation: int = OFFICIAL_SIZES["validation"]
  num_test: int = OFFICIAL_SIZES["test"]
  seed: int = 0
  options: GeneratorOptions = GeneratorOptions()

  @classmethod
  def generated(cls, num_train: int, num_validation: int, num_test: int, seed: int,
                options: GeneratorOptions) -> "ListopsConfig":
    o = options
    # Everything that changes the data is in the name, so sizes never collide.
    name = (f"gen_n{num_train}-{num_validation}-{num_test}_seed{seed}"
            f"_len{o.min_length}-{o.max_length}_depth{o.max_depth}_args{o.max_args}"
            f"_p{o.value_p:g}")
    return cls(name=name, source="generated", num_train=num_train,
               num_validation=num_validation, num_test=num_test, seed=seed,
               options=options,
               description=f"LRA generator, seed {seed}, {options}")

  @property
  def sizes(self) -> dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}


_OFFICIAL_CONFIG = ListopsConfig(
    name="official", source="manual",
    description="The LRA release files lra_release/listops-1000/basic_*.tsv.")
_GENERATED_DEFAULT_CONFIG = ListopsConfig.generated(
    OFFICIAL_SIZES["train"], OFFICIAL_SIZES["validation"], OFFICIAL_SIZES["test"],
    seed=0, options=GeneratorOptions())


class LraListops(builder_base.Builder):
  """LRA ListOps as int32 token ids (``listops_gen.VOCAB``) and a 0..9 target."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Token ids with the fixed vocabulary of data/listops_gen.py."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = [_OFFICIAL_CONFIG, _GENERATED_DEFAULT_CONFIG]
  DEFAULT_BUILDER_CONFIG_NAME = "official"


  def __init__(self, *, generate_workers: int = 1, **kwargs):
    self._generate_workers = generate_workers
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "targets": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("inputs", "targets"),
        homepage="https://github.com/google-research/long-range-arena",
        citation=("@inproceedings{tay2021long, title={Long Range Arena: A Benchmark "
                  "for Efficient Transformers}, author={Tay, Yi and others}, "
                  "booktitle={ICLR}, year={2021}}"),
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    if config.source == "manual":
      files = find_split_files(dl_manager.manual_dir)
    else:
      out_dir = pathlib.Path(dl_manager.download_dir) / "lra_listops_generated" / config.name
      files = {s: out_dir / SPLIT_FILES[s] for s in SPLITS}
      if not all(p.is_file() for p in files.values()):
        splits = generate_splits(config.sizes, seed=config.seed, options=config.options,
                                 workers=self._generate_workers)
        write_splits(out_dir, splits)
    return {split: self._generate_examples(files[split]) for split in SPLITS}

  def _generate_examples(self, path):
    for line_number, ids, target in read_tsv(path):
      yield line_number, {"inputs": ids, "targets": target}

# ----------------------------------------------------------------------------
# From config.data.


def _field(cfg: Any, name: str, default: Any = None) -> Any:
  return tasks.config_field(cfg, name, default)


def generator_options(data_config: Any) -> GeneratorOptions:
  """The generator fields of ``config.data.listops`` (``generate_min_length``,
  ``generate_max_length``, ``generate_max_depth``, ``generate_max_args``,
  ``generate_value_p``); missing ones take the official values."""
  from data import listops  # pylint: disable=g-import-not-at-top
  own = tasks.task_fields(data_config, listops.TASK)
  defaults = GeneratorOptions()
  return GeneratorOptions(**{
      f.name: _field(own, f"generate_{f.name}", getattr(defaults, f.name))
      for f in dataclasses.fields(GeneratorOptions)
  })


def builder_config(data_config: Any) -> ListopsConfig:
  if _field(data_config, "manual_dir"):
    return _OFFICIAL_CONFIG
  config = ListopsConfig.generated(
      _field(data_config, "num_train", OFFICIAL_SIZES["train"]),
      _field(data_config, "num_validation", OFFICIAL_SIZES["validation"]),
      _field(data_config, "num_test", OFFICIAL_SIZES["test"]),
      seed=_field(data_config, "generate_seed", 0),
      options=generator_options(data_config))
  # TFDS rejects a new config object named like a class config: reuse that one.
  if config.name == _GENERATED_DEFAULT_CONFIG.name:
    return _GENERATED_DEFAULT_CONFIG
  return config


def make_builder(data_config: Any) -> LraListops:
  """The builder for ``config.data`` (data_dir None = TFDS default ~/tensorflow_datasets)."""
  return LraListops(
      config=builder_config(data_config),
      data_dir=_field(data_config, "data_dir"),
      file_format="array_record",
      generate_workers=_field(data_config, "generate_workers", 1),
  )


def prepare(data_config: Any) -> LraListops:
  """Builds the dataset if it is missing and returns its builder."""
  builder = make_builder(data_config)
  manual_dir = _field(data_config, "manual_dir")
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
  config = builder.builder_config
  if manual_dir:
    source = provenance.manual_source(
        manual_dir, find_split_files(os.path.expanduser(manual_dir)).values())
  else:
    source = provenance.generated_source(
        {"sizes": config.sizes, "seed": config.seed,
         "options": dataclasses.asdict(config.options)})
  provenance.prepare(builder, source, lambda: builder.download_and_prepare(
      download_config=download_config))
  return builder
