"""End-to-end tests of train.trainer: learning, exact resume, device count.

A toy task (is token 1 more frequent than token 2?) and a toy mixer keep these
runs to seconds; the experiment configs' ``test`` presets run the real tasks
and the S4 model.
"""
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from configs import validate
from data import tasks
from layers import registry
from train import metrics as metrics_lib
from train import optim as optim_lib
from train import steps
from train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "longseq_jax")
TOY_TASK = "toy_majority"
TOY_MIXER = "toy_cummean"
TOY_LENGTH = 16


class _ToySource:
  """Sequences of 1s and 2s of random length; target: more 1s than 2s."""

  def __init__(self, n: int, seed: int):
    rng = np.random.default_rng(seed)
    self._lengths = rng.integers(3, TOY_LENGTH + 1, size=n)
    self._tokens = rng.integers(1, 3, size=(n, TOY_LENGTH))

  def __len__(self):
    return len(self._lengths)

  def __getitem__(self, i):
    return {"tokens": self._tokens[i, :self._lengths[i]]}


def _toy_sources(data_config):
  return {"train": _ToySource(data_config.num_train, 1),
          "validation": _ToySource(data_config.num_validation, 2),
          "test": _ToySource(data_config.num_test, 3)}


def _toy_info(data_config):
  del data_config
  return tasks.TaskInfo(num_classes=2, max_length=TOY_LENGTH,
                        input_kind="tokens", vocab_size=3)


def _toy_preprocess(raw, data_config):
  del data_config
  tokens = np.asarray(raw["tokens"], np.int32)
  inputs = np.zeros((TOY_LENGTH,), np.int32)
  inputs[:len(tokens)] = tokens
  return {"inputs": inputs, "mask": inputs > 0,
          "targets": np.int32((tokens == 1).sum() > (tokens == 2).sum())}


class ToyCumMean(nn.Module):
  """Causal running mean of a projection; ``log_dt`` exercises the mixer's
  own optimizer group (``_toy_mixer_config``)."""
  d_model: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, *, deterministic=True):
    del deterministic
    log_dt = self.param("log_dt", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), ("embed",)), (self.d_model,))
    h = nn.Dense(self.d_model, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "mlp")))(x)
    m = jnp.ones(x.shape[:2], x.dtype) if mask is None else mask.astype(x.dtype)
    total = jnp.cumsum(h * m[..., None], axis=1)
    count = jnp.maximum(jnp.cumsum(m, axis=1), 1.0)[..., None]
    return nn.gelu(total / count * jnp.exp(log_dt)[None, None, :])


# Runs in one process compile the same programs: share them through the
# persistent compilation cache (the 2-core CI machine spends most of a short
# run compiling).
jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

if TOY_TASK not in tasks.TASKS:
  tasks.register_task(tasks.Task(
      name=TOY_TASK, info=_toy_info, sources=_toy_sources,
      preprocess=_toy_preprocess))
def _toy_mixer_config():
  """The toy mixer's fields: none but an SSM-like optimizer group."""
  c = ml_collections.ConfigDict()
  c.optim_groups = ml_collections.ConfigDict()
  c.optim_groups.ssm = ml_collections.ConfigDict(dict(
      pattern=r"(^|/)mixer/log_dt$", learning_rate=1e-3, weight_decay=0.0))
  return c


if TOY_MIXER not in registry.MIXERS:
  registry.register_mixer(TOY_MIXER, config=_toy_mixer_config)(ToyCumMean)


def toy_config(**train_overrides):
  config = default.get_config()
  config.seed = 7
  config.data.task = TOY_TASK
  config.data.num_train, config.data.num_validation = 256, 40
  config.data.num_test = 40
  config.data.batch_size = 16
  config.data.eval_batch_size = 16  # 40 = 2.5 batches: the last is padded.
  config.model.mixer = TOY_MIXER
  config.model.d_model = 16
  config.model.n_layers = 2
  config.model.norm = "batch"
  config.model.prenorm = True
  config.model.dropout = 0.1
  config.optim.learning_rate = 1e-2
  config.optim.weight_decay = 0.01
  config.optim.warmup_steps = 4
  config.optim.grad_clip_norm = 1.0
  config.train.num_steps = 16
  config.train.progress_bar = False
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 4
  config.train.eval_every_steps = 4
  for key, value in train_overrides.items():
    config.train[key] = value
  config.lock()
  return config


