"""Informer building blocks (Flax Linen).

Zhou et al., "Informer: Beyond Efficient Transformer for Long Sequence
Time-Series Forecasting" (AAAI 2021). The modules follow the official code
(github.com/zhouhaoyi/Informer2020, ``models/attn.py``, ``encoder.py``,
``decoder.py``, ``embed.py``) in semantics:

  * the attention layer, :class:`layers.probsparse.ProbSparseAttention` (the
    mixer ``"probsparse"``);
  * :class:`DataEmbedding`: circular Conv1d token embedding + sinusoidal
    positions + time-feature Linear (``embed="timeF"``) or fixed/learned
    calendar embeddings (``"fixed"``/``"learned"``), then dropout.
  * :class:`DistilConv` (``ConvLayer``): circular Conv1d k=3, BatchNorm, ELU,
    MaxPool1d(3, stride 2, padding 1): length ``L -> floor((L - 1) / 2) + 1``
    (96 -> 48, 48 -> 24, 49 -> 25).
  * :class:`EncoderLayer`, :class:`DecoderLayer`: post-norm blocks with the
    position-wise Conv1d(k=1) feed-forward (= Dense layers).

Init as torch's defaults, which the official code keeps: Linear and Conv1d
weights and biases ``U(+-1/sqrt(fan_in))`` (``fan_in = in * kernel``), except
the token-embedding conv weight, ``kaiming_normal_(mode="fan_in",
nonlinearity="leaky_relu")`` = ``N(0, 2 / fan_in)``; LayerNorm eps 1e-5.
The official TokenEmbedding conv and TimeFeatureEmbedding Linear both keep
torch's default bias (``bias=True``), so ours have biases too.

Performance on XLA:CPU (the Informer at batch 32, 96/48/24, d_model 512,
forward + backward of the MSE; see models/informer.py): dense layers apply to
inputs flattened to 2-D (:class:`FlatDense`), the circular convs are one
matmul of shifted inputs, max-pooling is written with reshapes, and dropout
masks come from a hash of the element index (:class:`HashDropout`) rather
than per-element threefry bits.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from layers.activations import gelu_exact
from layers.probsparse import ProbSparseAttention
from layers.registry import get_mixer
from layers.torch_defaults import (HashDropout, kaiming_normal_init,
                                   torch_bias_init, torch_default_init,
                                   torch_dense)

EMBEDS = ("timeF", "fixed", "learned")
ACTIVATIONS = ("gelu", "relu")

def activation_fn(name: str):
  if name == "gelu":
    return gelu_exact  # torch F.gelu: the erf form
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"activation={name!r} is not one of {ACTIVATIONS}")


def layer_norm(name: str, dtype: Any, param_dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype,
                      name=name)


# ------------------------------------------------------------------ attention
# ------------------------------------------------------------------ embedding
def sinusoid_table(n: int, d: int) -> np.ndarray:
  """``[n, d]``: ``sin(pos w_i)`` at even, ``cos(pos w_i)`` at odd columns,
  ``w_i = exp(-2i ln(10000) / d)`` (official PositionalEmbedding /
  FixedEmbedding; float32 like the official tables)."""
  pos = np.arange(n, dtype=np.float32)[:, None]
  div = np.exp(np.arange(0, d, 2, dtype=np.float32) *
               np.float32(-(math.log(10000.0) / d)))
  table = np.zeros((n, d), np.float32)
  table[:, 0::2] = np.sin(pos * div)
  table[:, 1::2] = np.cos(pos * div)[:, :d // 2]
  return table


class CircularConv1d(nn.Module):
  """Conv1d, kernel 3, circular padding 1 (official ``padding_mode='circular'``
  for torch >= 1.5): ``y_t = b + W_0 x_{t-1} + W_1 x_t + W_2 x_{t+1}``
  (indices mod L), computed as one matmul of the shifted inputs.

  ``kernel [3, c_in, features]`` holds torch's ``weight[:, :, j]`` transposed
  at ``[j]``.
  """
  features: int
  kernel_init: Any = torch_default_init
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Float[Array, "b t c"]) -> Float[Array, "b t f"]:
    c = x.shape[-1]
    kernel = self.param("kernel", nn.with_logical_partitioning(
        self.kernel_init, (None, None, "embed")), (3, c, self.features),
        self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(
        torch_bias_init(3 * c), ("embed",)), (self.features,),
        self.param_dtype)
    x = x.astype(self.dtype)
    shifted = jnp.concatenate(
        [jnp.roll(x, 1, axis=1), x, jnp.roll(x, -1, axis=1)], axis=-1)
    b, t, _ = x.shape
    y = shifted.reshape(b * t, 3 * c) @ kernel.astype(self.dtype).reshape(
        3 * c, self.features)  # flat: see FlatDense
    return (y + bias.astype(self.dtype)[None, :]).reshape(b, t, self.features)


class DataEmbedding(nn.Module):
  """Official ``DataEmbedding``: value + position + temporal, then dropout.

  ``embed="timeF"``: ``x_mark [b, t, nt]`` float time features through a
  Linear (with bias, as the official ``TimeFeatureEmbedding``). ``"fixed"``
  / ``"learned"``: integer calendar columns ``[month, day, weekday, hour
  (, minute // 15)]`` (``timeenc=0``) through sinusoidal (frozen) or learned
  ``N(0, 1)`` tables of sizes 13, 32, 7, 24 (, 4); the minute table exists
  when ``nt >= 5`` (official ``freq='t'``).
  """
  d_model: int
  embed: str = "timeF"
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Float[Array, "b t c"], x_mark: Float[Array, "b t nt"],
               *, deterministic: bool = True) -> Float[Array, "b t d"]:
    d = self.d_model
    t = x.shape[1]
    value = CircularConv1d(d, kernel_init=kaiming_normal_init, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="token")(x)
    pos = jnp.asarray(sinusoid_table(t, d), self.dtype)[None]
    if self.embed == "timeF":
      temporal = torch_dense(d, x_mark.shape[-1], (None, "embed"), "temporal",
                             self.dtype, self.param_dtype)(x_mark)
    elif self.embed in ("fixed", "learned"):
      sizes = (("month", 13, 0), ("day", 32, 1), ("weekday", 7, 2),
               ("hour", 24, 3), ("minute", 4, 4))
      temporal = 0.0
      for name, n, col in sizes:
        if col >= x_mark.shape[-1]:
          continue
        ids = x_mark[..., col].astype(jnp.int32)
        if self.embed == "fixed":
          table = jnp.asarray(sinusoid_table(n, d), self.dtype)
        else:
          table = self.param(f"{name}_embed", nn.with_logical_partitioning(
              nn.initializers.normal(1.0), (None, "embed")), (n, d),
                             self.param_dtype).astype(self.dtype)
        temporal = temporal + jnp.take(table, ids, axis=0)
    else:
      raise ValueError(f"embed={self.embed!r} is not one of {EMBEDS}")
    y = value + pos + temporal
    return HashDropout(self.dropout)(y, deterministic=deterministic)


# --------------------------------------------------------------------- blocks
def max_pool_3_2(x: Float[Array, "b t d"]) -> Float[Array, "b tt d"]:
  """MaxPool1d(kernel 3, stride 2, padding 1) over time (``-inf`` padding):
  ``y_i = max(x_{2i-1}, x_{2i}, x_{2i+1})``, ``floor((t - 1) / 2) + 1``
  outputs; written with reshapes (strided windows as pairs)."""
  b, t, d = x.shape
  n = (t - 1) // 2 + 1
  neg = jnp.full((b, 1, d), -jnp.inf, x.dtype)
  # xp[j] = x[j - 1]; window i covers xp[2i .. 2i + 2].
  xp = jnp.concatenate([neg] + [x] + [neg] * (2 * n + 2 - t - 1), axis=1)
  pairs = xp[:, :2 * n + 2].reshape(b, n + 1, 2, d)
  left, mid = pairs[:, :n, 0], pairs[:, :n, 1]
  right = pairs[:, 1:, 0]
  return jnp.maximum(jnp.maximum(left, mid), right)


def pool_mask(mask: Bool[ArrayLike, "b t"]) -> Bool[ArrayLike, "b tt"]:
  """The mask after :func:`max_pool_3_2`: a window is real if any input is."""
  m = max_pool_3_2(mask[..., None].astype(jnp.float32))[..., 0]
  return m > 0


class DistilConv(nn.Module):
  """Official ``ConvLayer`` (self-attention distilling): circular Conv1d k=3
  -> BatchNorm1d -> ELU -> MaxPool1d(3, 2, 1). BatchNorm: batch statistics in
  training (``train=True``, state in ``"batch_stats"``, torch momentum 0.1 =
  flax 0.9, eps 1e-5; flax keeps the biased variance in the running average
  where torch keeps the unbiased one), running averages otherwise."""
  d_model: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Float[Array, "b t d"], *,
               train: bool = False) -> Float[Array, "b tt d"]:
    x = CircularConv1d(self.d_model, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, param_dtype=self.param_dtype,
                     name="norm")(x)
    return max_pool_3_2(jax.nn.elu(x))


class FeedForward(nn.Module):
  """Conv1d(k=1) d -> d_ff, activation, dropout, Conv1d(k=1) d_ff -> d, dropout."""
  d_model: int
  d_ff: int
  dropout: float = 0.0
  activation: str = "gelu"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    y = torch_dense(self.d_ff, self.d_model, ("embed", "mlp"), "conv1",
                    self.dtype, self.param_dtype)(x)
    y = HashDropout(self.dropout)(activation_fn(self.activation)(y),
                                 deterministic=deterministic)
    y = torch_dense(self.d_model, self.d_ff, ("mlp", "embed"), "conv2",
                    self.dtype, self.param_dtype)(y)
    return HashDropout(self.dropout)(y, deterministic=deterministic)


class EncoderLayer(nn.Module):
  """Official ``EncoderLayer``: ``x = norm1(x + drop(attn(x)))``,
  ``norm2(x + ffn(x))``. The attention is :class:`ProbSparseAttention`
  (``attention``, ``mix=False``), or any registered mixer when ``mixer`` is
  set: ``get_mixer(mixer)(d_model=..., **mixer_kwargs, dtype=...,
  param_dtype=..., name="mixer")(x, mask, deterministic=...)``."""
  d_model: int
  n_heads: int = 8
  d_ff: int = 2048
  dropout: float = 0.0
  activation: str = "gelu"
  attention: str = "prob"
  factor: int = 5
  mixer: str | None = None
  mixer_kwargs: Any = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, *, deterministic: bool = True):
    if self.mixer is None:
      attn = ProbSparseAttention(
          self.d_model, n_heads=self.n_heads, causal=False,
          attn_dropout=self.dropout, factor=self.factor, mix=False,
          attention=self.attention, dtype=self.dtype,
          param_dtype=self.param_dtype, name="attention")
    else:
      # Named "mixer" as in every model, so that the mixer's optimizer
      # groups ((^|/)mixer/...) find its parameters.
      attn = get_mixer(self.mixer)(d_model=self.d_model,
                                   **dict(self.mixer_kwargs or {}),
                                   dtype=self.dtype,
                                   param_dtype=self.param_dtype, name="mixer")
    drop = HashDropout(self.dropout)
    x = x + drop(attn(x, mask, deterministic=deterministic),
                 deterministic=deterministic)
    x = layer_norm("norm1", self.dtype, self.param_dtype)(x)
    y = FeedForward(self.d_model, self.d_ff, self.dropout, self.activation,
                    self.dtype, self.param_dtype, name="ffn")(
                        x, deterministic=deterministic)
    return layer_norm("norm2", self.dtype, self.param_dtype)(x + y)


class DecoderLayer(nn.Module):
  """Official ``DecoderLayer``: masked self-attention (``attention``,
  causal, ``mix``), cross full attention over the encoder output (no mix),
  feed-forward; post-norms ``norm1..3``."""
  d_model: int
  n_heads: int = 8
  d_ff: int = 2048
  dropout: float = 0.0
  activation: str = "gelu"
  attention: str = "prob"
  factor: int = 5
  mix: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cross, cross_mask=None, *, deterministic: bool = True,
               last_rows: int | None = None):
    """``last_rows``: compute the rows after the self-attention for the last
    ``last_rows`` positions only (every later step is position-wise), and
    return ``[b, last_rows, d]``; the others cannot reach those outputs."""
    drop = HashDropout(self.dropout)
    common = dict(n_heads=self.n_heads, attn_dropout=self.dropout,
                  factor=self.factor, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    y = ProbSparseAttention(self.d_model, causal=True, mix=self.mix,
                            attention=self.attention, name="self_attention",
                            **common)(x, deterministic=deterministic,
                                      last_rows=last_rows)
    if last_rows is not None:
      x = x[:, x.shape[1] - last_rows:]
    x = layer_norm("norm1", self.dtype, self.param_dtype)(
        x + drop(y, deterministic=deterministic))
    y = ProbSparseAttention(self.d_model, causal=False, mix=False,
                            attention="full", name="cross_attention",
                            **common)(x, deterministic=deterministic,
                                      context=cross, context_mask=cross_mask)
    x = layer_norm("norm2", self.dtype, self.param_dtype)(
        x + drop(y, deterministic=deterministic))
    y = FeedForward(self.d_model, self.d_ff, self.dropout, self.activation,
                    self.dtype, self.param_dtype, name="ffn")(
                        x, deterministic=deterministic)
    return layer_norm("norm3", self.dtype, self.param_dtype)(x + y)
