"""The Informer encoder-decoder for long-sequence time-series forecasting.

Zhou et al., "Informer: Beyond Efficient Transformer for Long Sequence
Time-Series Forecasting" (AAAI 2021); the official ``models/model.py``
``Informer`` (github.com/zhouhaoyi/Informer2020) in Flax. Field defaults are the
official ``main_informer.py`` ones (factor 5, d_model 512, 8 heads, 2 encoder
and 1 decoder layers, d_ff 2048, dropout 0.05, ProbSparse attention, timeF
embedding, GELU, distilling, mix).

Data flow (``b`` batch, ``L = seq_len``, ``l = label_len``, ``P =
pred_len``)::

  inputs [b, L, enc_in], inputs_time [b, L, nt]
    -> DataEmbedding -> e_layers x (EncoderLayer [-> DistilConv, not after
       the last]) -> LayerNorm                       enc [b, L', d]
  x_dec = concat(decoder_inputs [b, l, dec_in], zeros [b, P, dec_in])
  decoder_time [b, l + P, nt]
    -> DataEmbedding -> d_layers x DecoderLayer(x, enc) -> LayerNorm
    -> Dense(c_out) -> last P steps                    [b, P, c_out]

The official model computes every decoder row and returns the last ``P``;
here the last decoder layer computes only those rows after its
self-attention (everything after it is position-wise), the same outputs with
about a sixth fewer FLOPs at the ETTh1 shapes.

Collections/rngs: ``"batch_stats"`` (distilling BatchNorm, mutable when
``train=True``), rng ``"dropout"`` (``train=True``), rng ``"sample"``
(ProbSparse key samples; needed at every call when ``attn="prob"``).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from layers import informer as inf
from layers import probsparse
from layers import torch_defaults


class Informer(nn.Module):
  """Informer (official ``Informer``) with an optional encoder mixer.

  ``encoder_mixer`` (a registered mixer name) replaces every encoder
  self-attention with ``get_mixer(name)(d_model=d_model,
  **encoder_mixer_kwargs)`` (its parameters under ``encoder_<i>/mixer``); the distilling, decoder and cross-attention stay.
  ``seq_len``, ``label_len`` and ``pred_len`` are checked against the inputs.
  ``mask [b, seq_len]`` (True = real) reaches the encoder attention (pooled by
  the distilling) and the cross-attention only; the circular convolutions
  and BatchNorm see padded steps, so padding is not invisible to this model.
  """
  enc_in: int
  dec_in: int
  c_out: int
  seq_len: int
  label_len: int
  pred_len: int
  factor: int = 5
  d_model: int = 512
  n_heads: int = 8
  e_layers: int = 2
  d_layers: int = 1
  d_ff: int = 2048
  dropout: float = 0.05
  attn: str = "prob"
  embed: str = "timeF"
  activation: str = "gelu"
  distil: bool = True
  mix: bool = True
  encoder_mixer: str | None = None
  encoder_mixer_kwargs: Any = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      inputs: Float[Array, "b t c"],
      mask: Bool[ArrayLike, "b t"] | None = None,
      *,
      inputs_time: Float[Array, "b t nt"],
      decoder_inputs: Float[Array, "b l c"],
      decoder_time: Float[Array, "b lp nt"],
      train: bool = False,
  ) -> Float[Array, "b p o"]:
    if self.attn not in probsparse.ATTENTIONS:
      raise ValueError(f"attn={self.attn!r} is not one of {probsparse.ATTENTIONS}")
    b = inputs.shape[0]
    want = {"inputs": (b, self.seq_len, self.enc_in),
            "inputs_time": (b, self.seq_len),
            "decoder_inputs": (b, self.label_len, self.dec_in),
            "decoder_time": (b, self.label_len + self.pred_len)}
    got = {"inputs": inputs.shape, "inputs_time": inputs_time.shape[:2],
           "decoder_inputs": decoder_inputs.shape,
           "decoder_time": decoder_time.shape[:2]}
    for name, shape in want.items():
      if tuple(got[name]) != shape:
        raise ValueError(f"{name} has shape {got[name]}; expected {shape} "
                         f"(seq_len={self.seq_len}, label_len={self.label_len}, "
                         f"pred_len={self.pred_len}, enc_in={self.enc_in}, "
                         f"dec_in={self.dec_in})")
    det = not train
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    # Encoder.
    x = inf.DataEmbedding(self.d_model, self.embed, self.dropout,
                          name="enc_embedding", **common)(
                              inputs, inputs_time, deterministic=det)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for i in range(self.e_layers):
      x = inf.EncoderLayer(
          self.d_model, self.n_heads, self.d_ff, self.dropout, self.activation,
          self.attn, self.factor, self.encoder_mixer,
          self.encoder_mixer_kwargs, name=f"encoder_{i}", **common)(
              x, mask, deterministic=det)
      if self.distil and i < self.e_layers - 1:
        x = inf.DistilConv(self.d_model, name=f"distil_{i}", **common)(
            x, train=train)
        if mask is not None:
          mask = inf.pool_mask(mask)
    enc = inf.layer_norm("encoder_norm", **common)(x)

    # Decoder: known label steps, then zero placeholders for the horizon.
    x_dec = jnp.concatenate(
        [decoder_inputs.astype(self.dtype),
         jnp.zeros((b, self.pred_len, self.dec_in), self.dtype)], axis=1)
    y = inf.DataEmbedding(self.d_model, self.embed, self.dropout,
                          name="dec_embedding", **common)(
                              x_dec, decoder_time, deterministic=det)
    for i in range(self.d_layers):
      y = inf.DecoderLayer(
          self.d_model, self.n_heads, self.d_ff, self.dropout, self.activation,
          self.attn, self.factor, self.mix, name=f"decoder_{i}", **common)(
              y, enc, mask, deterministic=det,
              last_rows=self.pred_len if i == self.d_layers - 1 else None)
    y = inf.layer_norm("decoder_norm", **common)(y)
    y = torch_defaults.torch_dense(self.c_out, self.d_model, ("embed", None),
                        "projection", **common)(y)
    return y.astype(jnp.float32)