def _records(workdir):
  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  for r in records:
    for key in metrics_lib.TIMING_KEYS:
      r.pop(key, None)
  return records


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """One uninterrupted 16-step toy run on the 8-device mesh, shared by tests."""
  workdir = tmp_path_factory.mktemp("toy_run")
  result = trainer.train_and_evaluate(toy_config(), str(workdir))
  return workdir, result


def test_loss_falls_and_outputs_exist(toy_run):
  workdir, result = toy_run
  records = _records(workdir)
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == list(range(2, 17, 2))
  assert train[-1]["loss"] < 0.5 * train[0]["loss"], train
  val = [r for r in records if r["split"] == "validation"]
  assert [r["step"] for r in val] == [4, 8, 12, 16]
  # Eval padding: 40 examples in batches of 16 count each example once.
  assert all(r["num_examples"] == 40 for r in val)
  assert val[-1]["accuracy"] > 0.7, val
  test = json.loads((workdir / "test_metrics.json").read_text())
  assert test["num_examples"] == 40 and test == result["test"]
  best_accuracy = max(r["accuracy"] for r in val)
  best = test["step"]  # The best checkpoint's (ties: any of them).
  assert [r["accuracy"] for r in val if r["step"] == best] == [best_accuracy]
  assert os.listdir(workdir / "tensorboard" / "train")
  # keep_checkpoints=3 of the checkpoints at 4, 8, 12, 16.
  assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == [
      8, 12, 16]
  assert [int(s) for s in os.listdir(workdir / "checkpoints_best")] == [best]


def test_kill_and_resume_matches_uninterrupted_run(toy_run, tmp_path):
  uninterrupted, _ = toy_run
  resumed = tmp_path / "resumed"
  # "Killed" after step 10: the last checkpoint is step 8; the evaluation and
  # logs of steps 9-10 are redone by the second run.
  first = trainer.train_and_evaluate(toy_config(stop_after_step=10),
                                     str(resumed))
  assert first["step"] == 10 and "test" not in first
  assert not (resumed / "test_metrics.json").exists()
  assert max(r["step"] for r in _records(resumed)) == 10
  trainer.train_and_evaluate(toy_config(), str(resumed))
  assert _records(uninterrupted) == _records(resumed)
  assert (json.loads((uninterrupted / "test_metrics.json").read_text())
          == json.loads((resumed / "test_metrics.json").read_text()))


@pytest.mark.parametrize("mesh", [
    dict(data=1),  # One device (the first).
    dict(data=2, fsdp=2, tensor=2),  # Parameters split too.
], ids=["one_device", "data2_fsdp2_tensor2"])
def test_mesh_shapes_agree_with_eight_way_data_parallel(toy_run, tmp_path, mesh):
  eight, _ = toy_run
  assert len(jax.devices()) == 8
  config = toy_config()
  with config.unlocked():
    config.mesh.update(mesh)
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  other = [(r["step"], r["split"], r["loss"]) for r in _records(tmp_path / "run")]
  eight = [(r["step"], r["split"], r["loss"]) for r in _records(eight)]
  assert [r[:2] for r in other] == [r[:2] for r in eight]
  np.testing.assert_allclose([r[2] for r in other], [r[2] for r in eight],
                             rtol=1e-5)


