"""Informer building blocks (Flax Linen) and the ProbSparse attention mixer.

Zhou et al., "Informer: Beyond Efficient Transformer for Long Sequence
Time-Series Forecasting" (AAAI 2021). The modules follow the official code
(github.com/zhouhaoyi/Informer2020, ``models/attn.py``, ``encoder.py``,
``decoder.py``, ``embed.py``) in semantics:

  * :class:`ProbSparseAttention` (mixer ``"probsparse"``) = ``AttentionLayer``
    around ``ProbAttention`` (``attention="prob"``) or ``FullAttention``
    (``"full"``): Q/K/V/out projections, optional ``mix`` of heads and lengths.
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
from jaxtyping import Array, Bool, Float

from kernels import probsparse as ps_ops
from layers.activations import gelu_exact
from layers.dense import FlatDense
from layers.registry import get_mixer, register_mixer

ATTENTIONS = ("prob", "full")
EMBEDS = ("timeF", "fixed", "learned")
ACTIVATIONS = ("gelu", "relu")
SAMPLE_RNG = "sample"

# torch.nn.Linear / Conv1d default weight init, kaiming_uniform(a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (flax's fan_in includes the kernel taps).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in",
                                                      "uniform")
# torch kaiming_normal_(mode="fan_in", nonlinearity="leaky_relu", a=0).
kaiming_normal_init = nn.initializers.variance_scaling(2.0, "fan_in",
                                                       "normal")


def torch_bias_init(fan_in: int):
  """torch's default bias init ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, fan_in: int, axes: tuple, name: str,
                dtype: Any, param_dtype: Any, use_bias: bool = True) -> nn.Dense:
  """``nn.Dense`` initialised as ``torch.nn.Linear(fan_in, features)``."""
  return FlatDense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(torch_default_init, axes),
      bias_init=nn.with_logical_partitioning(torch_bias_init(fan_in),
                                             axes[1:]),
      name=name)


