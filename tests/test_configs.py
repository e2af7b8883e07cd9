"""Configs: every experiment and preset loads and validates; bad fields fail
with a message that names them; command-line overrides work."""
import importlib
import importlib.util
import os
import re
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from configs import default
from configs import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = {"lra_listops": "data.listops", "lra_pathfinder": "data.pathfinder",
               "lra_pathx": "data.pathfinder", "probe_passkey": "data.passkey",
               "probe_mqar": "data.mqar"}


def _require(module):
  importlib.import_module(module)  # Registers its tasks.


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
@pytest.mark.parametrize("preset", ["full", "cpu", "test"])
def test_every_preset_loads_and_validates(experiment, preset):
  _require(EXPERIMENTS[experiment])
  module = importlib.import_module(f"configs.{experiment}")
  config = module.get_config(preset)
  for num_devices in (1, 8):
    validate.validate_config(config, num_devices=num_devices)
  if preset != "full":
    assert config.data.num_train is not None  # Small generated data.
    assert validate.total_steps(config, None) >= config.optim.warmup_steps


def test_default_config_validates():
  _require("data.listops")
  config = default.get_config()
  config.lock()
  validate.validate_config(config, num_devices=8)


def test_every_task_owns_its_config_namespace():
  """config.data.<task> is the task's config(), for every registered task; the
  fields all tasks share stay in config.data."""
  from data import tasks  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  for name, task in tasks.registered_tasks().items():
    assert config.data[name].to_dict() == task.config().to_dict(), name
  for name in ("task", "data_dir", "manual_dir", "num_train", "batch_size",
               "generate_seed"):
    assert name in config.data
  for moved in ("max_length", "resolution", "difficulty", "seq_len", "lm_loss"):
    assert moved not in config.data


def test_building_a_config_imports_no_tfds_or_grain():
  """Parsing a config imports no data pipeline, and starts no jax backend
  (the mixers' declarations import jax and flax, but python -m train applies
  its malloc settings after parsing the flags and before XLA starts)."""
  code = ("import sys; from configs import default; default.get_config(); "
          "from jax._src import xla_bridge; "
          "print(sorted(m for m in ('tensorflow_datasets', 'grain', 'scipy') "
          "if m in sys.modules), sorted(xla_bridge._backends))")
  env = dict(os.environ, PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120, check=True)
  assert out.stdout.strip() == "[] []", out.stdout


@pytest.mark.parametrize("experiment,field,value,message", [
    ("lra_pathfinder", "data.pathfinder.difficulty", "medium",
     "data.pathfinder.difficulty='medium' is not one of ('easy', 'intermediate', "
     "'hard')"),
    ("lra_pathx", "data.pathx.resolution", 32, "data.pathx.resolution=32 is not one of"),
    ("probe_passkey", "data.passkey.key_length", 0,
     "data.passkey.key_length=0 must be >= 1"),
    ("probe_mqar", "data.mqar.vocab_size", 8, "data.mqar.vocab_size=8 must be >= 10"),
])
def test_the_chosen_task_validates_its_fields(experiment, field, value, message):
  config = importlib.import_module(f"configs.{experiment}").get_config("test")
  _set(field, value)(config)
  with pytest.raises(ValueError, match=re.escape(message)):
    validate.validate_config(config, num_devices=1)
  # Another task's fields are that task's business.
  config = importlib.import_module(f"configs.{experiment}").get_config("test")
  config.data.listops.max_length = 0
  validate.validate_config(config, num_devices=1)


def test_task_fields_from_the_command_line():
  config = _parse(["train", "--config=configs/lra_listops.py:cpu",
                   "--config.data.listops.max_length=512",
                   "--config.data.listops.generate_max_depth=5"])
  assert config.data.listops.max_length == 512
  assert config.data.listops.generate_max_depth == 5
  with pytest.raises(AttributeError, match="max_lenght"):
    _parse(["train", "--config=configs/lra_listops.py:cpu",
            "--config.data.listops.max_lenght=3"])


