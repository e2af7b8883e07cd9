"""Runs that never lie: a diverging run stops at the step that diverged, a
corrupted checkpoint is named and the run falls back to the previous one, a
restart with another config is refused. The toy task and mixer of
test_train.py keep each run to seconds."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from test_train import REPO
from test_train import _records
from test_train import toy_config
from train import checkpoints
from train import nonfinite
from train import run_config
from train import trainer


def _strict_json_lines(path):
  """Every line parses as strict JSON (no NaN or Infinity)."""
  def refuse(name):
    raise ValueError(f"{path}: {name} is not JSON")
  with open(path) as f:
    return [json.loads(line, parse_constant=refuse) for line in f if line.strip()]


def _diverging(**train):
  config = toy_config(**train)
  config.unlock()
  config.optim.learning_rate = 1e30  # Overflows at step 3 (loss and grads).
  config.optim.grad_clip_norm = None
  config.lock()
  return config


def _all_finite(tree):
  return all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


def test_divergence_stops_at_the_step_and_names_the_culprits(tmp_path):
  config = _diverging(checkpoint_every_steps=2, log_every_steps=2,
                      eval_every_steps=8)
  with pytest.raises(nonfinite.NonFiniteError) as info:
    trainer.train_and_evaluate(config, str(tmp_path))
  message = str(info.value)
  assert message.startswith("step 3: non-finite the loss; the gradients of "
                            "backbone/"), message
  assert "train.max_nonfinite_steps=0" in message
  records = _strict_json_lines(tmp_path / "metrics.jsonl")
  assert max(r["step"] for r in records) == 2
  assert not (tmp_path / "test_metrics.json").exists()
  # The only checkpoint is step 2's, and it holds finite values.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  _, variables, step = trainer.restore_model(config, str(tmp_path), best=False)
  assert step == 2 and _all_finite(variables)


def test_skipped_nonfinite_steps_keep_the_state_and_are_bounded(tmp_path):
  config = _diverging(max_nonfinite_steps=2, checkpoint_every_steps=4,
                      log_every_steps=4, eval_every_steps=8)
  with pytest.raises(nonfinite.NonFiniteError,
                     match=r"^step 5: .*skipped before: \[3, 4\]"):
    trainer.train_and_evaluate(config, str(tmp_path))
  records = _strict_json_lines(tmp_path / "metrics.jsonl")
  train = [r for r in records if r["split"] == "train"]
  # Steps 1-4: two finite, two skipped; the means are the finite steps'.
  assert [(r["step"], r["skipped_steps"]) for r in train] == [(4, 2.0)]
  assert np.isfinite(train[0]["loss"])
  _, variables, step = trainer.restore_model(config, str(tmp_path), best=False)
  assert step == 4 and _all_finite(variables)


def test_metric_writer_refuses_non_finite_values(tmp_path):
  from train import metrics as metrics_lib
  writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=None)
  with pytest.raises(ValueError, match=r"train metrics of step 3 are not "
                     r"finite: \{'loss': nan\}"):
    writer.write(3, "train", {"loss": float("nan"), "accuracy": 0.5})
  writer.close()


def test_non_finite_validation_stops_before_it_is_recorded(tmp_path):
  """After two steps at learning rate 1e30 the parameters are finite but
  huge: the validation loss overflows. Nothing of it is written."""
  config = _diverging(checkpoint_every_steps=2, log_every_steps=2,
                      eval_every_steps=2)
  with pytest.raises(nonfinite.NonFiniteError,
                     match=r"^validation at step 2: non-finite \{'loss': nan"):
    trainer.train_and_evaluate(config, str(tmp_path))
  records = _strict_json_lines(tmp_path / "metrics.jsonl")
  assert [r["split"] for r in records] == ["train"]
  assert not os.listdir(tmp_path / "checkpoints_best")


# --------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def stopped_at_10(tmp_path_factory):
  """An uninterrupted 16-step toy run, and one stopped after step 10 (its
  checkpoints: steps 4 and 8)."""
  root = tmp_path_factory.mktemp("ckpt")
  trainer.train_and_evaluate(toy_config(), str(root / "full"))
  trainer.train_and_evaluate(toy_config(stop_after_step=10),
                             str(root / "stopped"))
  return root


def _state_chunks(step_dir):
  d = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  return sorted((os.path.join(d, n) for n in os.listdir(d)),
                key=os.path.getsize)


def _flip_bytes(step_dir):
  chunk = _state_chunks(step_dir)[-1]  # The largest: array data.
  with open(chunk, "r+b") as f:
    f.seek(os.path.getsize(chunk) // 2)
    data = bytearray(f.read(16))
    f.seek(os.path.getsize(chunk) // 2)
    f.write(bytes(b ^ 0xFF for b in data))
  return os.path.relpath(chunk, step_dir)


def _truncate_chunk(step_dir):
  chunk = _state_chunks(step_dir)[-1]
  with open(chunk, "r+b") as f:
    f.truncate(os.path.getsize(chunk) // 3)
  return os.path.relpath(chunk, step_dir)


def _empty(rel):
  def corrupt(step_dir):
    open(os.path.join(step_dir, rel), "w").close()
    return rel
  return corrupt


def _no_checksums(step_dir):
  os.remove(os.path.join(step_dir, checkpoints.MANIFEST))
  return checkpoints.MANIFEST


@pytest.mark.parametrize("corrupt", [
    _flip_bytes, _truncate_chunk, _empty("state/_METADATA"),
    _empty("data/process_0-of-1.json"), _no_checksums],
    ids=["bit_flip", "truncated_chunk", "empty_metadata", "empty_data_json",
         "no_checksums"])
def test_corrupted_checkpoint_falls_back_to_the_previous_one(
    stopped_at_10, tmp_path, corrupt, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(stopped_at_10 / "stopped", workdir)
  rel = corrupt(str(workdir / "checkpoints" / "8"))
  with pytest.raises(checkpoints.CheckpointError, match=rel.split("/")[-1]):
    checkpoints.verify(str(workdir / "checkpoints" / "8"))
  with caplog.at_level("WARNING"):
    result = trainer.train_and_evaluate(toy_config(), str(workdir))
  warned = [r.getMessage() for r in caplog.records
            if "checkpoint of step 8 is unusable" in r.getMessage()]
  assert len(warned) == 1 and rel.split("/")[-1] in warned[0], warned
  # Set aside, not deleted; the run resumed from step 4 and retrained.
  aside = os.listdir(workdir / "checkpoints_unusable")
  assert len(aside) == 1 and aside[0].startswith("8-")
  assert result["step"] == 16
  # Deterministic: the same records and test metrics as the uninterrupted run.
  assert _records(workdir) == _records(stopped_at_10 / "full")
  assert result["test"] == json.loads(
      (stopped_at_10 / "full" / "test_metrics.json").read_text())
  # Records of steps 5-10 were written before: TensorBoard has them once.
  assert _event_steps(workdir / "tensorboard" / "train") == list(
      range(2, 17, 2))


def test_every_checkpoint_written_has_checksums_that_verify(stopped_at_10):
  for folder in ("checkpoints", "checkpoints_best"):
    root = stopped_at_10 / "full" / folder
    for step in os.listdir(root):
      checkpoints.verify(str(root / step))


def test_checksums_are_written_by_the_next_save_at_the_latest(tmp_path):
  """However fast the steps, a checkpoint's checksums exist once the next
  checkpoint starts (its save waits for the previous one anyway)."""
  seen = {}

  def hook(step, state):
    del state
    root = tmp_path / "checkpoints"
    seen[step] = sorted(int(s) for s in os.listdir(root)
                        if (root / s / checkpoints.MANIFEST).exists())

  trainer.train_and_evaluate(toy_config(stop_after_step=13), str(tmp_path),
                             hooks=[hook])
  assert all(4 in seen[s] for s in range(8, 14)), seen
  assert all(8 in seen[s] for s in range(12, 14)), seen


def test_a_checkpoint_that_verifies_but_does_not_restore_is_an_error(
    stopped_at_10, tmp_path):
  """Files intact, config changed behind the record's back: no fallback
  (nothing is moved aside), an error that says so."""
  workdir = tmp_path / "run"
  shutil.copytree(stopped_at_10 / "stopped", workdir)
  os.remove(workdir / run_config.FILENAME)
  config = toy_config()
  config.unlock()
  config.model.d_model = 8
  config.lock()
  with pytest.raises(checkpoints.CheckpointError,
                     match="checkpoints/8 verifies but fails to restore"):
    trainer.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "8"]
  assert not (workdir / "checkpoints_unusable").exists()


# ---------------------------------------------------------------- config
def test_restart_with_another_config_is_refused_naming_the_fields(
    stopped_at_10, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  shutil.copytree(stopped_at_10 / "stopped", workdir)
  config = toy_config()
  config.unlock()
  config.model.d_model = 8
  config.optim.learning_rate = 3e-3
  config.lock()
  # Refused before any data is built or anything compiles.
  monkeypatch.setattr(trainer, "_setup", lambda *a: pytest.fail("built"))
  with pytest.raises(run_config.ConfigMismatchError) as info:
    trainer.train_and_evaluate(config, str(workdir))
  message = str(info.value)
  assert "model.d_model: 16 -> 8; optim.learning_rate: 0.01 -> 0.003" in message
  assert "train.num_steps" in message  # Listed among the resumable fields.
  assert len(message.splitlines()) == 1


def test_resumable_fields_may_change(stopped_at_10, tmp_path, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(stopped_at_10 / "stopped", workdir)
  with caplog.at_level("INFO"):
    result = trainer.train_and_evaluate(
        toy_config(num_steps=12, keep_checkpoints=2), str(workdir))
  assert result["step"] == 12
  # The console shows each evaluation and the test, one line each.
  lines = [r.getMessage() for r in caplog.records]
  assert any(m.startswith("validation at step 12: accuracy ") for m in lines)
  assert any(m.startswith("test of the checkpoint of step ") for m in lines)
  recorded = json.loads((workdir / run_config.FILENAME).read_text())
  assert recorded["train.num_steps"] == 12


# ------------------------------------------------------ signals and workers
_RUNNER = r"""
import os, signal, sys
workdir, action, at_step, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from test_train import toy_config
from train import interrupts, trainer

