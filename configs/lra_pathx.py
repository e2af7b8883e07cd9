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

from configs import lra_pathfinder

PRESETS = lra_pathfinder.PRESETS


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  # Path-X is the Pathfinder experiment at 128x128: start from it and change
  # what the reference s4-pathx.yaml changes.
  config = lra_pathfinder.get_config(preset)  # Also rejects unknown presets.
  data, model, optim, train = config.data, config.model, config.optim, config.train
  data.task = "pathx"
  data.pathx.resolution = 128
  # The Pathfinder file's difficulty per preset (hard; easy for cpu).
  data.pathx.difficulty = data.pathfinder.difficulty
  data.batch_size = 16
  data.eval_batch_size = 32
  model.s4.dt_min = 1e-4
  optim.learning_rate = 0.001
  train.num_epochs = 50

  if preset == "cpu":
    data.num_train, data.num_validation, data.num_test = 256, 64, 64
    data.batch_size = 16
    data.eval_batch_size = 32
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
    model.d_model = 8
    train.num_epochs = 1
    train.log_every_steps = 1
    train.eval_every_steps = 2
    train.checkpoint_every_steps = 2
  return config
