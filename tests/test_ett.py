"""ETT: CSV reader, time features, scaler, windows, TFDS builder and the "ett" task."""
import datetime
import pathlib

import ml_collections
import numpy as np
import pytest

from configs import default
from data import ett, ett_builder, pipeline, tasks

REAL_DIR = pathlib.Path("/work/shared/data/ett")
needs_real = pytest.mark.skipif(not (REAL_DIR / "ETTh1.csv").is_file(),
                                reason=f"no {REAL_DIR / 'ETTh1.csv'}")


_ETT_FIELDS = ("name", "features", "target", "seq_len", "label_len", "pred_len",
               "timeenc", "freq")


def _data_config(tmp_path, **overrides):
  """``config.data`` of the default config; overrides named like a field of
  ``data.ett`` go there."""
  cfg = default.get_config().data
  cfg.update(dict(task="ett", manual_dir=str(REAL_DIR), data_dir=str(tmp_path / "tfds"),
                  batch_size=8, eval_batch_size=8, worker_count=0, read_threads=1,
                  prefetch_buffer_size=1))
  cfg.ett.update(dict(name="ETTh1", features="M", target="OT", seq_len=96,
                      label_len=48, pred_len=24, timeenc=1, freq="h"))
  for key, value in overrides.items():
    (cfg.ett if key in _ETT_FIELDS else cfg)[key] = value
  return cfg


def _write_csv(path, start: str, step_minutes: int, n: int, seed: int = 0):
  """A file in the official format with random values; returns (dates, values)."""
  rng = np.random.default_rng(seed)
  values = np.round(rng.normal(size=(n, 7)) * 5 + 10, 6)
  dates = (np.datetime64(start, "s")
           + np.arange(n, dtype=np.int64) * np.timedelta64(60 * step_minutes, "s"))
  with open(path, "w") as f:
    f.write(",".join(ett.HEADER) + "\n")
    for d, row in zip(dates, values):
      f.write(str(d).replace("T", " ") + "," + ",".join(repr(float(v)) for v in row) + "\n")
  return dates.astype(np.int64), values


def _independent_read(path):
  """The CSV parsed with numpy alone (an oracle for ``ett.read_csv``)."""
  values = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(1, 8))
  dates = np.loadtxt(path, delimiter=",", skiprows=1, usecols=0, dtype=str)
  return dates, values


@pytest.fixture(scope="module")
def real_rows(tmp_path_factory):
  if not (REAL_DIR / "ETTh1.csv").is_file():
    pytest.skip(f"no {REAL_DIR / 'ETTh1.csv'}")
  cfg = _data_config(tmp_path_factory.mktemp("ett_real"))
  dates, values = ett_builder.load_rows(cfg)
  return cfg, dates, values


# ---------------------------------------------------------------------------
# Reader.


def test_read_csv_small(tmp_path):
  path = tmp_path / "ETTh1.csv"
  dates, values = _write_csv(path, "2016-07-01 00:00:00", 60, 30)
  got_dates, got_values = ett.read_csv(path)
  np.testing.assert_array_equal(got_dates, dates)
  np.testing.assert_array_equal(got_values, values)
  assert got_values.dtype == np.float64 and got_dates.dtype == np.int64


@pytest.mark.parametrize("line,message", [
    ("2016-07-01 02:00:00,1,2,3,4,5,6", "expected 8 comma-separated fields"),
    ("2016-07-01 02:00:00,1,2,3,4,5,6,7,8", "expected 8 comma-separated fields"),
    ("2016-07-01 02:00:00,1,2,x,4,5,6,7", "not a number"),
    ("2016-13-01 02:00:00,1,2,3,4,5,6,7", "bad date"),
    ("yesterday,1,2,3,4,5,6,7", "bad date"),
])
def test_read_csv_malformed_line_names_file_and_line(tmp_path, line, message):
  path = tmp_path / "bad.csv"
  path.write_text(",".join(ett.HEADER) + "\n"
                  "2016-07-01 00:00:00,1,2,3,4,5,6,7\n"
                  "2016-07-01 01:00:00,1,2,3,4,5,6,7\n" + line + "\n")
  with pytest.raises(ValueError, match=rf"{path}:4: .*{message}"):
    ett.read_csv(path)