def children(pid):
  out = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        fields = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
      except OSError:
        continue
      if int(fields[1]) == pid:
        out += [int(name)] + children(int(name))
  return out

def hook(step, state):
  if step != at_step:
    return
  if action == "sigkill":
    with open(os.path.join(workdir, "children.txt"), "w") as f:
      f.write(" ".join(map(str, children(os.getpid()))))
    os.kill(os.getpid(), signal.SIGKILL)
  os.kill(os.getpid(), signal.SIGTERM)
  if action == "sigterm_twice":
    os.kill(os.getpid(), signal.SIGTERM)

config = toy_config()
config.unlock()
config.data.worker_count = workers
config.lock()
try:
  trainer.train_and_evaluate(config, workdir, hooks=[hook])
except interrupts.Interrupted as e:
  print(e)
  sys.exit(128 + e.signum)
"""


def _run_toy(workdir, action="none", at_step=0, workers=0):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [REPO, os.path.join(REPO, "tests")]))
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
      [sys.executable, "-c", _RUNNER, str(workdir), action, str(at_step),
       str(workers)], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=600)


@pytest.fixture(scope="module")
def full_toy_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full_toy")
  r = _run_toy(workdir)
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir


def test_sigterm_saves_the_step_and_resumes_exactly(full_toy_run, tmp_path):
  """SIGTERM after step 7 (between train records and checkpoints): the run
  saves step 7 with the unlogged step's sums, exits 143; rerun, it ends as
  the uninterrupted run did."""
  r = _run_toy(tmp_path, "sigterm", 7)
  assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
  assert "stopped by SIGTERM after step 7" in r.stdout
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "7"]
  checkpoints.verify(str(tmp_path / "checkpoints" / "7"))
  r = _run_toy(tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert _records(tmp_path) == _records(full_toy_run)
  assert (json.loads((tmp_path / "test_metrics.json").read_text())
          == json.loads((full_toy_run / "test_metrics.json").read_text()))
  # TensorBoard too: each step once, as in the uninterrupted run.
  for split in ("train", "validation"):
    assert (_event_steps(tmp_path / "tensorboard" / split)
            == _event_steps(full_toy_run / "tensorboard" / split))
  assert _event_steps(tmp_path / "tensorboard" / "train") == list(
      range(2, 17, 2))


def _event_steps(folder):
  from tensorboard.backend.event_processing import event_file_loader
  steps = []
  for name in sorted(os.listdir(folder)):
    for event in event_file_loader.EventFileLoader(
        str(folder / name)).Load():
      if event.summary.value:
        steps.append(event.step)
  return sorted(steps)


def test_a_second_signal_exits_at_once(tmp_path):
  r = _run_toy(tmp_path, "sigterm_twice", 7)
  assert r.returncode == -signal.SIGTERM, r.stderr[-3000:]


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def test_no_orphan_data_workers_after_sigkill(tmp_path):
  r = _run_toy(tmp_path, "sigkill", 6, workers=2)
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  pids = [int(p) for p in (tmp_path / "children.txt").read_text().split()]
  assert len(pids) >= 2, pids  # The two grain workers (and their helpers).
  deadline = time.time() + 20
  while any(_alive(p) for p in pids) and time.time() < deadline:
    time.sleep(0.5)
  assert not [p for p in pids if _alive(p)], "orphans left running"


# ------------------------------------------------------- the command line
def _cli(tmp_path, *overrides):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
      [sys.executable, "-m", "train", "--config=configs/lra_listops.py:test",
       f"--workdir={tmp_path / 'run'}",
       f"--config.data.data_dir={tmp_path / 'tfds'}", *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_command_line_errors_are_one_line(tmp_path):
  r = _cli(tmp_path, "--config.model.mixer=attention",
           "--config.model.attention.n_heads=3")
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
  assert r.stderr.strip().splitlines()[-1] == (
      "FATAL ConfigError: model.attention.n_heads=3 does not divide "
      "model.d_model=16 (or set model.attention.head_dim)")
  r = _cli(tmp_path, "--config.optim.learning_rate=1e30",
           "--config.train.num_steps=8", "--config.train.eval_every_steps=8")
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("FATAL NonFiniteError: step "), last
  records = _strict_json_lines(tmp_path / "run" / "metrics.jsonl")
  assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