def test_optimizer_groups_follow_patterns():
  config = toy_config()
  s4_groups = lambda: registry.get_spec("s4").optim_groups(config.model.s4)
  params = {"backbone": {"block_0": {"mixer": {
      "log_dt": jnp.zeros(2), "Dense_0": {"kernel": jnp.ones((2, 2)),
                                          "bias": jnp.zeros(2)}}},
      "norm": {"scale": jnp.ones(2)}}, "head": {"B_proj": jnp.ones(2),
                                               "log_dt": jnp.ones(2)}}
  labels = optim_lib.param_labels(
      params, optim_lib.group_patterns(config.optim, s4_groups()))
  assert labels["backbone"]["block_0"]["mixer"]["log_dt"] == "ssm"
  assert labels["backbone"]["block_0"]["mixer"]["Dense_0"]["kernel"] == "default"
  assert labels["backbone"]["block_0"]["mixer"]["Dense_0"]["bias"] == "no_decay"
  assert labels["backbone"]["norm"]["scale"] == "no_decay"
  # A name that merely contains "B" is not an SSM parameter, nor is a
  # parameter outside the mixer named like one.
  assert labels["head"]["B_proj"] == "default"
  assert labels["head"]["log_dt"] == "default"
  with pytest.raises(ValueError, match="optim.groups.ssm.pattern"):
    optim_lib.param_labels(params, {"ssm": "log_dt", "other": "dt$"})

  # Each group's learning rate and weight decay reach its parameters: with a
  # zero gradient, one AdamW step only decays (lr * wd * p).
  with config.unlocked():
    config.model.s4.optim_groups.ssm.learning_rate = 0.5
    config.model.s4.optim_groups.ssm.weight_decay = 0.2
    config.optim.warmup_steps = 0
    config.optim.schedule = "constant"
    config.optim.grad_clip_norm = None
  tx, _, _ = optim_lib.make_optimizer(config.optim, total_steps=10,
                                      mixer_groups=s4_groups())
  params = {"mixer": {"log_dt": jnp.ones(2), "kernel": jnp.ones(2),
                      "bias": jnp.ones(2)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["mixer"]["log_dt"], -0.5 * 0.2, rtol=1e-6)
  np.testing.assert_allclose(updates["mixer"]["kernel"], -1e-2 * 0.01, rtol=1e-6)
  np.testing.assert_allclose(updates["mixer"]["bias"], 0.0)


# ListOps's test preset runs through the command line below.
# The passkey probe's test preset runs in the study script's test below.
@pytest.mark.parametrize("experiment", ["lra_pathfinder", "lra_pathx",
                                        "probe_mqar"])
def test_experiment_test_preset_trains(experiment, tmp_path):
  module = {"lra_listops": "data.listops", "lra_pathfinder": "data.pathfinder",
            "lra_pathx": "data.pathfinder", "probe_mqar": "data.mqar"}[
                experiment]
  importlib.import_module(module)  # Registers the task.
  config_module = importlib.import_module(f"configs.{experiment}")
  config = config_module.get_config("test")
  with config.unlocked():
    config.data.data_dir = str(tmp_path / "tfds")
    config.train.num_steps = 2
    config.train.eval_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.train.log_every_steps = 1
    config.optim.warmup_steps = 1
  config.lock()
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 2
  assert np.isfinite(result["validation"]["loss"])
  assert np.isfinite(result["test"]["accuracy"])



def test_command_line_run_with_overrides(tmp_path):
  """The README's command: flags, preset, overrides, outputs in the workdir."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "train", "--config=configs/lra_listops.py:test",
       f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'tfds'}",
       "--config.train.num_steps=2", "--config.train.log_every_steps=1",
       "--config.train.eval_every_steps=2",
       "--config.train.checkpoint_every_steps=2",
       "--config.optim.warmup_steps=1", "--config.model.d_model=8"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = _records(workdir)
  assert [(r["step"], r["split"]) for r in records] == [
      (1, "train"), (2, "train"), (2, "validation"), (2, "test")]
  test = json.loads((workdir / "test_metrics.json").read_text())
  assert test["step"] == 2 and 0.0 <= test["accuracy"] <= 1.0


@pytest.mark.parametrize("mode", ["dplr", "diag"])
def test_s4_model_learns_and_one_device_equals_eight(tmp_path, mode):
  """The real S4 mixer in the trainer: loss falls; 1 device == 8 devices."""
  def s4_config(mesh=None):
    config = toy_config()
    with config.unlocked():
      config.model.mixer = "s4"
      config.model.s4.d_state = 8
      config.model.s4.mode = mode
      config.model.s4.ssm_init = "legs" if mode == "dplr" else "inv"
      config.model.s4.bidirectional = mode == "dplr"
      config.model.dropout = 0.0
      config.train.num_steps = 24
      config.train.checkpoint_every_steps = 24
      config.train.eval_every_steps = 24
      if mesh:
        config.mesh.update(mesh)
    return config

  runs = {}
  for name, mesh in (("eight", None), ("one", dict(data=1))):
    trainer.train_and_evaluate(s4_config(mesh), str(tmp_path / name))
    runs[name] = [r for r in _records(tmp_path / name) if r["split"] == "train"]
  losses = [r["loss"] for r in runs["eight"]]
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  # fp32 reductions split over 8 devices differ in order: ~1e-5 after 24 steps.
  np.testing.assert_allclose([r["loss"] for r in runs["one"]], losses, rtol=1e-4)


# The command line of train/__main__.py plus --kill_at_step: a hook SIGKILLs
# the process right after that step, its checkpoint possibly still writing.
_KILL_RUNNER = """
import os
import signal

from absl import app
from absl import flags
from ml_collections import config_flags

from train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "")
_KILL_AT_STEP = flags.DEFINE_integer("kill_at_step", None, "")


