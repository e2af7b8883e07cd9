"""LRA ListOps with S4 (``--config configs/lra_listops.py:PRESET``).

Presets:
  full: the S4 reference LRA setting. Hyperparameters from state-spaces/s4
    configs/experiment/lra/s4-listops.yaml (the settings behind the S4 paper's
    LRA results; Gu et al., 2022, "Efficiently Modeling Long Sequences with
    Structured State Spaces", Table of LRA hyperparameters): 6 layers,
    d_model 256, d_state 4, post-norm BatchNorm, no dropout, bidirectional
    LegS kernels, dt in [1e-3, 1e-1], AdamW lr 0.01, weight decay 0.05,
    batch 32, 40 epochs, cosine schedule with 12k of 120k steps warmup; A and B
    at lr 1e-3, dt at the base lr (``lr.dt: null``), all three without weight
    decay; mean pooling.
  cpu: 4 layers, d_model 64, 8000 generated expressions of 32-256 tokens
    (depth <= 6), 6 epochs; the README's quickstart (about 3 minutes on a
    2-core CPU).
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
  data.task = "listops"
  data.batch_size = 32
  data.eval_batch_size = 64
  # The task's fields (data/listops.py config()): LRA's length and generator.
  listops = data.listops
  listops.max_length = 2000

  default.s4_lra(config, d_state=4, prenorm=False, learning_rate=0.01,
                 warmup_steps=12_000)
  model, optim = config.model, config.optim
  default.s4_dt_at_base_lr(config)  # lr.dt: null in the reference file.

  train = config.train
  train.num_epochs = 40
  train.log_every_steps = 100
  train.checkpoint_every_steps = 1000

  if preset == "cpu":
    data.num_train, data.num_validation, data.num_test = 8000, 500, 500
    listops.max_length = 256
    listops.generate_min_length = 32
    listops.generate_max_length = 256
    listops.generate_max_depth = 6
    data.eval_batch_size = 40
    model.n_layers = 4
    model.d_model = 64
    optim.warmup_steps = 30
    train.num_epochs = 6
    train.log_every_steps = 10
    train.eval_every_steps = 250
    train.checkpoint_every_steps = 250
  elif preset == "test":
    data.num_train, data.num_validation, data.num_test = 64, 24, 24
    listops.max_length = 64
    listops.generate_min_length = 8
    listops.generate_max_length = 64
    listops.generate_max_depth = 4
    data.batch_size = 8
    data.eval_batch_size = 16
    model.n_layers = 1
    model.d_model = 16
    optim.warmup_steps = 2
    train.num_epochs = 1
    train.log_every_steps = 2
    train.eval_every_steps = 4
    train.checkpoint_every_steps = 4
    train.progress_bar = False
  return config
