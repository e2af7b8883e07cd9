"""ETT (Electricity Transformer Temperature): CSV reader, forecasting windows, the task.

ETT (Zhou et al., 2021, "Informer: Beyond Efficient Transformer for Long Sequence
Time-Series Forecasting"; data github.com/zhouhaoyi/ETDataset, folder ``ETT-small``):
two years of an electricity transformer's load and oil temperature, one CSV per
station and sampling rate, ``ETTh1``/``ETTh2`` hourly and ``ETTm1``/``ETTm2`` every 15
minutes, with the header ``date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT`` (the six loads and
the oil temperature ``OT``, the usual forecasting target).

Facts taken from the official code (zhouhaoyi/Informer2020, ``data/data_loader.py``
``Dataset_ETT_hour`` / ``Dataset_ETT_minute``, ``utils/timefeatures.py``,
``utils/tools.py`` ``StandardScaler``, ``exp/exp_informer.py``):

* A month is ``30 * 24`` rows (``x 4`` for ETTm). Split ``s`` covers the rows
  ``[start, end)`` = train ``[0, 12m)``, validation ``[12m, 16m)``, test
  ``[16m, 20m)``; the rows after 20 months are unused. The windows of split ``s``
  read the rows ``border1 = start - seq_len`` (0 for train) to ``border2 = end``
  (hourly: borders ``0, 8640 - seq_len, 11520 - seq_len`` / ``8640, 11520, 14400``),
  so the first validation/test window's input ends where the split starts.
* Scaling: per column ``(x - mean) / std`` with the mean and the (population,
  ``ddof=0``) standard deviation of the TRAINING rows ``[0, 12m)``, for every split.
* Features: ``"M"`` all 7 columns in and out; ``"S"`` the target column only;
  ``"MS"`` all 7 in, the target out. The official code predicts the LAST column for
  ``"MS"`` (``f_dim = -1``), which is ``OT`` in every ETT file; here the ``target``
  column is predicted, the same thing for the default target ``"OT"``.
* Window ``i`` (``i`` in ``0 .. len - seq_len - pred_len``, ``len = border2 -
  border1``): encoder rows ``[i, i + seq_len)``; decoder rows ``[r_begin, r_end)``
  with ``r_begin = i + seq_len - label_len`` and ``r_end = r_begin + label_len +
  pred_len``. The model sees the first ``label_len`` decoder rows (the official
  ``dec_inp`` = those rows then ``pred_len`` zeros) and predicts the last
  ``pred_len`` (``batch_y[:, -pred_len:, f_dim:]``).
* Time features of each row's date (``embed="timeF"`` gives ``timeenc=1``, else 0):
  ``timeenc=1``: per ``freq``, features scaled to ``[-0.5, 0.5]``, for ``"h"``
  ``[HourOfDay, DayOfWeek, DayOfMonth, DayOfYear]`` = ``hour/23 - .5``,
  ``weekday/6 - .5`` (Monday 0), ``(day - 1)/30 - .5``, ``(dayofyear - 1)/365 - .5``;
  ``"t"`` (minutes) puts ``MinuteOfHour = minute/59 - .5`` first; ``timeenc=0``:
  the integers ``[month, day, weekday, hour]`` (``"h"``), ``+ minute // 15``
  (``"t"``). :func:`time_features` has every frequency of the official table.

Storage. The builder ``ett`` (``data.ett_builder``; configs ``ETTh1``, ``ETTh2``,
``ETTm1``, ``ETTm2``)
stores the raw rows of each split as ONE example: ``date`` int64 ``[n]`` (seconds
since 1970-01-01, naive local time as written in the file) and ``values`` float64
``[n, 7]`` exactly as parsed (the official code reads float64 with pandas). Windows
are cut at read time by :class:`EttWindows`, so one build serves every
``seq_len``/``label_len``/``pred_len``/``features``/``timeenc`` setting.

Element of the ``ett`` task (float32 unless said; ``c_in`` = 7 for M/MS, 1 for S;
``c_out`` = 7 for M, 1 for S/MS; ``nt`` time features)::

  inputs          [seq_len, c_in]             scaled encoder rows
  mask            bool [seq_len]              all True
  inputs_time     [seq_len, nt]               time features of the encoder rows
  decoder_inputs  [label_len, c_in]           scaled rows r_begin .. r_begin+label_len
  decoder_time    [label_len + pred_len, nt]  time features of rows r_begin .. r_end
  targets         [pred_len, c_out]           scaled rows r_begin+label_len .. r_end
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import re
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from configs import checks
from data import tasks

HEADER = ("date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
COLUMNS = HEADER[1:]
NAMES = ("ETTh1", "ETTh2", "ETTm1", "ETTm2")
SPLITS = ("train", "validation", "test")
URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{name}.csv"
FEATURES = ("M", "S", "MS")
# Months (30 days) per split, in order (official borders: 12, 4, 4 months).
SPLIT_MONTHS = {"train": (0, 12), "validation": (12, 16), "test": (16, 20)}
EXTRA_INPUTS = ("inputs_time", "decoder_inputs", "decoder_time")


def rows_per_hour(name: str) -> int:
  """1 for the hourly files ``ETTh*``, 4 for the 15-minute files ``ETTm*``."""
  if name not in NAMES:
    raise ValueError(f"unknown ETT file {name!r}; known: {NAMES}")
  return 4 if name.startswith("ETTm") else 1


def rows_per_month(name: str) -> int:
  """Rows in the official 30-day month: ``30 * 24`` (x4 for ETTm)."""
  return 30 * 24 * rows_per_hour(name)


def split_rows(name: str) -> dict[str, tuple[int, int]]:
  """``{split: (start, end)}`` row ranges of the official 12/4/4-month split."""
  month = rows_per_month(name)
  return {s: (a * month, b * month) for s, (a, b) in SPLIT_MONTHS.items()}


def window_borders(name: str, split: str, seq_len: int) -> tuple[int, int]:
  """``(border1, border2)``: the rows split ``split``'s windows read (official)."""
  if split not in SPLITS:
    raise ValueError(f"unknown {split=}; known: {SPLITS}")
  start, end = split_rows(name)[split]
  return (0 if split == "train" else start - seq_len), end


