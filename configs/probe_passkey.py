"""Passkey retrieval with a small Mamba-2 language model, to study state collapse
(``--config configs/probe_passkey.py:PRESET``).

The model is trained on sequences of ``data.passkey.max_length`` tokens and evaluated by
benchmarks/study_state_collapse.py at 1x to 16x that length, with and without the
training-free mitigations of Chen et al., "Stuffed Mamba: Oversized States Lead to
the Inability to Forget" (arXiv 2410.07145), which are switches on the Mamba-2 layer
(``model.mamba2.decay_scale``, ``insert_scale``, ``state_norm``, ``window``). Their
fourth remedy, training on longer sequences, is this file with a larger
``data.passkey.max_length``.

The model is a language model: it is trained on every next token of the prompt
(``data.passkey.lm_loss = True``; the filler, the key sentence, the question and the
answer), and its accuracy scores the answer digits (exact match of all of them).
With ``--config.data.passkey.lm_loss=False`` only the answer digits are in the loss.

Model: the Mamba-2 language-model block (pre-norm RMSNorm -> Mamba2 -> + x, no
feed-forward, a final RMSNorm), as the official MambaLMHeadModel stacks it
(state-spaces/mamba ``mamba_ssm/models/mixer_seq_simple.py``). Optimizer: AdamW with
betas (0.9, 0.95), weight decay 0.1, gradient clipping at 1.0, warmup then cosine
(the recipe of the Mamba papers' language-model training); ``A_log``, ``D`` and
``dt_bias`` take no weight decay (the Mamba2 module's ``_no_weight_decay``).

Presets:
  full: 4 layers of width 256 (d_state 64, head_dim 64), trained at 1024 tokens.
  cpu: 2 layers of width 64 (8 heads of dim 16, d_state 32), trained at 256
    tokens for 3000 steps (minutes on a 2-core CPU); the study's default.
  test: tiny, for CI end-to-end tests.
"""
import ml_collections

from configs import default

PRESETS = ("full", "cpu", "test")


def mamba2_lm(config: ml_collections.ConfigDict, *, d_model: int, n_layers: int,
              d_state: int, head_dim: int, chunk_size: int,
              learning_rate: float, warmup_steps: int) -> None:
  """Sets the Mamba-2 language model and its optimizer (shared by the probes)."""
  model = config.model
  model.mixer = "mamba2"
  model.d_model = d_model
  model.n_layers = n_layers
  model.prenorm = True
  model.norm = "rms"
  model.output = "none"  # Mamba2 ends with its own out_proj.
  model.ff_mult = 0
  model.dropout = 0.0
  m2 = model.mamba2
  m2.d_state = d_state
  m2.head_dim = head_dim
  m2.expand = 2
  m2.chunk_size = chunk_size
  optim = config.optim
  optim.learning_rate = learning_rate
  optim.weight_decay = 0.1
  optim.b1, optim.b2 = 0.9, 0.95
  optim.grad_clip_norm = 1.0
  optim.schedule = "cosine"
  optim.warmup_steps = warmup_steps


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"{preset=} is not one of {PRESETS}")
  config = default.get_config()
  config.seed = 0
  data = config.data
  data.task = "passkey"
  passkey = data.passkey
  passkey.key_length = 5
  passkey.depth = None  # Uniform depth in training.
  passkey.lm_loss = True
  train = config.train

  if preset == "full":
    passkey.max_length = 1024
    data.num_train, data.num_validation, data.num_test = 200_000, 1000, 1000
    data.batch_size, data.eval_batch_size = 64, 64
    mamba2_lm(config, d_model=256, n_layers=4, d_state=64, head_dim=64,
              chunk_size=256, learning_rate=1e-3, warmup_steps=1000)
    train.num_steps = 20_000
    train.log_every_steps = 100
    train.eval_every_steps = 1000
    train.checkpoint_every_steps = 1000
  elif preset == "cpu":
    passkey.max_length = 256
    data.num_train, data.num_validation, data.num_test = 96_000, 512, 512
    data.batch_size, data.eval_batch_size = 32, 64
    mamba2_lm(config, d_model=64, n_layers=2, d_state=32, head_dim=16,
              chunk_size=64, learning_rate=3e-3, warmup_steps=200)
    train.num_steps = 3000
    train.log_every_steps = 50
    train.eval_every_steps = 500
    train.checkpoint_every_steps = 500
  else:
    passkey.max_length = 96  # The passkey prompt alone takes 71 tokens.
    data.num_train, data.num_validation, data.num_test = 64, 16, 16
    data.batch_size, data.eval_batch_size = 8, 8
    mamba2_lm(config, d_model=16, n_layers=1, d_state=8, head_dim=8,
              chunk_size=16, learning_rate=3e-3, warmup_steps=2)
    train.num_steps = 8
    train.log_every_steps = 2
    train.eval_every_steps = 4
    train.checkpoint_every_steps = 4
    train.progress_bar = False
  return config