def test_unknown_preset_is_rejected():
  from configs import lra_listops  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="preset='huge'"):
    lra_listops.get_config("huge")


def test_full_presets_follow_the_s4_lra_settings():
  from configs import lra_listops, lra_pathfinder, lra_pathx  # pylint: disable=g-import-not-at-top,g-multiple-import
  expected = {  # lr, batch, epochs, d_state, prenorm, dt_min
      lra_listops: (0.01, 32, 40, 4, False, 1e-3),
      lra_pathfinder: (0.004, 64, 200, 64, True, 1e-3),
      lra_pathx: (0.001, 16, 50, 64, True, 1e-4),
  }
  for module, (lr, batch, epochs, d_state, prenorm, dt_min) in expected.items():
    c = module.get_config("full")
    assert (c.optim.learning_rate, c.data.batch_size, c.train.num_epochs,
            c.model.s4.d_state, c.model.prenorm, c.model.s4.dt_min) == (
                lr, batch, epochs, d_state, prenorm, dt_min), module.__name__
    assert (c.model.n_layers, c.model.d_model, c.model.norm) == (6, 256, "batch")
    assert c.optim.weight_decay == 0.05 and c.model.s4.dt_max == 0.1
    assert c.model.s4.bidirectional and c.optim.schedule == "cosine"
    assert c.model.s4.optim_groups.ssm.learning_rate == 1e-3
    assert c.model.s4.optim_groups.ssm.weight_decay == 0.0


def _listops_test_config():
  _require("data.listops")
  from configs import lra_listops  # pylint: disable=g-import-not-at-top
  return lra_listops.get_config("test")


def _set(path, value):
  def mutate(config):
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return mutate


