"""ETT TFDS builder (``ett``, configs ETTh1, ETTh2, ETTm1, ETTm2): the raw rows per split.

Each split (the official 12/4/4 months, ``data.ett.split_rows``) is ONE example of the
rows as parsed (``data.ett.read_csv``); :class:`data.ett.EttWindows` cuts the
forecasting windows at read time, so one build serves every window setting.
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
from data import tasks
from data.ett import (COLUMNS, NAMES, SPLITS, URL, EttOptions, read_csv, rows_per_hour,
                      rows_per_month, split_rows)


def _field(cfg: Any, name: str, default: Any = None) -> Any:
  return tasks.config_field(cfg, name, default)


_DESCRIPTION = (
    "ETT (Zhou et al. 2021): electricity transformer loads HUFL..LULL and oil "
    "temperature OT; the raw rows of the official 12/4/4-month train/validation/test "
    "split, one example per split (date: int64 seconds [n], values: float64 [n, 7]).")

_MANUAL_INSTRUCTIONS = """\
Download ETTh1.csv, ETTh2.csv, ETTm1.csv or ETTm2.csv from
https://github.com/zhouhaoyi/ETDataset (folder ETT-small) and set data.manual_dir to
the folder that holds it. Without data.manual_dir the builder downloads the file.
"""


@dataclasses.dataclass(eq=False)
class EttConfig(tfds.core.BuilderConfig):
  """One ETT file."""


class Ett(builder_base.Builder):
  """ETT raw rows per split (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Raw rows of the official Informer split, one example per split."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = [
      EttConfig(name=n, description=f"{n}.csv, "
                f"{'15-minute' if rows_per_hour(n) == 4 else 'hourly'} rows")
      for n in NAMES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "ETTh1"


  def __init__(self, *, manual_dir: str | os.PathLike | None = None, **kwargs):
    """``manual_dir``: folder holding ``<name>.csv``; None downloads it."""
    self._csv_dir = manual_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            # Raw bytes: the default encoding stores float64 as float32.
            "date": tfds.features.Tensor(shape=(None,), dtype=np.int64,
                                         encoding=tfds.features.Encoding.BYTES),
            "values": tfds.features.Tensor(shape=(None, len(COLUMNS)), dtype=np.float64,
                                           encoding=tfds.features.Encoding.BYTES),
        }),
        homepage="https://github.com/zhouhaoyi/ETDataset",
        citation=("@inproceedings{zhou2021informer, title={Informer: Beyond Efficient "
                  "Transformer for Long Sequence Time-Series Forecasting}, author={Zhou, "
                  "Haoyi and others}, booktitle={AAAI}, year={2021}}"),
    )

  def _split_generators(self, dl_manager):
    name = self.builder_config.name
    if self._csv_dir is not None:
      path = pathlib.Path(self._csv_dir).expanduser() / f"{name}.csv"
      if not path.is_file():
        raise FileNotFoundError(f"no {path}; {_MANUAL_INSTRUCTIONS}")
    else:
      path = dl_manager.download(URL.format(name=name))
    dates, values = read_csv(path)
    ranges = split_rows(name)
    end = ranges["test"][1]
    if dates.shape[0] < end:
      raise ValueError(f"{path} has {dates.shape[0]} rows; the official {name} split "
                       f"needs {end} (20 months of {rows_per_month(name)} rows)")
    return {split: self._generate_examples(split, dates[a:b], values[a:b])
            for split, (a, b) in ranges.items()}

  def _generate_examples(self, split, dates, values):
    yield split, {"date": dates, "values": values}


def make_builder(data_config: Any) -> Ett:
  """The builder for ``config.data`` (data_dir None = TFDS default ~/tensorflow_datasets)."""
  manual_dir = _field(data_config, "manual_dir")
  return Ett(config=EttOptions.from_config(data_config).name,
             data_dir=_field(data_config, "data_dir"), file_format="array_record",
             manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)


def prepare(data_config: Any) -> Ett:
  """Builds the dataset if it is missing and returns its builder."""
  builder = make_builder(data_config)
  name = builder.builder_config.name
  manual_dir = _field(data_config, "manual_dir")
  if manual_dir:
    path = pathlib.Path(manual_dir).expanduser() / f"{name}.csv"
    if not path.is_file():
      raise FileNotFoundError(f"no {path}; {_MANUAL_INSTRUCTIONS}")
    source = provenance.manual_source(manual_dir, [path])
  else:
    source = {"download": URL.format(name=name)}
  provenance.prepare(builder, source, builder.download_and_prepare)
  return builder


def load_rows(data_config: Any) -> tuple[np.ndarray, np.ndarray]:
  """``(dates [n], values [n, 7])`` of the stored rows, splits in order (rows 0..20m)."""
  builder = prepare(data_config)
  dates, values = [], []
  for split in SPLITS:
    source = builder.as_data_source(split=split)
    if len(source) != 1:
      raise ValueError(f"the {split!r} split of {builder.info.full_name} holds "
                       f"{len(source)} examples, expected 1")
    example = source[0]
    dates.append(np.asarray(example["date"], dtype=np.int64))
    values.append(np.asarray(example["values"], dtype=np.float64))
  return np.concatenate(dates), np.concatenate(values)