# ----------------------------------------------------------------------------
# CSV reader.


def read_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads an ETT CSV.

  Returns:
    ``(dates, values)``: int64 ``[n]`` seconds since 1970-01-01 (the written
    local time, no time zone) and float64 ``[n, 7]`` in ``COLUMNS`` order.

  Raises:
    ValueError: naming the file and 1-based line, for a header other than
      ``HEADER``, a line without 8 comma-separated fields, a date numpy cannot
      parse or a value that is not a number.
  """
  path = os.fspath(path)
  dates: list[int] = []
  rows: list[list[float]] = []
  with open(path, newline="") as f:
    header = f.readline().rstrip("\r\n").lstrip("\ufeff")
    if tuple(h.strip() for h in header.split(",")) != HEADER:
      raise ValueError(f"{path}:1: expected the header {','.join(HEADER)!r}, "
                       f"got {header[:80]!r}")
    for line_number, line in enumerate(f, start=2):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue  # a trailing empty line, as pandas skips it
      fields = line.split(",")
      if len(fields) != len(HEADER):
        raise ValueError(f"{path}:{line_number}: expected {len(HEADER)} comma-separated "
                         f"fields ({','.join(HEADER)}), got {len(fields)}: {line[:80]!r}")
      try:
        date = np.datetime64(fields[0].strip(), "s")
      except ValueError as e:
        raise ValueError(f"{path}:{line_number}: bad date {fields[0]!r}: {e}") from None
      if np.isnat(date):
        raise ValueError(f"{path}:{line_number}: bad date {fields[0]!r}")
      try:
        row = [float(v) for v in fields[1:]]
      except ValueError:
        raise ValueError(f"{path}:{line_number}: a value is not a number: "
                         f"{line[:80]!r}") from None
      dates.append(int(date.astype(np.int64)))
      rows.append(row)
  return (np.asarray(dates, dtype=np.int64),
          np.asarray(rows, dtype=np.float64).reshape(-1, len(COLUMNS)))


# ----------------------------------------------------------------------------
# Time features (utils/timefeatures.py).

_FREQ_RE = re.compile(r"\s*(\d*)\s*([A-Za-z]+)\s*")
_FREQ_UNITS = {"y": "y", "a": "y", "q": "q", "m": "m", "w": "w", "d": "d", "b": "b",
               "h": "h", "t": "t", "min": "t", "s": "s"}
# timeenc=1: the features of each pandas offset type (``features_by_offsets``).
_TIMEF_FEATURES = {
    "y": (),
    "q": ("month_of_year",),
    "m": ("month_of_year",),
    "w": ("day_of_month", "week_of_year"),
    "d": ("day_of_week", "day_of_month", "day_of_year"),
    "b": ("day_of_week", "day_of_month", "day_of_year"),
    "h": ("hour_of_day", "day_of_week", "day_of_month", "day_of_year"),
    "t": ("minute_of_hour", "hour_of_day", "day_of_week", "day_of_month", "day_of_year"),
    "s": ("second_of_minute", "minute_of_hour", "hour_of_day", "day_of_week",
          "day_of_month", "day_of_year"),
}
# timeenc=0: integer calendar fields (``freq_map``; no "q" or "s" entry officially).
_CALENDAR_FEATURES = {
    "y": (),
    "m": ("month",),
    "w": ("month",),
    "d": ("month", "day", "weekday"),
    "b": ("month", "day", "weekday"),
    "h": ("month", "day", "weekday", "hour"),
    "t": ("month", "day", "weekday", "hour", "minute15"),
}


def freq_unit(freq: str) -> str:
  """The unit of a frequency string (``"h"``, ``"15min"``, ``"t"``, ``"D"`` ...):
  one of y, q, m, w, d, b, h, t, s."""
  match = _FREQ_RE.fullmatch(freq)
  unit = match and _FREQ_UNITS.get(match.group(2).lower())
  if not unit:
    raise ValueError(f"unsupported {freq=}; use [multiple]unit with unit one of "
                     f"{sorted(_FREQ_UNITS)} (case-insensitive)")
  return unit


def time_feature_names(timeenc: int = 1, freq: str = "h") -> tuple[str, ...]:
  unit = freq_unit(freq)
  if timeenc == 1:
    return _TIMEF_FEATURES[unit]
  if timeenc == 0:
    if unit not in _CALENDAR_FEATURES:
      raise ValueError(f"{freq=} has no timeenc=0 features; use one of "
                       f"{sorted(_CALENDAR_FEATURES)}")
    return _CALENDAR_FEATURES[unit]
  raise ValueError(f"{timeenc=} must be 0 (calendar integers) or 1 (timeF)")


def num_time_features(timeenc: int = 1, freq: str = "h") -> int:
  return len(time_feature_names(timeenc, freq))


def _calendar(seconds: np.ndarray) -> dict[str, np.ndarray]:
  """Calendar fields (int64) of naive timestamps in seconds."""
  stamps = np.asarray(seconds, dtype=np.int64).astype("datetime64[s]")
  days = stamps.astype("datetime64[D]")
  months = stamps.astype("datetime64[M]")
  years = stamps.astype("datetime64[Y]")
  second_of_day = (stamps - days).astype(np.int64)
  return {
      "second": second_of_day % 60,
      "minute": second_of_day // 60 % 60,
      "hour": second_of_day // 3600,
      # 1970-01-01 was a Thursday (weekday 3, Monday = 0).
      "weekday": (days.astype(np.int64) + 3) % 7,
      "day": (days - months.astype("datetime64[D]")).astype(np.int64) + 1,
      "month": months.astype(np.int64) % 12 + 1,
      "dayofyear": (days - years.astype("datetime64[D]")).astype(np.int64) + 1,
  }


def _iso_week(seconds: np.ndarray) -> np.ndarray:
  epoch = datetime.datetime(1970, 1, 1)
  return np.array([(epoch + datetime.timedelta(seconds=int(s))).isocalendar()[1]
                   for s in np.asarray(seconds).reshape(-1)], dtype=np.int64)


def time_features(seconds: np.ndarray, *, timeenc: int = 1,
                  freq: str = "h") -> np.ndarray:
  """Time features of timestamps, as ``utils/timefeatures.py`` ``time_features``.

  Args:
    seconds: int64 ``[n]`` seconds since 1970-01-01 (naive).
    timeenc: 1 for the ``[-0.5, 0.5]`` "timeF" features, 0 for calendar integers.
    freq: sampling frequency string, e.g. ``"h"`` or ``"t"``/``"15min"``.

  Returns:
    float64 ``[n, nt]`` (integers for ``timeenc=0``).
  """
  names = time_feature_names(timeenc, freq)
  seconds = np.asarray(seconds, dtype=np.int64)
  cal = _calendar(seconds)
  scaled = {
      "second_of_minute": lambda: cal["second"] / 59.0 - 0.5,
      "minute_of_hour": lambda: cal["minute"] / 59.0 - 0.5,
      "hour_of_day": lambda: cal["hour"] / 23.0 - 0.5,
      "day_of_week": lambda: cal["weekday"] / 6.0 - 0.5,
      "day_of_month": lambda: (cal["day"] - 1) / 30.0 - 0.5,
      "day_of_year": lambda: (cal["dayofyear"] - 1) / 365.0 - 0.5,
      "month_of_year": lambda: (cal["month"] - 1) / 11.0 - 0.5,
      "week_of_year": lambda: (_iso_week(seconds) - 1) / 52.0 - 0.5,
      "month": lambda: cal["month"],
      "day": lambda: cal["day"],
      "weekday": lambda: cal["weekday"],
      "hour": lambda: cal["hour"],
      "minute15": lambda: cal["minute"] // 15,
  }
  columns = [np.asarray(scaled[n](), dtype=np.float64) for n in names]
  if not columns:
    return np.zeros((seconds.shape[0], 0), dtype=np.float64)
  return np.stack(columns, axis=-1)


# ----------------------------------------------------------------------------
# Scaling and windows.


@dataclasses.dataclass(frozen=True)
class Scaler:
  """Per-column standardisation (``utils/tools.py`` ``StandardScaler``).

  Attributes:
    mean, std: float64 ``[c_in]`` over the training rows (std with ``ddof=0``).
    target_index: index of the target column among the ``c_in`` columns.
  """
  mean: np.ndarray
  std: np.ndarray
  target_index: int = -1

  @classmethod
  def fit(cls, values: np.ndarray, target_index: int = -1) -> "Scaler":
    values = np.asarray(values, dtype=np.float64)
    return cls(values.mean(0), values.std(0), target_index)

  def transform(self, values: np.ndarray) -> np.ndarray:
    return (np.asarray(values, dtype=np.float64) - self.mean) / self.std


def inverse_transform(values: np.ndarray, scaler: Scaler) -> np.ndarray:
  """Undoes the scaling of ``values [..., c]``: ``c = c_in`` uses every column's
  statistics, ``c = 1`` the target column's (official: the last column's, which is
  the target ``OT`` of the ETT files)."""
  values = np.asarray(values)
  c = values.shape[-1]
  if c == scaler.mean.shape[0]:
    mean, std = scaler.mean, scaler.std
  elif c == 1:
    mean, std = scaler.mean[[scaler.target_index]], scaler.std[[scaler.target_index]]
  else:
    raise ValueError(f"values have {c} channels; the scaler has {scaler.mean.shape[0]} "
                     "(or use 1 for the target)")
  return values * std + mean


class EttWindows:
  """The forecasting windows of one split (random access, as the official Dataset).

  Element ``i`` is the dict of the module docstring. ``len`` is ``border2 - border1
  - seq_len - pred_len + 1``.
  """

  def __init__(self, dates: np.ndarray, values: np.ndarray, *, name: str = "ETTh1",
               split: str = "train", seq_len: int = 96, label_len: int = 48,
               pred_len: int = 24, features: str = "M", target: str = "OT",
               timeenc: int = 1, freq: str = "h", scale: bool = True,
               columns: Sequence[str] = COLUMNS):
    """Args:
      dates: int64 ``[n]`` seconds of every stored row from row 0 (``n`` >= the
        end of the test split).
      values: float64 ``[n, len(columns)]`` raw values of the same rows.
      name: the ETT file (sets the month length of the split borders).
      split: "train", "validation" or "test".
      seq_len, label_len, pred_len: encoder length, decoder context taken from the
        end of the encoder window, forecast horizon.
      features: "M", "S" or "MS" (see the module docstring).
      target: the target column's name.
      timeenc, freq: time features (:func:`time_features`).
      scale: standardise with the training rows' statistics (official default).
      columns: the names of the value columns.
    """
    if features not in FEATURES:
      raise ValueError(f"{features=} must be one of {FEATURES}")
    columns = tuple(columns)
    if target not in columns:
      raise ValueError(f"{target=} is not a column; columns: {columns}")
    if seq_len < 1 or pred_len < 1 or not 0 <= label_len <= seq_len:
      raise ValueError(f"need seq_len >= 1, pred_len >= 1 and 0 <= label_len <= seq_len;"
                       f" got {seq_len=}, {label_len=}, {pred_len=}")
    dates = np.asarray(dates, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (dates.shape[0], len(columns)):
      raise ValueError(f"values {values.shape} do not match {dates.shape[0]} dates x "
                       f"{len(columns)} columns")
    border1, border2 = window_borders(name, split, seq_len)
    train_end = split_rows(name)["train"][1]
    if border2 > dates.shape[0]:
      raise ValueError(f"{name} has {dates.shape[0]} rows; the {split!r} split needs "
                       f"{border2}")
    if border1 < 0:
      raise ValueError(f"{seq_len=} reaches before the first row of the {split!r} split")

    target_column = columns.index(target)
    in_columns = [target_column] if features == "S" else list(range(len(columns)))
    self.name, self.split, self.features, self.target = name, split, features, target
    self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
    self.timeenc, self.freq = timeenc, freq
    self.input_columns = tuple(columns[c] for c in in_columns)
    self.target_index = self.input_columns.index(target)
    self.output_index = None if features == "M" else self.target_index

    data = values[:, in_columns]
    self.scaler = Scaler.fit(data[:train_end], self.target_index)
    if scale:
      data = self.scaler.transform(data)
    self.border1, self.border2 = border1, border2
    self.data = np.asarray(data[border1:border2], dtype=np.float32)
    self.dates = dates[border1:border2]
    self.time = np.asarray(time_features(self.dates, timeenc=timeenc, freq=freq),
                           dtype=np.float32)
    self._len = border2 - border1 - seq_len - pred_len + 1
    if self._len < 1:
      raise ValueError(f"the {split!r} split of {name} has {border2 - border1} rows: "
                       f"no window of {seq_len=} + {pred_len=}")

  @property
  def input_channels(self) -> int:
    return len(self.input_columns)

  @property
  def output_channels(self) -> int:
    return self.input_channels if self.output_index is None else 1

  @property
  def time_channels(self) -> int:
    return self.time.shape[1]

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if index < 0:
      index += self._len
    if not 0 <= index < self._len:
      raise IndexError(f"window {index} out of range for {self._len} windows")
    s_end = index + self.seq_len
    r_begin = s_end - self.label_len
    r_end = r_begin + self.label_len + self.pred_len
    future = self.data[r_begin + self.label_len:r_end]
    if self.output_index is not None:
      future = future[:, self.output_index:self.output_index + 1]
    return {
        "inputs": self.data[index:s_end].copy(),
        "mask": np.ones((self.seq_len,), dtype=bool),
        "inputs_time": self.time[index:s_end].copy(),
        "decoder_inputs": self.data[r_begin:r_begin + self.label_len].copy(),
        "decoder_time": self.time[r_begin:r_end].copy(),
        "targets": future.copy(),
    }

  def __repr__(self) -> str:
    return (f"EttWindows({self.name}, {self.split}, seq_len={self.seq_len}, "
            f"label_len={self.label_len}, pred_len={self.pred_len}, "
            f"features={self.features!r}, len={self._len})")


# ----------------------------------------------------------------------------
# Task.


def config() -> ml_collections.ConfigDict:
  """``config.data.ett``: the ETT task's fields, defaults of Informer's ETTh1 run."""
  cfg = ml_collections.ConfigDict()
  # Which file: "ETTh1", "ETTh2" (hourly), "ETTm1", "ETTm2" (15 minutes).
  cfg.name = "ETTh1"
  # "M": all 7 series in and out; "S": the target alone; "MS": all in, the target
  # out.
  cfg.features = "M"
  # The target column of "S" and "MS".
  cfg.target = "OT"
  # Encoder input length, length of the decoder's known start (the end of the
  # input window) and forecast horizon, in rows.
  cfg.seq_len = 96
  cfg.label_len = 48
  cfg.pred_len = 24
  # Time features: 1 = reals in [-0.5, 0.5] (Informer's embed="timeF"); 0 =
  # integer month, day, weekday, hour (for fixed/learned temporal embeddings).
  cfg.timeenc = 1
  # Frequency of the time features: "h" (hourly) or "t" (minutes).
  cfg.freq = "h"
  return cfg


def validate(data_config: ml_collections.ConfigDict) -> None:
  """Checks ``config.data.ett``; errors name ``data.ett.<field>``."""
  own = tasks.task_fields(data_config, TASK)
  checks.check_choice("data.ett.name", own.name, NAMES)
  checks.check_choice("data.ett.features", own.features, FEATURES)
  checks.check_choice("data.ett.target", own.target, COLUMNS)
  for field in ("seq_len", "label_len", "pred_len"):
    checks.check_int(f"data.ett.{field}", own[field], minimum=1)
  if own.label_len > own.seq_len:
    checks.fail("data.ett.label_len", own.label_len,
                f"is longer than data.ett.seq_len={own.seq_len}: the decoder's known "
                "start is the end of the input window")
  checks.check_choice("data.ett.timeenc", own.timeenc, (0, 1))
  try:
    time_feature_names(own.timeenc, own.freq)
  except ValueError as e:
    checks.fail("data.ett.freq", own.freq, f"has no time features ({e})")


@dataclasses.dataclass(frozen=True)
class EttOptions:
  """The ``config.data.ett`` fields the task reads (defaults: :func:`config`)."""
  name: str = "ETTh1"
  features: str = "M"
  target: str = "OT"
  seq_len: int = 96
  label_len: int = 48
  pred_len: int = 24
  timeenc: int = 1
  freq: str = "h"

  @classmethod
  def from_config(cls, data_config: Any) -> "EttOptions":
    own = tasks.task_fields(data_config, TASK)
    return cls(**{f.name: tasks.config_field(own, f.name, f.default)
                  for f in dataclasses.fields(cls)})

  def __post_init__(self):
    rows_per_hour(self.name)  # Validates the name.
    if self.features not in FEATURES:
      raise ValueError(f"data.ett.features={self.features!r} must be one of {FEATURES}")
    if self.target not in COLUMNS:
      raise ValueError(f"data.ett.target={self.target!r} must be one of {COLUMNS}")
    time_feature_names(self.timeenc, self.freq)  # Validates timeenc and freq.

  @property
  def input_channels(self) -> int:
    return 1 if self.features == "S" else len(COLUMNS)

  @property
  def output_channels(self) -> int:
    return len(COLUMNS) if self.features == "M" else 1

  @property
  def time_channels(self) -> int:
    return num_time_features(self.timeenc, self.freq)


def make_windows(dates: np.ndarray, values: np.ndarray, data_config: Any,
                 split: str) -> EttWindows:
  o = EttOptions.from_config(data_config)
  return EttWindows(dates, values, name=o.name, split=split, seq_len=o.seq_len,
                    label_len=o.label_len, pred_len=o.pred_len, features=o.features,
                    target=o.target, timeenc=o.timeenc, freq=o.freq)


def forecast_info(data_config: Any) -> dict[str, Any]:
  """The forecasting fields of the task's TaskInfo."""
  o = EttOptions.from_config(data_config)
  return {"output_channels": o.output_channels, "time_channels": o.time_channels,
          "label_len": o.label_len, "pred_len": o.pred_len,
          "extra_inputs": EXTRA_INPUTS}


def task_info(data_config: Any) -> tasks.TaskInfo:
  o = EttOptions.from_config(data_config)
  return tasks.TaskInfo(num_classes=o.output_channels, max_length=o.seq_len,
                        input_kind="continuous", input_channels=o.input_channels,
                        output_kind="forecast", **forecast_info(data_config))


def task_sources(data_config: Any) -> dict[str, EttWindows]:
  from data import ett_builder  # pylint: disable=g-import-not-at-top
  dates, values = ett_builder.load_rows(data_config)
  return {split: make_windows(dates, values, data_config, split) for split in SPLITS}


def preprocess(example: Mapping[str, Any], data_config: Any) -> dict[str, np.ndarray]:
  """The windows are already model-ready; copies them into a new dict."""
  del data_config
  return {k: np.asarray(v) for k, v in example.items()}


TASK = tasks.register_task(tasks.Task(
    name="ett", info=task_info, sources=task_sources, preprocess=preprocess,
    config=config, validate=validate))