def kill_at_step(step, state):
  del state
  if step == _KILL_AT_STEP.value:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv):
  del argv
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                             hooks=[kill_at_step])


app.run(main)
"""


def _cli_run(workdir, tfds_dir, steps, kill_at_step=None):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)
  command = [sys.executable, "-m", "train"]
  if kill_at_step is not None:
    command = [sys.executable, "-c", _KILL_RUNNER,
               f"--kill_at_step={kill_at_step}"]
  return subprocess.run(
      command + [
          "--config=configs/lra_listops.py:test",
          f"--workdir={workdir}", f"--config.data.data_dir={tfds_dir}",
          f"--config.train.num_steps={steps}",
          "--config.train.log_every_steps=2",
          "--config.train.eval_every_steps=2",
          "--config.train.checkpoint_every_steps=4",
          "--config.optim.warmup_steps=1", "--config.model.dropout=0.1"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
  """A process SIGKILLed right after it starts writing a checkpoint (async)
  resumes from the last complete one and ends exactly as an uninterrupted run:
  same logged metrics, same best checkpoint, same test metrics."""
  tfds_dir = tmp_path / "tfds"
  full = _cli_run(tmp_path / "full", tfds_dir, 12)
  assert full.returncode == 0, full.stderr[-3000:]
  killed = _cli_run(tmp_path / "killed", tfds_dir, 12, kill_at_step=8)
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert not (tmp_path / "killed" / "test_metrics.json").exists()
  resumed = _cli_run(tmp_path / "killed", tfds_dir, 12)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert _records(tmp_path / "full") == _records(tmp_path / "killed")
  assert (json.loads((tmp_path / "full" / "test_metrics.json").read_text())
          == json.loads((tmp_path / "killed" / "test_metrics.json").read_text()))


def test_hooks_see_every_step_and_the_config_is_validated_once(tmp_path,
                                                               monkeypatch):
  """A hook is called after every step with that step's state, in a fresh and
  in a resumed run; each run validates its config once."""
  validations = []
  validate_config = validate.validate_config

  def counting_validate_config(*args, **kwargs):
    validations.append(kwargs)
    return validate_config(*args, **kwargs)

  monkeypatch.setattr(validate, "validate_config", counting_validate_config)
  seen = []
  hook = lambda step, state: seen.append((step, int(state.step)))
  first = trainer.train_and_evaluate(toy_config(stop_after_step=6),
                                     str(tmp_path), hooks=[hook])
  assert first["step"] == 6 and len(validations) == 1
  assert seen == [(s, s) for s in range(1, 7)]
  # Resumed from the checkpoint of step 4: steps 5 and 6 again, to the end.
  seen.clear()
  second = trainer.train_and_evaluate(toy_config(), str(tmp_path),
                                      hooks=[hook, hook])
  assert second["step"] == 16 and "test" in second and len(validations) == 2
  assert seen == [(s, s) for s in range(5, 17) for _ in range(2)]


def _new_mixer_config(mixer, mesh=None, steps=24):
  config = toy_config()
  with config.unlocked():
    config.model.mixer = mixer
    config.model.dropout = 0.0
    if mixer == "mamba2":
      # The Mamba-2 block: RMSNorm, its own output projection.
      config.model.norm = "rms"
      config.model.output = "none"
      config.model.mamba2.update(dict(d_state=8, head_dim=8, chunk_size=8))
    else:
      config.model.sgconv.update(dict(kernel_dim=4, bidirectional=True))
    config.train.num_steps = steps
    config.train.checkpoint_every_steps = steps
    config.train.eval_every_steps = steps
    if mesh:
      config.mesh.update(mesh)
  return config


@pytest.mark.parametrize("mixer", ["mamba2", "sgconv"])
def test_mamba2_and_sgconv_learn_and_one_device_equals_eight(tmp_path, mixer):
  """Mamba-2 and SGConv inside the LRA backbone: the loss falls, and a run on
  one device logs the losses of the run on 8 (Mamba-2)."""
  runs = {}
  meshes = (("eight", None), ("one", dict(data=1)))
  for name, mesh in meshes[:2 if mixer == "mamba2" else 1]:
    trainer.train_and_evaluate(_new_mixer_config(mixer, mesh), str(tmp_path / name))
    runs[name] = [r for r in _records(tmp_path / name) if r["split"] == "train"]
  losses = [r["loss"] for r in runs["eight"]]
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  if "one" in runs:
    np.testing.assert_allclose([r["loss"] for r in runs["one"]], losses,
                               rtol=1e-4)


# Attention mixers at the toy length (16): small windows, blocks and ranks.
ATTENTION_MIXERS = {
    "attention": {},
    "linear_attention": {"causal": False, "chunk_size": 4},
    "linformer": {"k": 8},
    "lowrank": {"rank": 4},
    "longformer": {"window": 4},
    "bigbird": {"block_size": 4, "num_rand_blocks": 1},
    "probsparse": {"factor": 1},
}


@pytest.mark.parametrize("mixer", sorted(ATTENTION_MIXERS))
def test_attention_mixers_learn_in_the_lra_backbone(tmp_path, mixer):
  """Each attention mixer in the LRA backbone (its own output projection,
  a feed-forward sublayer): the loss falls within a few steps."""
  config = toy_config()
  with config.unlocked():
    config.model.mixer = mixer
    config.model.output = "none"
    config.model.ff_mult = 2
    config.model[mixer].update(dict(n_heads=2, **ATTENTION_MIXERS[mixer]))
    config.train.num_steps = 24
    config.train.checkpoint_every_steps = 24
    config.train.eval_every_steps = 24
  trainer.train_and_evaluate(config, str(tmp_path))
  losses = [r["loss"] for r in _records(tmp_path) if r["split"] == "train"]
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_mamba2_decay_free_parameters_join_no_decay():
  config = _new_mixer_config("mamba2")
  spec = registry.get_spec("mamba2")
  params = {"backbone": {"block_0": {"mixer": {
      "A_log": jnp.zeros(2), "D": jnp.zeros(2), "dt_bias": jnp.zeros(2),
      "in_proj": {"kernel": jnp.ones((2, 2))}}}},
      "head": {"D": jnp.zeros(2)}}
  mixer_groups = spec.optim_groups(config.model.mamba2)
  patterns = optim_lib.group_patterns(config.optim, mixer_groups)
  labels = optim_lib.param_labels(params, patterns)
  mixer = labels["backbone"]["block_0"]["mixer"]
  assert [mixer[k] for k in ("A_log", "D", "dt_bias")] == ["ssm"] * 3
  hyper = optim_lib.group_hyperparameters(config.optim, mixer_groups)
  assert hyper["ssm"] == (config.optim.learning_rate, 0.0)
  assert mixer["in_proj"]["kernel"] == "default"
  assert labels["head"]["D"] == "default"  # Only the mixer's own D.


TOY_LM_TASK = "toy_previous_token"


class _ToyLMSource(_ToySource):

  def __getitem__(self, i):
    return {"tokens": self._tokens[i, :self._lengths[i]] + 2}  # ids 3, 4


def _toy_lm_preprocess(raw, data_config):
  """Predict the previous token at every position but the first."""
  del data_config
  tokens = np.asarray(raw["tokens"], np.int32)
  inputs = np.zeros((TOY_LENGTH,), np.int32)
  inputs[:len(tokens)] = tokens
  targets = np.zeros((TOY_LENGTH,), np.int32)
  targets[1:len(tokens)] = tokens[:-1]
  target_mask = np.zeros((TOY_LENGTH,), bool)
  target_mask[1:len(tokens)] = True
  return {"inputs": inputs, "mask": inputs > 0, "targets": targets,
          "target_mask": target_mask}


if TOY_LM_TASK not in tasks.TASKS:
  tasks.register_task(tasks.Task(
      name=TOY_LM_TASK,
      info=lambda c: tasks.TaskInfo(num_classes=5, max_length=TOY_LENGTH,
                                    input_kind="tokens", vocab_size=5,
                                    output_kind="tokens"),
      sources=lambda c: {"train": _ToyLMSource(c.num_train, 1),
                         "validation": _ToyLMSource(c.num_validation, 2),
                         "test": _ToyLMSource(c.num_test, 3)},
      preprocess=_toy_lm_preprocess))


def test_token_level_task_trains_a_causal_lm(tmp_path):
  """A task with a target at every position trains models.CausalLM: the
  per-token loss falls, exact match and token accuracy are reported, and
  restore_model gives back the best checkpoint's model."""
  config = _new_mixer_config("mamba2", steps=40)
  with config.unlocked():
    config.data.task = TOY_LM_TASK
    config.train.eval_every_steps = 20
    config.train.checkpoint_every_steps = 20
  result = trainer.train_and_evaluate(config, str(tmp_path))
  train = [r for r in _records(tmp_path) if r["split"] == "train"]
  assert train[-1]["loss"] < 0.5 * train[0]["loss"], train
  assert result["test"]["token_accuracy"] > 0.9, result["test"]
  assert 0.0 <= result["test"]["accuracy"] <= result["test"]["token_accuracy"]
  model, variables, step = trainer.restore_model(config, str(tmp_path))
  assert step == result["test"]["step"]
  batch = _toy_lm_preprocess({"tokens": np.array([3, 4, 4, 3, 3])}, None)
  logits = model.apply(variables, batch["inputs"][None], batch["mask"][None])
  assert logits.shape == (1, TOY_LENGTH, 5)
  np.testing.assert_array_equal(
      np.argmax(logits[0], -1)[1:5], batch["targets"][1:5])