def _fmix32(h):
  """murmur3's 32-bit finaliser (an avalanching bijection of uint32)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


class HashDropout(nn.Module):
  """Dropout whose mask is a counter-based hash of the element index.

  Same semantics as ``nn.Dropout`` (zero with probability ``rate``, scale the
  rest by ``1 / (1 - rate)``; identity when ``deterministic``), but the mask
  bits are ``fmix32(fmix32(i * phi + s0) ^ s1)`` for flat element index ``i``
  and a 64-bit seed ``(s0, s1)`` drawn from the ``"dropout"`` rng per call,
  instead of threefry bits per element: on XLA:CPU generating threefry bits
  for the Informer's activations cost about 0.4 s of a 3 s training step
  (Bernoulli of 6.3M elements: 60-160 ms threefry/rbg, 1 ms hashed). The
  probability is quantised to multiples of ``2^-32``.
  """
  rate: float
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    if self.rate == 0.0 or deterministic:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    if x.size >= 2**32:
      raise ValueError(f"HashDropout indexes elements with uint32; got "
                       f"{x.size=}")
    seed = jax.random.bits(self.make_rng(self.rng_collection), (2,),
                           jnp.uint32)
    i = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
    h = _fmix32(_fmix32(i * jnp.uint32(0x9E3779B9) + seed[0]) ^ seed[1])
    keep = h >= jnp.uint32(min(int(round(self.rate * 2**32)), 2**32 - 1))
    return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype),
                     jnp.zeros((), x.dtype))


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
def full_attention(q, k, v, *, causal, kv_mask, scale, dropout_fn):
  """Official ``FullAttention``: softmax(scale q k^T) v, triangular mask when
  ``causal``; ``dropout_fn`` acts on the probabilities. ``[b, t, h, p]``."""
  b, t, h, p = q.shape
  s = k.shape[1]
  scale = 1.0 / math.sqrt(p) if scale is None else scale
  scores = jnp.einsum("bthp,bshp->bhts", q, k) * scale
  allowed = None
  if kv_mask is not None:
    allowed = jnp.broadcast_to(kv_mask[:, None, None, :], (b, 1, 1, s))
  if causal:
    c = (jnp.arange(s)[None, :] <= jnp.arange(t)[:, None])[None, None]
    allowed = c if allowed is None else allowed & c
  if allowed is not None:
    scores = jnp.where(allowed, scores, -1e30)
  attn = dropout_fn(jax.nn.softmax(scores.astype(jnp.float32), axis=-1))
  return jnp.einsum("bhts,bshv->bthv", attn.astype(v.dtype), v)


@register_mixer("probsparse")
class ProbSparseAttention(nn.Module):
  """Informer attention layer (official ``AttentionLayer``), a sequence mixer.

  ``out = W_o mix(Attn(W_q x, W_k c, W_v c))`` with ``c = x`` (self-attention)
  or ``c = context`` (cross-attention). ``Attn`` is ProbSparse attention
  (``kernels.probsparse``; ``attention="prob"``) or full softmax attention
  (``"full"``). ``mix=True`` reproduces the official ``out.transpose(2, 1)``
  before flattening heads: the ``[b, t, h, p]`` attention output is read as
  ``[b, h, t, p]`` memory and reshaped to ``[b, t, h p]`` (mixing heads and
  positions; the official decoder self-attention uses it).

  Paper symbols -> fields: ``c`` (sampling factor) ``factor``; ``u = c ln
  L_Q`` and ``U = c ln L_K`` are computed from it. The key sample is drawn
  from the ``"sample"`` rng on every call (also at evaluation, as the official
  code draws it on every forward): pass ``rngs={"sample": key}``. The drawn
  indices are sown as ``intermediates/index_sample``.

  Dropout: ``attn_dropout`` on full attention's probabilities (rng
  ``"dropout"``); the official ProbAttention owns a dropout it never applies,
  so ProbSparse attention has none.

  Padding (``mask [b, t]``, True = real): padded keys never receive weight,
  samples come from real keys, padded queries are never active, and padded
  output rows are zero. ProbSparse shapes depend on the padded length via
  ``ceil(ln t)``, so appending padding leaves real outputs unchanged as long
  as ``ceil(ln t)`` does not change (and then exactly, for the same rng).
  """
  d_model: int
  n_heads: int = 4
  head_dim: int | None = None
  causal: bool = False
  attn_dropout: float = 0.0
  factor: int = 5
  mix: bool = False
  attention: str = "prob"
  impl: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: Float[Array, "b t d"],
      mask: Bool[Array, "b t"] | None = None,
      *,
      deterministic: bool = True,
      context: Float[Array, "b s d"] | None = None,
      context_mask: Bool[Array, "b s"] | None = None,
      last_rows: int | None = None,
  ) -> Float[Array, "b t d"]:
    """Self-attention of ``x``, or cross-attention to ``context``.

    ``last_rows``: return only the last rows ``[b, last_rows, d]`` (the out
    projection runs on those alone), for callers that discard the others.
    """
    if self.attention not in ATTENTIONS:
      raise ValueError(f"attention={self.attention!r} is not one of "
                       f"{ATTENTIONS}")
    h = self.n_heads
    p = self.head_dim or self.d_model // h
    d = self.d_model
    b, t, _ = x.shape
    if context is None:
      context, kv_mask, q_mask = x, mask, mask
    else:
      kv_mask, q_mask = context_mask, mask
    s = context.shape[1]

    def proj(name, inp):
      return torch_dense(h * p, d, ("embed", "heads"), name, self.dtype,
                         self.param_dtype)(inp)

    q = proj("query", x).reshape(b, t, h, p)
    k = proj("key", context).reshape(b, s, h, p)
    v = proj("value", context).reshape(b, s, h, p)
    if self.attention == "prob":
      if not self.has_rng(SAMPLE_RNG):
        raise ValueError(
            "ProbSparse attention samples keys on every call: pass an rng "
            f"named {SAMPLE_RNG!r}, e.g. apply(..., rngs={{'{SAMPLE_RNG}': "
            "key}) (also at evaluation)")
      idx = ps_ops.probsparse_sample(self.make_rng(SAMPLE_RNG), t, s,
                                     self.factor, kv_mask)
      self.sow("intermediates", "index_sample", idx)
      out, _ = ps_ops.probsparse_attention(
          q, k, v, factor=self.factor, causal=self.causal, index_sample=idx,
          kv_mask=kv_mask, q_mask=q_mask, impl=self.impl)
    else:
      drop = HashDropout(self.attn_dropout)

      def dropout_fn(a):
        if self.attn_dropout == 0.0 or deterministic:
          return a
        return drop(a, deterministic=False)

      out = full_attention(q, k, v, causal=self.causal, kv_mask=kv_mask,
                           scale=None, dropout_fn=dropout_fn)
    out = out.astype(self.dtype)
    if self.mix:
      out = jnp.swapaxes(out, 1, 2)  # [b, h, t, p] memory read as [b, t, h p]
    out = out.reshape(b, t, h * p)
    if last_rows is not None:
      out = out[:, t - last_rows:]
      mask = None if mask is None else mask[:, t - last_rows:]
    y = torch_dense(d, h * p, ("heads", "embed"), "out", self.dtype,
                    self.param_dtype)(out)
    if mask is not None:
      y = jnp.where(mask[..., None], y, 0.0)
    return y


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


def pool_mask(mask: Bool[Array, "b t"]) -> Bool[Array, "b tt"]:
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
  set: ``get_mixer(mixer)(d_model=..., **mixer_kwargs)(x, mask,
  deterministic=...)``."""
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
      attn = get_mixer(self.mixer)(d_model=self.d_model,
                                   **dict(self.mixer_kwargs or {}),
                                   name="attention")
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
