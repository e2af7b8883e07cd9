"""LRA Image (CIFAR-10 grayscale) with S4 (``--config configs/lra_image.py:PRESET``).

Presets:
  full: the S4 reference setting, state-spaces/s4
    configs/experiment/lra/s4-cifar.yaml: 6 layers, d_model 512, d_state 64,
    post-norm BatchNorm, dropout 0.1, bidirectional LegS kernels, dt in
    [1e-3, 1e-1], AdamW lr 0.01, weight decay 0.05, batch 50, 200 epochs,
    cosine schedule with 18k of 180k steps warmup; the SSM parameters at lr
    1e-3 without weight decay; mean pooling; S4's grayscale convention
    (data.image.convention="s4"). Not reproduced: S4's ``tie_dropout``
    (one dropout mask for the whole sequence); dropout here is per element.
  cpu: 4 layers, d_model 64, d_state 16, 5,000 training images, 2 epochs;
    needs the data (downloaded, or data.manual_dir).
  test: tiny, for CI end-to-end tests (they write small CIFAR-10 batches and
    set data.manual_dir).
"""
import ml_collections

from configs import default

PRESETS = ("full", "cpu", "test")


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"{preset=} is not one of {PRESETS}")
  config = default.get_config()
  config.seed = 2222  # train.seed in the reference experiment file.

  data = config.data
  data.task = "image"
  data.batch_size = 50
  data.eval_batch_size = 100
  data.image.convention = "s4"

  default.s4_lra(config, d_state=64, prenorm=False, learning_rate=0.01,
                 warmup_steps=18_000)
  model, optim, train = config.model, config.optim, config.train
  model.d_model = 512
  model.dropout = 0.1
  train.num_epochs = 200
  train.log_every_steps = 100
  train.checkpoint_every_steps = 1000

  if preset == "cpu":
    data.num_train, data.num_validation, data.num_test = 5000, 500, 500
    data.eval_batch_size = 100
    model.n_layers = 4
    model.d_model = 64
    model.s4.d_state = 16
    optim.warmup_steps = 20
    train.num_epochs = 2
    train.log_every_steps = 10
    train.eval_every_steps = 100
    train.checkpoint_every_steps = 100
  elif preset == "test":
    data.num_train, data.num_validation, data.num_test = 16, 8, 8
    data.batch_size = 8
    data.eval_batch_size = 8
    model.n_layers = 1
    model.d_model = 16
    model.s4.d_state = 8
    optim.warmup_steps = 2
    train.num_epochs = 2
    train.log_every_steps = 2
    train.eval_every_steps = 4
    train.checkpoint_every_steps = 4
    train.progress_bar = False
  return config