BAD_FIELDS = [
    ("model.mixer", "nope"),
    ("data.task", "nope"),
    ("data.listops.max_length", 0),
    ("data.listops.generate_max_depth", 1),
    ("model.norm", "group"),
    ("model.pool", "median"),
    ("model.output", "swiglu"),
    ("optim.schedule", "linear"),
    ("optim.optimizer", "sgd"),
    ("model.s4.d_state", 63),
    ("model.s4.mode", "full"),
    ("model.s4.ssm_init", "lin"),  # With mode "dplr".
    ("model.s4.discretization", "euler"),
    ("model.s4.dt_min", 0.5),  # > dt_max.
    ("model.s4.impl", "cuda"),
    ("model.s4.impl", "pallas"),  # No GPU/TPU in the tests.
    ("model.dropout", 1.5),
    ("data.batch_size", 12),  # Not divisible by 8 data-parallel devices.
    ("data.eval_batch_size", 20),
    ("optim.warmup_steps", 10_000),  # More than the total steps.
    ("model.s4.optim_groups.ssm.pattern", "(log_dt"),
    ("model.s4.optim_groups.ssm.learning_rate", -1.0),
    ("optim.groups.no_decay.pattern", "(bias"),
    ("optim.groups.no_decay.weight_decay", -1.0),
    ("model.dtype", "float16"),
    ("model.param_dtype", "int8"),
    ("train.checkpoint_every_steps", 3),  # Not a multiple of log_every_steps.
    ("mesh.tensor", 3),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_bad_field_fails_naming_it(field, value):
  config = _listops_test_config()
  _set(field, value)(config)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    validate.validate_config(config, num_devices=8)


def test_mesh_and_rules_errors_name_the_field():
  config = _listops_test_config()
  config.mesh.data, config.mesh.fsdp = -1, -1
  with pytest.raises(ValueError, match=r"mesh\.data=-1"):
    validate.validate_config(config, num_devices=8)
  config = _listops_test_config()
  config.mesh.logical_axis_rules = (("batch", "dta"),)
  with pytest.raises(ValueError, match=r"mesh\.logical_axis_rules.*'dta'"):
    validate.validate_config(config, num_devices=8)


def test_locked_config_rejects_unknown_fields_by_name():
  config = default.get_config()
  config.lock()
  with pytest.raises(AttributeError, match="d_modle"):
    config.model.d_modle = 3


def _parse(argv):
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_command_line_overrides():
  _require("data.listops")
  config = _parse(["train", "--config=configs/lra_listops.py:cpu",
                   "--config.model.d_model=128", "--config.model.s4.l_max=512",
                   "--config.optim.grad_clip_norm=1.0",
                   "--config.model.s4.optim_groups.ssm.learning_rate=0.002",
                   "--config.model.dtype=bfloat16"])
  assert config.model.d_model == 128 and config.model.s4.l_max == 512
  assert config.optim.grad_clip_norm == 1.0
  assert config.model.s4.optim_groups.ssm.learning_rate == 0.002
  assert config.model.dtype == "bfloat16"
  assert config.data.num_train == 8000  # The preset applied.
  assert config.is_locked
  with pytest.raises(AttributeError, match="d_stat"):
    _parse(["train", "--config=configs/lra_listops.py:cpu",
            "--config.model.s4.d_stat=3"])


def test_entry_point_names_an_unknown_field():
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "train", "--config=configs/lra_listops.py:test",
       "--workdir", "unused", "--config.model.s4.d_stat=3"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "model.s4.d_stat" in proc.stderr and "d_state" in proc.stderr


@pytest.mark.parametrize("field,value,message", [
    ("model.mamba2.head_dim", 48, "does not divide the inner width"),
    ("model.mamba2.n_groups", 3, "does not divide the 4 heads"),
    ("model.mamba2.decay_scale", 0.5, "must be >= 1.0"),
    ("model.mamba2.insert_scale", 1.5, "must be <= 1.0"),
    ("model.mamba2.impl", "pallas", "is not one of"),
    ("model.mamba2.window", 0, "must be >= 1"),
    ("model.mamba2.d_conv", 0, "must be >= 1"),
    ("model.mamba2.unknown_field", 1, "does not have"),
])
def test_mamba2_config_errors_name_the_field(field, value, message):
  _require("data.passkey")
  from configs import probe_passkey  # pylint: disable=g-import-not-at-top
  config = probe_passkey.get_config("test")
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  with config.unlocked():
    node[leaf] = value
  with pytest.raises(ValueError, match=message) as e:
    validate.validate_config(config, num_devices=1)
  assert field.rsplit(".", 1)[0] in str(e.value)


def test_probe_configs_reject_a_bidirectional_mixer_and_mixed_mitigations():
  _require("data.passkey")
  from configs import probe_passkey  # pylint: disable=g-import-not-at-top
  config = probe_passkey.get_config("test")
  config.model.mamba2.window = 8
  config.model.mamba2.state_norm = 1.0
  with pytest.raises(ValueError, match="model.mamba2.window=8 cannot be combined"):
    validate.validate_config(config, num_devices=1)
  config = probe_passkey.get_config("test")
  config.model.mixer = "sgconv"
  config.model.output = "glu"
  config.model.sgconv.bidirectional = True
  with pytest.raises(ValueError, match="model.sgconv.bidirectional=True is impossible"):
    validate.validate_config(config, num_devices=1)
  config.model.sgconv.bidirectional = False
  validate.validate_config(config, num_devices=1)


def test_sgconv_config_errors_name_the_field():
  _require("data.listops")
  config = _listops_test_config()
  config.model.mixer = "sgconv"
  config.model.sgconv.l_max = 10
  with pytest.raises(ValueError, match="model.sgconv.l_max=10 is shorter"):
    validate.validate_config(config, num_devices=1)
  config.model.sgconv.l_max = None
  config.model.sgconv.channels = 2
  config.model.output = "none"
  with pytest.raises(ValueError, match="model.output='none' cannot follow"):
    validate.validate_config(config, num_devices=1)