def test_read_csv_bad_header(tmp_path):
  path = tmp_path / "bad.csv"
  path.write_text("date,a,b,c,d,e,f,g\n2016-07-01 00:00:00,1,2,3,4,5,6,7\n")
  with pytest.raises(ValueError, match=rf"{path}:1: expected the header"):
    ett.read_csv(path)


def test_read_csv_minutes(tmp_path):
  path = tmp_path / "ETTm1.csv"
  dates, values = _write_csv(path, "2016-07-01 00:00:00", 15, 12)
  got_dates, got_values = ett.read_csv(path)
  np.testing.assert_array_equal(got_dates, dates)
  np.testing.assert_array_equal(got_values, values)
  assert np.all(np.diff(got_dates) == 15 * 60)
  # timeenc=0, freq "t": month, day, weekday, hour, minute // 15.
  calendar = ett.time_features(got_dates, timeenc=0, freq="t")
  np.testing.assert_array_equal(calendar[:5, 4], [0, 1, 2, 3, 0])
  np.testing.assert_array_equal(calendar[:5, 3], [0, 0, 0, 0, 1])
  timef = ett.time_features(got_dates, timeenc=1, freq="t")
  np.testing.assert_allclose(timef[:4, 0], np.array([0, 15, 30, 45]) / 59.0 - 0.5)


# ---------------------------------------------------------------------------
# Time features.


def _seconds(text):
  return np.array([np.datetime64(text, "s").astype(np.int64)])


def test_time_features_known_dates():
  # 2016-07-01 00:00 is a Friday (weekday 4), day 183 of the leap year 2016.
  np.testing.assert_allclose(
      ett.time_features(_seconds("2016-07-01 00:00:00"), timeenc=1, freq="h")[0],
      [-0.5, 4 / 6 - 0.5, -0.5, 182 / 365 - 0.5])
  # 2017-12-31 23:00 is a Sunday, day 365 of 2017.
  np.testing.assert_allclose(
      ett.time_features(_seconds("2017-12-31 23:00:00"), timeenc=1, freq="h")[0],
      [0.5, 0.5, 0.5, 364 / 365 - 0.5])
  np.testing.assert_array_equal(
      ett.time_features(_seconds("2017-12-31 23:00:00"), timeenc=0, freq="h")[0],
      [12, 31, 6, 23])
  # Minutes: MinuteOfHour first.
  np.testing.assert_allclose(
      ett.time_features(_seconds("2018-02-28 13:45:00"), timeenc=1, freq="15min")[0],
      [45 / 59 - 0.5, 13 / 23 - 0.5, 2 / 6 - 0.5, 27 / 30 - 0.5, 58 / 365 - 0.5])


