"""Token-level heads: a causal language model over any causal mixer.

``inputs [b, t]`` -> embedding -> Backbone -> Dense(vocab) at every position ->
logits ``[b, t, V]``. With a causal mixer the logits at position ``i`` depend on
``inputs[:i+1]`` only, so they predict ``targets[i]`` (data/tasks.py). This is the
model of the long-context probes (passkey retrieval, associative recall): trained
with the cross-entropy of the target positions, evaluated by teacher forcing, which
for greedy decoding gives the same answer tokens as generating them one by one
(each answer token is the argmax given the correct earlier ones).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models.backbone import Backbone
from models.classifier import encode_inputs


class CausalLM(nn.Module):
  """Encoder -> Backbone -> Dense(vocab_size) per position."""
  vocab_size: int
  mixer: str
  mixer_kwargs: dict
  d_model: int
  n_layers: int
  input_kind: str = "tokens"
  input_vocab_size: int | None = None
  prenorm: bool = True
  norm: str = "layer"
  dropout: float = 0.0
  output: str = "glu"
  ff_mult: int = 0
  dense_rank: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, mask=None, *, train: bool = False):
    x = encode_inputs(
        inputs, input_kind=self.input_kind, d_model=self.d_model,
        vocab_size=self.input_vocab_size or self.vocab_size, dtype=self.dtype,
        param_dtype=self.param_dtype)
    b, t = x.shape[:2]
    if mask is None:
      mask = jnp.ones((b, t), dtype=bool)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = Backbone(
        mixer=self.mixer, mixer_kwargs=self.mixer_kwargs, d_model=self.d_model,
        n_layers=self.n_layers, prenorm=self.prenorm, norm=self.norm,
        dropout=self.dropout, output=self.output, ff_mult=self.ff_mult,
        dense_rank=self.dense_rank, dtype=self.dtype,
        param_dtype=self.param_dtype, name="backbone")(
            x, mask, train=train)
    logits = nn.Dense(
        self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", "vocab")),
        name="head")(x)
    return logits.astype(jnp.float32)
