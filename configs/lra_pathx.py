"""LRA Path-X (Pathfinder at 128x128) with S4 (``configs/lra_pathx.py:PRESET``).

Presets:
  full: the S4 reference LRA setting. Hyperparameters from state-spaces/s4
    configs/experiment/lra/s4-pathx.yaml (the settings behind the S4 paper's
    LRA results; Gu et al., 2022, Table of LRA hyperparameters): 128x128
    images (sequences of 16384 pixels), 6 layers, d_model 256, d_state 64,
    pre-norm BatchNorm, no dropout, bidirectional LegS kernels, dt in
    [1e-4, 1e-1] (the smaller dt_min lets kernels span 16k steps), AdamW
    lr 0.001, weight decay 0.05, batch 16, 50 epochs, cosine schedule with
    50k of 500k steps warmup; dt, A and B at lr 1e-3 without weight decay;
    mean pooling.
  cpu: 2 layers, d_model 32, a few hundred generated "easy" images at the
    full 16384-long sequences: 32 steps, a few seconds each on a 2-core CPU.
  test: tiny, for CI end-to-end tests.
"""
import ml_collections

from configs import default

PRESETS = ("full", "cpu", "test")


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"{preset=} is not one of {PRESETS}")
  config = default.get_config()
  config.seed = 3333  # train.seed in the reference experiment file.

  data = config.data
  data.task = "pathx"
  data.resolution = 128
  data.difficulty = "hard"
  data.batch_size = 16
  data.eval_batch_size = 32

  model = config.model
  model.mixer = "s4"
  model.n_layers = 6
  model.d_model = 256
  model.prenorm = True
  model.norm = "batch"
  model.dropout = 0.0
  model.output = "glu"
  model.pool = "mean"
  s4 = model.s4
  s4.d_state = 64
  s4.mode = "dplr"
  s4.ssm_init = "legs"
  s4.bidirectional = True
  s4.dt_min = 1e-4
  s4.dt_max = 1e-1

  optim = config.optim
  optim.learning_rate = 0.001
  optim.weight_decay = 0.05
  optim.schedule = "cosine"
  optim.warmup_steps = 50_000
  optim.groups.ssm.learning_rate = 1e-3
  optim.groups.ssm.weight_decay = 0.0

  train = config.train
  train.num_epochs = 50
  train.log_every_steps = 100
  train.checkpoint_every_steps = 1000

  if preset == "cpu":
    data.num_train, data.num_validation, data.num_test = 256, 64, 64
    data.difficulty = "easy"
    data.batch_size = 16
    data.eval_batch_size = 32
    model.n_layers = 2
    model.d_model = 32
    optim.warmup_steps = 4
    train.num_epochs = 2
    train.log_every_steps = 4
    train.eval_every_steps = 16
    train.checkpoint_every_steps = 16
  elif preset == "test":
    data.num_train, data.num_validation, data.num_test = 16, 8, 8
    data.batch_size = 8
    data.eval_batch_size = 8
    model.n_layers = 1
    model.d_model = 8
    s4.d_state = 8
    optim.warmup_steps = 1
    train.num_epochs = 1
    train.log_every_steps = 1
    train.eval_every_steps = 2
    train.checkpoint_every_steps = 2
    train.progress_bar = False
  return config