@pytest.mark.parametrize("freq,names", [
    ("h", ("hour_of_day", "day_of_week", "day_of_month", "day_of_year")),
    ("H", ("hour_of_day", "day_of_week", "day_of_month", "day_of_year")),
    ("t", ("minute_of_hour", "hour_of_day", "day_of_week", "day_of_month", "day_of_year")),
    ("d", ("day_of_week", "day_of_month", "day_of_year")),
    ("w", ("day_of_month", "week_of_year")),
    ("m", ("month_of_year",)),
])
def test_time_features_match_python_datetime(freq, names, rng):
  assert ett.time_feature_names(1, freq) == names
  seconds = rng.integers(0, 2_000_000_000, size=50)
  got = ett.time_features(seconds, timeenc=1, freq=freq)
  epoch = datetime.datetime(1970, 1, 1)
  for s, row in zip(seconds, got):
    d = epoch + datetime.timedelta(seconds=int(s))
    oracle = {
        "minute_of_hour": d.minute / 59 - 0.5,
        "hour_of_day": d.hour / 23 - 0.5,
        "day_of_week": d.weekday() / 6 - 0.5,
        "day_of_month": (d.day - 1) / 30 - 0.5,
        "day_of_year": (d.timetuple().tm_yday - 1) / 365 - 0.5,
        "week_of_year": (d.isocalendar()[1] - 1) / 52 - 0.5,
        "month_of_year": (d.month - 1) / 11 - 0.5,
    }
    np.testing.assert_allclose(row, [oracle[n] for n in names], atol=1e-12)
  calendar = ett.time_features(seconds, timeenc=0, freq="t")
  for s, row in zip(seconds, calendar):
    d = epoch + datetime.timedelta(seconds=int(s))
    np.testing.assert_array_equal(row, [d.month, d.day, d.weekday(), d.hour,
                                        d.minute // 15])


def test_time_features_errors():
  with pytest.raises(ValueError, match="unsupported freq"):
    ett.time_features(_seconds("2016-07-01"), freq="fortnight")
  with pytest.raises(ValueError, match="timeenc=2"):
    ett.time_features(_seconds("2016-07-01"), timeenc=2)
  with pytest.raises(ValueError, match="no timeenc=0 features"):
    ett.time_features(_seconds("2016-07-01"), timeenc=0, freq="s")


# ---------------------------------------------------------------------------
# Windows on synthetic rows.


def _synthetic_rows(name, seed=0):
  n = 20 * ett.rows_per_month(name) + 7
  step = 3600 // ett.rows_per_hour(name)
  dates = np.datetime64("2016-07-01", "s").astype(np.int64) + step * np.arange(n)
  values = np.random.default_rng(seed).normal(size=(n, 7)) * np.arange(1, 8) + 3.0
  return dates, values


@pytest.mark.parametrize("name", ["ETTh1", "ETTm2"])
@pytest.mark.parametrize("split", ett.SPLITS)
def test_windows_borders_and_values(name, split):
  dates, values = _synthetic_rows(name)
  seq_len, label_len, pred_len = 20, 8, 6
  w = ett.EttWindows(dates, values, name=name, split=split, seq_len=seq_len,
                     label_len=label_len, pred_len=pred_len,
                     freq="t" if name.startswith("ETTm") else "h")
  month = ett.rows_per_month(name)
  start, end = {"train": (0, 12), "validation": (12, 16), "test": (16, 20)}[split]
  border1 = 0 if split == "train" else start * month - seq_len
  assert len(w) == end * month - border1 - seq_len - pred_len + 1
  mean, std = values[:12 * month].mean(0), values[:12 * month].std(0)
  scaled = ((values - mean) / std).astype(np.float32)
  for i in (0, 1, len(w) // 2, len(w) - 1):
    e = w[i]
    s = border1 + i
    r = s + seq_len - label_len
    np.testing.assert_allclose(e["inputs"], scaled[s:s + seq_len], rtol=1e-6)
    np.testing.assert_allclose(e["decoder_inputs"], scaled[r:r + label_len], rtol=1e-6)
    np.testing.assert_allclose(e["targets"],
                               scaled[r + label_len:r + label_len + pred_len], rtol=1e-6)
    np.testing.assert_allclose(
        e["inputs_time"], ett.time_features(dates[s:s + seq_len], freq=w.freq), rtol=1e-6)
    np.testing.assert_allclose(
        e["decoder_time"],
        ett.time_features(dates[r:r + label_len + pred_len], freq=w.freq), rtol=1e-6)
    assert e["mask"].dtype == bool and e["mask"].all()
  # The last window's target ends at the split's end.
  assert border1 + len(w) - 1 + seq_len + pred_len == end * month
  with pytest.raises(IndexError):
    w[len(w)]


def test_windows_features_s_and_ms():
  dates, values = _synthetic_rows("ETTh1")
  target = "HULL"
  kw = dict(name="ETTh1", split="validation", seq_len=12, label_len=4, pred_len=3,
            target=target)
  m = ett.EttWindows(dates, values, features="M", **kw)
  s = ett.EttWindows(dates, values, features="S", **kw)
  ms = ett.EttWindows(dates, values, features="MS", **kw)
  col = ett.COLUMNS.index(target)
  assert (m.input_channels, m.output_channels) == (7, 7)
  assert (s.input_channels, s.output_channels) == (1, 1)
  assert (ms.input_channels, ms.output_channels) == (7, 1)
  em, es, ems = m[5], s[5], ms[5]
  np.testing.assert_allclose(es["inputs"], em["inputs"][:, col:col + 1], rtol=1e-6)
  np.testing.assert_allclose(es["targets"], em["targets"][:, col:col + 1], rtol=1e-6)
  np.testing.assert_allclose(es["decoder_inputs"], em["decoder_inputs"][:, col:col + 1],
                             rtol=1e-6)
  np.testing.assert_array_equal(ems["inputs"], em["inputs"])
  np.testing.assert_array_equal(ems["decoder_inputs"], em["decoder_inputs"])
  np.testing.assert_array_equal(ems["targets"], em["targets"][:, col:col + 1])


def test_inverse_transform_round_trip():
  dates, values = _synthetic_rows("ETTh1")
  w = ett.EttWindows(dates, values, split="test", seq_len=10, label_len=5, pred_len=4)
  e = w[3]
  start = ett.split_rows("ETTh1")["test"][0] - 10 + 3 + 10
  np.testing.assert_allclose(ett.inverse_transform(e["targets"], w.scaler),
                             values[start:start + 4], rtol=1e-5)
  ot = ett.inverse_transform(e["targets"][:, -1:], w.scaler)
  np.testing.assert_allclose(ot, values[start:start + 4, -1:], rtol=1e-5)
  with pytest.raises(ValueError, match="3 channels"):
    ett.inverse_transform(e["targets"][:, :3], w.scaler)


def test_window_errors():
  dates, values = _synthetic_rows("ETTh1")
  with pytest.raises(ValueError, match="features='X'"):
    ett.EttWindows(dates, values, features="X")
  with pytest.raises(ValueError, match="label_len=50"):
    ett.EttWindows(dates, values, seq_len=48, label_len=50)
  with pytest.raises(ValueError, match="target='TEMP'"):
    ett.EttWindows(dates, values, target="TEMP")
  with pytest.raises(ValueError, match="needs 14400"):
    ett.EttWindows(dates[:14000], values[:14000], split="test")


# ---------------------------------------------------------------------------
# Builder on written files.


def test_builder_small_written_csv(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  n = 20 * 720 + 5
  dates, values = _write_csv(manual / "ETTh2.csv", "2016-07-01 00:00:00", 60, n, seed=1)
  cfg = _data_config(tmp_path, name="ETTh2", manual_dir=str(manual), seq_len=24,
                     label_len=12, pred_len=6)
  got_dates, got_values = ett_builder.load_rows(cfg)
  np.testing.assert_array_equal(got_dates, dates[:14400])
  np.testing.assert_array_equal(got_values, values[:14400])
  sources = ett.task_sources(cfg)
  assert {k: len(v) for k, v in sources.items()} == {
      "train": 8640 - 24 - 6 + 1, "validation": 2880 - 6 + 1, "test": 2880 - 6 + 1}
  # A file short of 20 months is refused.
  short = tmp_path / "short"
  short.mkdir()
  _write_csv(short / "ETTh1.csv", "2016-07-01 00:00:00", 60, 100)
  with pytest.raises(ValueError, match="has 100 rows"):
    ett_builder.prepare(_data_config(tmp_path / "other", manual_dir=str(short)))
  with pytest.raises(FileNotFoundError, match="ETTm1.csv"):
    ett_builder.prepare(_data_config(tmp_path / "other", name="ETTm1", manual_dir=str(short)))


# ---------------------------------------------------------------------------
# Real ETTh1.


@needs_real
@pytest.mark.parametrize("seq_len,label_len,pred_len,sizes", [
    (96, 48, 24, (8521, 2857, 2857)),
    (48, 48, 24, (8569, 2857, 2857)),
])
def test_real_split_sizes(real_rows, seq_len, label_len, pred_len, sizes):
  cfg, dates, values = real_rows
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.ett.update(dict(seq_len=seq_len, label_len=label_len, pred_len=pred_len))
  got = tuple(len(ett.make_windows(dates, values, cfg, s)) for s in ett.SPLITS)
  assert got == sizes


@needs_real
def test_real_rows_scaler_windows_and_time(real_rows):
  cfg, dates, values = real_rows
  csv_dates, csv_values = _independent_read(REAL_DIR / "ETTh1.csv")
  np.testing.assert_array_equal(values, csv_values[:14400])
  assert str(dates[0].astype("datetime64[s]")) == csv_dates[0].replace(" ", "T")
  assert str(dates[-1].astype("datetime64[s]")) == csv_dates[14399].replace(" ", "T")
  mean, std = csv_values[:8640].mean(0), csv_values[:8640].std(0)
  windows = {s: ett.make_windows(dates, values, cfg, s) for s in ett.SPLITS}
  for w in windows.values():
    np.testing.assert_allclose(w.scaler.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(w.scaler.std, std, rtol=1e-12)
  w = windows["validation"]
  i = 100
  e = w[i]
  first = 8640 - 96 + i
  np.testing.assert_allclose(e["inputs"], (csv_values[first:first + 96] - mean) / std,
                             rtol=1e-5, atol=1e-6)
  target_rows = csv_values[first + 96:first + 96 + 24]
  np.testing.assert_allclose(e["targets"], (target_rows - mean) / std, rtol=1e-5,
                             atol=1e-6)
  # Window 0 of the validation split starts on row 8544 = 2017-06-22 00:00
  # (a Thursday, day 173 of 2017).
  e0 = w[0]
  assert csv_dates[8544] == "2017-06-22 00:00:00"
  np.testing.assert_allclose(e0["inputs_time"][0],
                             [-0.5, 3 / 6 - 0.5, 21 / 30 - 0.5, 172 / 365 - 0.5],
                             rtol=1e-6)


@needs_real
def test_real_task_info_and_pipeline(real_rows):
  cfg, _, _ = real_rows
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.ett.update(dict(seq_len=48, features="MS"))
  info = ett.task_info(cfg)
  assert (info.input_kind, info.output_kind, info.max_length) == (
      "continuous", "forecast", 48)
  assert (info.input_channels, info.num_classes) == (7, 1)
  extra = ett.forecast_info(cfg)
  assert extra == {"output_channels": 1, "time_channels": 4, "label_len": 48,
                   "pred_len": 24, "extra_inputs": ett.EXTRA_INPUTS}
  for k, v in extra.items():
    if hasattr(info, k):
      assert getattr(info, k) == v
  assert tasks.get_task("ett") is ett.TASK
  batch = next(pipeline.make_train_iterator(ett.TASK, cfg, seed=0))
  shapes = {k: v.shape for k, v in batch.items()}
  assert shapes == {"inputs": (8, 48, 7), "mask": (8, 48), "inputs_time": (8, 48, 4),
                    "decoder_inputs": (8, 48, 7), "decoder_time": (8, 72, 4),
                    "targets": (8, 24, 1), "weight": (8,)}
  assert all(v.dtype == np.float32 for k, v in batch.items() if k != "mask")


@pytest.mark.parametrize("field,value,message", [
    ("name", "ETTh3", "data.ett.name='ETTh3' is not one of"),
    ("features", "X", "data.ett.features='X' is not one of"),
    ("target", "HOT", "data.ett.target='HOT' is not one of"),
    ("seq_len", 0, "data.ett.seq_len=0 must be >= 1"),
    ("label_len", 97, "data.ett.label_len=97 is longer than data.ett.seq_len=96"),
    ("timeenc", 2, "data.ett.timeenc=2 is not one of"),
    ("freq", "fortnight", "data.ett.freq='fortnight' has no time features"),
])
def test_task_fields_are_validated_by_full_name(tmp_path, field, value, message):
  cfg = _data_config(tmp_path)
  ett.validate(cfg)
  cfg.ett[field] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    ett.validate(cfg)
