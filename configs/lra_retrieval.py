"""LRA Retrieval (AAN) with S4 (``--config configs/lra_retrieval.py:PRESET``).

Set ``--config.data.manual_dir`` to the extracted LRA release: the pairs are
read from its ``tsv_data`` folder (there is no download).

Presets:
  full: the S4 reference setting, state-spaces/s4
    configs/experiment/lra/s4-aan.yaml: 6 layers, d_model 256, d_state 4,
    pre-norm BatchNorm, no dropout, bidirectional LegS kernels, dt in
    [1e-3, 1e-1], AdamW lr 0.01, weight decay 0.05, batch 64, 20 epochs,
    cosine schedule with 5k of 50k steps warmup; A and B at lr 1e-3, dt at
    the base lr (``lr.dt: null``), without weight decay; mean pooling; 4000
    bytes per document; LRA's dual head (models/classifier.py, MLP width
    512 as in LRA's matching config). S4 reads
    characters with a vocabulary built on the training texts; this task reads
    bytes as LRA does (data/retrieval.py).
  cpu: 4 layers, d_model 64, documents cut to 1024 bytes, 4,000 training
    pairs, 2 epochs.
  test: tiny, for CI end-to-end tests (they write small TSVs).
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
  data.task = "retrieval"
  data.batch_size = 64
  data.eval_batch_size = 64
  retrieval = data.retrieval
  retrieval.max_length = 4000

  default.s4_lra(config, d_state=4, prenorm=True, learning_rate=0.01,
                 warmup_steps=5_000)
  default.s4_dt_at_base_lr(config)
  model, optim, train = config.model, config.optim, config.train
  model.pair_mlp_dim = 512
  train.num_epochs = 20
  train.log_every_steps = 100
  train.checkpoint_every_steps = 1000

  if preset == "cpu":
    data.num_train, data.num_validation, data.num_test = 4000, 500, 500
    data.batch_size, data.eval_batch_size = 16, 50
    retrieval.max_length = 1024
    model.n_layers = 4
    model.d_model = 64
    model.pair_mlp_dim = 128
    optim.warmup_steps = 20
    train.num_epochs = 2
    train.log_every_steps = 10
    train.eval_every_steps = 100
    train.checkpoint_every_steps = 100
  elif preset == "test":
    data.num_train, data.num_validation, data.num_test = 16, 8, 8
    data.batch_size = 8
    data.eval_batch_size = 8
    retrieval.max_length = 48
    model.n_layers = 1
    model.d_model = 16
    model.pair_mlp_dim = 32
    optim.warmup_steps = 2
    train.num_epochs = 2
    train.log_every_steps = 2
    train.eval_every_steps = 4
    train.checkpoint_every_steps = 4
    train.progress_bar = False
  return config
