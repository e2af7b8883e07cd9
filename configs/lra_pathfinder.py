"""LRA Pathfinder with S4 (``--config configs/lra_pathfinder.py:PRESET``).

Presets:
  full: the S4 reference LRA setting. Hyperparameters from state-spaces/s4
    configs/experiment/lra/s4-pathfinder.yaml (the settings behind the S4
    paper's LRA results; Gu et al., 2022, Table of LRA hyperparameters):
    32x32 images (sequences of 1024 pixels), 6 layers, d_model 256, d_state 64,
    pre-norm BatchNorm, no dropout, bidirectional LegS kernels, dt in
    [1e-3, 1e-1], AdamW lr 0.004, weight decay 0.05, batch 64, 200 epochs,
    cosine schedule with 50k of 500k steps warmup; dt, A and B at lr 1e-3
    without weight decay; mean pooling.
  cpu: 2 layers, d_model 64, a few thousand generated "easy" images; trains on
    a 2-core CPU in a few minutes.
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
  data.task = "pathfinder"
  data.pathfinder.resolution = 32
  data.pathfinder.difficulty = "hard"
  data.batch_size = 64
  data.eval_batch_size = 128

  default.s4_lra(config, d_state=64, prenorm=True, learning_rate=0.004,
                 warmup_steps=50_000)
  model, optim = config.model, config.optim
  s4 = model.s4

  train = config.train
  train.num_epochs = 200
  train.log_every_steps = 100
  train.checkpoint_every_steps = 1000

  if preset == "cpu":
    data.num_train, data.num_validation, data.num_test = 2048, 256, 256
    data.pathfinder.difficulty = "easy"
    data.batch_size = 32
    data.eval_batch_size = 128
    model.n_layers = 2
    model.d_model = 64
    optim.warmup_steps = 30
    train.num_epochs = 4
    train.log_every_steps = 8
    train.eval_every_steps = 64
    train.checkpoint_every_steps = 64
  elif preset == "test":
    data.num_train, data.num_validation, data.num_test = 32, 16, 16
    data.batch_size = 8
    data.eval_batch_size = 16
    model.n_layers = 1
    model.d_model = 16
    s4.d_state = 8
    optim.warmup_steps = 1
    train.num_epochs = 1
    train.log_every_steps = 2
    train.eval_every_steps = 4
    train.checkpoint_every_steps = 4
    train.progress_bar = False
  return config