def test_study_state_collapse_script_end_to_end(tmp_path):
  """The study script trains the passkey test preset, evaluates it at 1x and
  2x with mitigations, and writes its JSON and plot."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)
  out = tmp_path / "study.json"
  proc = subprocess.run(
      [sys.executable, "benchmarks/study_state_collapse.py",
       "--config=configs/probe_passkey.py:test",
       f"--workdir={tmp_path / 'run'}", f"--data-dir={tmp_path / 'tfds'}",
       "--multiples", "1", "2", "--num-examples", "4", "--batch-size", "4",
       "--settings", "none", "decay_scale=2,insert_scale=0.5",
       "state_norm=auto", "window=T/2", f"--out={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  rows = report["results"]
  assert [(r["setting"], r["multiple"]) for r in rows] == [
      (s, m) for s in ("none", "decay_scale=2,insert_scale=0.5",
                       "state_norm=auto", "window=T/2") for m in (1, 2)]
  assert rows[-1]["fields"] == {"window": 48}
  for r in rows:
    assert 0.0 <= r["accuracy"] <= 1.0
    assert len(r["state_norm_curve"][0]) == len(r["curve_positions"])
    assert r["curve_positions"][-1] == r["length"]
  # The normalised state never exceeds the calibrated bound.
  bound = report["auto_state_norm"]
  assert all(r["state_norm_max"] <= bound * (1 + 1e-5)
             for r in rows if r["setting"] == "state_norm=auto")
  assert (tmp_path / "study.png").exists()


def test_token_loss_uses_loss_mask_and_accuracy_uses_target_mask():
  """With ``loss_mask`` the loss covers every marked next token while the
  accuracies score only ``target_mask``; padding rows (weight 0) count in
  neither."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  targets = rng.integers(0, 4, size=(3, 5)).astype(np.int32)
  pred = np.asarray(jnp.argmax(logits, -1))
  targets[0, 3:] = pred[0, 3:]  # Row 0: both answer tokens right.
  targets[1, 3] = pred[1, 3]
  targets[1, 4] = (pred[1, 4] + 1) % 4  # Row 1: one of two right.
  target_mask = np.zeros((3, 5), bool)
  target_mask[:, 3:] = True
  loss_mask = np.ones((3, 5), bool)
  loss_mask[:, 4] = False
  weight = np.array([1.0, 1.0, 0.0], np.float32)  # Row 2 is padding.
  batch = {"targets": targets, "target_mask": target_mask,
           "loss_mask": loss_mask, "weight": weight}
  means = jax.tree.map(float, steps.means_of(steps.loss_sums(logits, batch)))
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  want_loss = ce[:2][loss_mask[:2]].mean()
  np.testing.assert_allclose(means["loss"], want_loss, rtol=1e-6)
  assert means["accuracy"] == 0.5  # Row 0 exact, row 1 not.
  assert means["token_accuracy"] == 0.75  # 3 of the 4 answer tokens.
  del batch["loss_mask"]  # Default: the loss covers target_mask only.
  means = jax.tree.map(float, steps.means_of(steps.loss_sums(logits, batch)))
  np.testing.assert_allclose(means["loss"], ce[:2][target_mask[:2]].mean(),
                             rtol=1e-6)
