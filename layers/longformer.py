"""Longformer self-attention mixer (Flax Linen).

Beltagy, Peters & Cohan, "Longformer: The Long-Document Transformer" (2020);
official code github.com/allenai/longformer (``longformer/longformer.py``
``LongformerSelfAttention``, ``sliding_chunks.py``). Sliding-window attention
(optionally dilated) plus a few global tokens, computed by
``kernels.longformer_attention`` (see there for the pattern and the blocked
form).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
from jaxtyping import Array, ArrayLike, Bool, Float

from kernels import Impl
from configs import checks
from kernels import longformer_attention as bsa
from layers.attention import attention_config, validate_attention
from layers.dense import FlatDense
from layers.registry import MixerContext, check_impl, register_mixer


def config() -> ml_collections.ConfigDict:
  """``model.longformer``: the fields of :class:`Longformer`."""
  # One-sided window w, its dilation, the first global_tokens positions
  # global (attend to and attended by all); impl of the block-sparse kernel.
  return attention_config(window=256, dilation=1, global_tokens=0,
                          impl="auto")


def validate(c: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  """Checks ``model.longformer`` (``ctx.prefix``) before anything is built."""
  f = lambda name: f"{ctx.prefix}.{name}"
  validate_attention(c, ctx)
  checks.check_int(f("window"), c.window, minimum=1)
  checks.check_int(f("dilation"), c.dilation, minimum=1)
  checks.check_int(f("global_tokens"), c.global_tokens, minimum=0)
  check_impl(f("impl"), c.impl, "longformer_attention")


def head_dense(features: int, name: str, dtype: Any, param_dtype: Any,
               *, out: bool = False) -> nn.Dense:
  """``nn.Dense`` with logical axes: ``embed -> heads`` (``out``: reverse)."""
  axes = ("heads", "embed") if out else ("embed", "heads")
  return FlatDense(
      features, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), axes),
      bias_init=nn.with_logical_partitioning(
          nn.initializers.zeros_init(), axes[1:]))


@register_mixer("longformer", config=config, validate=validate)
class Longformer(nn.Module):
  """Longformer attention: ``out(softmax_A(Q K^T / sqrt(p)) V)`` per head.

  Paper symbols -> fields/params (``p = head_dim``, ``h = n_heads``):
    one-sided window w              ``window`` (the official config's
                                    ``attention_window`` is the two-sided
                                    size ``2w``; its 512 is ``window=256``)
    dilation d                      ``dilation`` (official: per-layer
                                    ``attention_dilation``, TVM kernel only)
    Q, K, V                         ``query``, ``key``, ``value`` (d -> h p)
    Q_g, K_g, V_g (global rows)     ``query_global``, ``key_global``,
                                    ``value_global``
    output projection               ``out`` (Dense h p -> d)

  Global tokens: the first ``global_tokens`` positions (e.g. a CLS token:
  use ``pool="cls"``), or a per-call ``global_mask [b, t]`` (then
  ``max_global`` bounds the number of global tokens per row, a static size).
  The global projections exist only when one of the two is set. Either way
  the tokens are global in both directions as in the paper and the
  official ``attention_mask == 2`` path (the official experimental
  ``global_tokens`` attribute, keys only and without removing them from the
  window, is not reproduced).

  Init: ``lecun_normal`` kernels, zero biases (the official model inherits
  RoBERTa's ``normal(0.02)`` weights and copies Q, K, V into the global
  projections when converting a checkpoint; trained from scratch here).

  Padding: ``mask`` (True = real) masks keys; padded tokens are never global;
  outputs at padded positions are zero. ``attn_dropout`` drops attention
  probabilities (rng ``"dropout"``) when not ``deterministic``.
  """
  d_model: int
  n_heads: int = 4
  head_dim: int | None = None
  window: int = 256
  dilation: int = 1
  causal: bool = False
  global_tokens: int = 0
  max_global: int | None = None
  block_size: int | None = None
  attn_dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(
      self,
      x: Float[Array, "b t d"],
      mask: Bool[ArrayLike, "b t"] | None = None,
      *,
      global_mask: Bool[ArrayLike, "b t"] | None = None,
      deterministic: bool = True,
  ) -> Float[Array, "b t d"]:
    b, t, _ = x.shape
    h = self.n_heads
    p = self.head_dim or self.d_model // h
    if mask is not None and mask.shape != (b, t):
      raise ValueError(f"{mask.shape=} must be {(b, t)}")
    use_global = self.global_tokens > 0 or self.max_global is not None
    if global_mask is not None and not use_global:
      raise ValueError("global_mask given but the layer has no global "
                       "projections: set max_global (or global_tokens)")
    x = x.astype(self.dtype)

    def proj(name):
      y = head_dense(h * p, name, self.dtype, self.param_dtype)(x)
      return y.reshape(b, t, h, p)

    q, k, v = proj("query"), proj("key"), proj("value")
    kwargs = dict(window=self.window, dilation=self.dilation,
                  causal=self.causal, kv_mask=mask, block_size=self.block_size)
    if use_global:
      qg, kg, vg = (proj("query_global"), proj("key_global"),
                    proj("value_global"))
      if global_mask is None:
        global_mask = jnp.broadcast_to(
            jnp.arange(t)[None, :] < self.global_tokens, (b, t))
        max_global = self.global_tokens
      else:
        max_global = self.max_global or self.global_tokens
      kwargs.update(global_mask=global_mask, max_global=max_global,
                    q_global=qg, k_global=kg, v_global=vg)
    if self.attn_dropout > 0.0 and not deterministic:
      kwargs.update(dropout_rate=self.attn_dropout,
                    dropout_rng=self.make_rng("dropout"))
    y, _ = bsa.longformer_attention(q, k, v, impl=Impl(self.impl), **kwargs)
    y = head_dense(self.d_model, "out", self.dtype, self.param_dtype,
                   out=True)(y.reshape(b, t, h * p))
    if mask is not None:
      y = jnp.where(mask[..., None], y, 0)
    return y
