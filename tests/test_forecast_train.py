"""Forecasting in the trainer: MSE/MAE sums, the epoch-decay schedule, early
stopping on the validation loss, and the Informer config end to end on a written
ETT file."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import ett_informer, validate
from data import ett
from train import optim as optim_lib
from train import steps
from train import trainer


def _write_ett_csv(path, n_rows: int = 14400 + 200, seed: int = 0):
  """An hourly ETT file in the official format: noisy daily cycles."""
  rng = np.random.default_rng(seed)
  hours = np.arange(n_rows)
  phase = rng.uniform(0, 2 * np.pi, size=7)
  values = (np.sin(2 * np.pi * hours[:, None] / 24 + phase[None, :]) * 3 + 10
            + rng.normal(scale=0.3, size=(n_rows, 7)))
  dates = (np.datetime64("2016-07-01 00:00:00", "s")
           + hours.astype(np.int64) * np.timedelta64(3600, "s"))
  with open(path, "w") as f:
    f.write(",".join(ett.HEADER) + "\n")
    for d, row in zip(dates, values):
      f.write(str(d).replace("T", " ") + ","
              + ",".join(f"{v:.6f}" for v in row) + "\n")


@pytest.fixture(scope="module")
def ett_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("ett_csv")
  _write_ett_csv(directory / "ETTh1.csv")
  return directory


def _config(ett_dir, tmp_path, **train):
  config = ett_informer.get_config("test")
  config.data.manual_dir = str(ett_dir)
  config.data.data_dir = str(tmp_path / "tfds")
  for key, value in train.items():
    section, field = key.split("__")
    config[section][field] = value
  return config


def test_forecast_loss_sums_are_weighted_mse_and_mae():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(4, 3, 2)).astype(np.float32)
  target = rng.normal(size=(4, 3, 2)).astype(np.float32)
  weight = np.array([1, 1, 0, 1], np.float32)
  sums = steps.loss_sums(jnp.asarray(pred), {
      "targets": jnp.asarray(target), "weight": jnp.asarray(weight)})
  means = steps.means_of(sums)
  real = weight > 0
  err = (pred - target)[real]
  np.testing.assert_allclose(means["mse"], np.mean(err ** 2), rtol=1e-6)
  np.testing.assert_allclose(means["mae"], np.mean(np.abs(err)), rtol=1e-6)
  assert float(means["loss"]) == float(means["mse"])
  assert float(sums["count"]) == 3.0


def test_epoch_decay_schedule_halves_every_epoch():
  sched = optim_lib.make_schedule(1e-4, schedule="epoch_decay", warmup_steps=0,
                                  total_steps=30, steps_per_epoch=10)
  got = [float(sched(s)) for s in (0, 9, 10, 19, 20, 29)]
  np.testing.assert_allclose(got, [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="steps per epoch"):
    optim_lib.make_schedule(1e-4, schedule="epoch_decay", warmup_steps=0,
                            total_steps=30)


def test_best_metric_defaults():
  config = ett_informer.get_config("test")
  info = ett.task_info(config.data)
  assert trainer.best_metric(config, info) == ("loss", "min")
  config.train.best_metric = "mae"
  assert trainer.best_metric(config, info) == ("mae", "min")


@pytest.mark.parametrize("field,value,message", [
    ("model.informer.attn", "sparse", "model.informer.attn='sparse'"),
    ("model.informer.n_heads", 3, "does not divide model.d_model"),
    ("data.ett.label_len", 40, "longer than data.ett.seq_len"),
    ("model.informer.embed", "fixed", "does not match data.ett.timeenc"),
    ("train.best_metric", "accuracy", "is not a validation metric"),
    ("train.early_stopping_patience", 0, "must be >= 1"),
    ("optim.decay_rate", 1.5, "must be <= 1"),
])
def test_forecast_config_errors_name_the_field(field, value, message):
  config = ett_informer.get_config("test")
  section, *rest = field.split(".")
  node = config[section]
  for part in rest[:-1]:
    node = node[part]
  node[rest[-1]] = value
  with pytest.raises(ValueError, match=message):
    validate.validate_config(config)


def test_presets_follow_the_official_scripts():
  config = ett_informer.get_config("etth1_m_24")
  assert (config.data.ett.seq_len, config.data.ett.label_len, config.data.ett.pred_len,
          config.model.informer.factor) == (48, 48, 24, 3)
  config = ett_informer.get_config("etth1_s_168")
  assert (config.data.ett.seq_len, config.data.ett.label_len,
          config.data.ett.features) == (720, 336, "S")
  config = ett_informer.get_config("etth2_m_336")
  assert (config.model.informer.e_layers, config.model.informer.d_layers) == (3, 2)
  assert set(ett_informer.PAPER_RESULTS) == set(ett_informer.SCRIPT_SETTINGS)
  with pytest.raises(ValueError, match="unknown preset 'etth1_m_25'"):
    ett_informer.get_config("etth1_m_25")


def test_informer_trains_on_written_ett_and_writes_test_metrics(ett_dir, tmp_path):
  config = _config(ett_dir, tmp_path, train__num_steps=40,
                   train__eval_every_steps=20, train__eval_steps=4,
                   train__log_every_steps=10, train__checkpoint_every_steps=20)
  workdir = str(tmp_path / "run")
  result = trainer.train_and_evaluate(config, workdir)
  records = [json.loads(line) for line in open(os.path.join(workdir,
                                                            "metrics.jsonl"))]
  train_losses = [r["loss"] for r in records if r["split"] == "train"]
  assert train_losses[-1] < train_losses[0]
  with open(os.path.join(workdir, "test_metrics.json")) as f:
    test = json.load(f)
  assert set(test) >= {"mse", "mae", "loss", "num_examples", "step"}
  assert test == pytest.approx(result["test"])
  # Every test window once: 4 months of rows, less the horizon, plus one.
  assert test["num_examples"] == 2880 - config.data.ett.pred_len + 1
  # The best checkpoint (by validation loss) is the one tested.
  validations = {r["step"]: r["loss"] for r in records
                 if r["split"] == "validation"}
  assert test["step"] == min(validations, key=validations.get)
  model, variables, step = trainer.restore_model(config, workdir)
  assert step == test["step"] and "batch_stats" in variables


def test_early_stopping_stops_and_a_rerun_does_not_train_more(ett_dir, tmp_path):
  # A learning rate of 1e-30 leaves the validation loss unchanged (no
  # distilling, so no BatchNorm statistics move either), so it never improves
  # after the first evaluation: patience 1 stops at the second.
  config = _config(ett_dir, tmp_path, train__num_steps=50,
                   train__eval_every_steps=2, train__eval_steps=2,
                   train__log_every_steps=2, train__checkpoint_every_steps=10,
                   train__early_stopping_patience=1)
  config.optim.learning_rate = 1e-30
  config.model.informer.distil = False
  workdir = str(tmp_path / "run")
  result = trainer.train_and_evaluate(config, workdir)
  assert result["stopped_early"] and result["step"] == 4
  assert result["test"]["step"] == 2
  again = trainer.train_and_evaluate(config, workdir)
  assert again["step"] == 4 and again["stopped_early"]
  assert again["test"] == pytest.approx(result["test"])
