"""Multi-query associative recall (MQAR) with a small Mamba-2 language model
(``--config configs/probe_mqar.py:PRESET``).

Arora et al., "Zoology: Measuring and Improving Recall in Efficient Language
Models" (2023): ``num_kv_pairs`` key-value pairs, then queries of those keys at
power-law distributed gaps; the model must output each queried key's value
(data/probes.py). The model and optimizer are the passkey probe's
(configs/probe_passkey.py); benchmarks/study_state_collapse.py takes this config
too (``--config configs/probe_mqar.py:cpu``).

Presets:
  full: zoology's MQAR sizes (vocabulary 8192, 8 pairs at training length 256
    with a larger model, 4 layers of width 256).
  cpu: 2 layers of width 64, vocabulary 8192, 8 pairs at 256 tokens.
  test: tiny, for CI end-to-end tests.
"""
import ml_collections

from configs import probe_passkey

PRESETS = probe_passkey.PRESETS


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  config = probe_passkey.get_config(preset)
  data = config.data
  data.task = "mqar"
  mqar = data.mqar
  # The passkey file's training length per preset.
  mqar.max_length = data.passkey.max_length
  mqar.num_kv_pairs = 8
  mqar.power_a = 0.01
  mqar.vocab_size = 8192
  mqar.random_non_queries = True
  mqar.lm_loss = False  # Zoology's loss: the queried values only.
  if preset == "full":
    mqar.max_length = 256
  elif preset == "test":
    mqar.max_length = 64
    mqar.num_kv_pairs = 4
    mqar.vocab_size = 128
  return config
