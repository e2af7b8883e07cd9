"""LRA Text (byte-level IMDB) with S4 (``--config configs/lra_text.py:PRESET``).

Presets:
  full: the S4 reference setting, state-spaces/s4
    configs/experiment/lra/s4-imdb.yaml: 6 layers, d_model 256, d_state 4,
    pre-norm BatchNorm, no dropout, bidirectional LegS kernels, dt in
    [1e-3, 1e-1], AdamW lr 0.01, weight decay 0.05, batch 16, 32 epochs, cosine
    schedule with 5k of 50k steps warmup; A and B at lr 1e-3, dt at the base
    lr (``lr.dt: null``), all three without weight decay; mean pooling; 4096
    positions. S4 reads characters with a min-frequency vocabulary; this
    task reads bytes as LRA does (data/text.py).
  cpu: 4 layers, d_model 64, reviews cut to 1024 bytes (LRA's config uses
    1000), 2 epochs over 2,500 training reviews; needs the data (downloaded,
    or data.manual_dir).
  test: tiny, for CI end-to-end tests (they write a small aclImdb folder and
    set data.manual_dir).
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
  data.task = "text"
  data.batch_size = 16
  data.eval_batch_size = 32
  text = data.text
  text.max_length = 4096

  default.s4_lra(config, d_state=4, prenorm=True, learning_rate=0.01,
                 warmup_steps=5_000)
  default.s4_dt_at_base_lr(config)
  model, optim, train = config.model, config.optim, config.train
  train.num_epochs = 32
  train.log_every_steps = 100
  train.checkpoint_every_steps = 1000

  if preset == "cpu":
    data.num_train, data.num_validation, data.num_test = 2500, 500, 500
    text.max_length = 1024
    model.n_layers = 4
    model.d_model = 64
    optim.warmup_steps = 30
    train.num_epochs = 2
    train.log_every_steps = 10
    train.eval_every_steps = 100
    train.checkpoint_every_steps = 100
  elif preset == "test":
    data.num_train, data.num_validation, data.num_test = 16, 8, 8
    text.max_length = 64
    data.batch_size = 8
    data.eval_batch_size = 8
    model.n_layers = 1
    model.d_model = 16
    optim.warmup_steps = 2
    train.num_epochs = 2
    train.log_every_steps = 2
    train.eval_every_steps = 4
    train.checkpoint_every_steps = 4
    train.progress_bar = False
  return config
