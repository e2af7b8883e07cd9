"""BigBird (ITC) self-attention mixer (Flax Linen).

Zaheer et al., "Big Bird: Transformers for Longer Sequences" (NeurIPS 2020);
official code github.com/google-research/bigbird (``bigbird/core/attention.py``
``MultiHeadedAttentionLayer`` with ``attention_type="block_sparse"``). The
block pattern (window of 3 blocks, global blocks, random blocks from a fixed
seed) and its block-sparse form are in ``kernels.bigbird_attention``.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
from jaxtyping import Array, ArrayLike, Bool, Float

from kernels import Impl
from configs import checks
from kernels import bigbird_attention as bsa
from layers.attention import attention_config, validate_attention
from layers.longformer import head_dense
from layers.registry import MixerContext, check_impl, register_mixer


def config() -> ml_collections.ConfigDict:
  """``model.bigbird``: the fields of :class:`BigBird` (ITC)."""
  # Block size, random blocks per query block (drawn once from seed), global
  # blocks at the start and at the end; impl of the block-sparse kernel.
  return attention_config(block_size=64, num_rand_blocks=3, global_left=1,
                          global_right=1, seed=0, impl="auto")


def validate(c: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  """Checks ``model.bigbird`` (``ctx.prefix``) before anything is built."""
  f = lambda name: f"{ctx.prefix}.{name}"
  validate_attention(c, ctx)
  checks.check_int(f("block_size"), c.block_size, minimum=1)
  for name in ("num_rand_blocks", "global_left", "global_right", "seed"):
    checks.check_int(f(name), c[name], minimum=0)
  check_impl(f("impl"), c.impl, "bigbird_attention")


@register_mixer("bigbird", config=config, validate=validate)
class BigBird(nn.Module):
  """BigBird ITC attention: ``out(softmax_A(Q K^T / sqrt(p)) V)`` per head.

  Paper symbols -> fields/params (``p = head_dim``, ``h = n_heads``):
    block size b                    ``block_size`` (paper base models: 64)
    r random blocks per row         ``num_rand_blocks`` (paper: 3)
    g global blocks (ITC)           ``global_left`` first and ``global_right``
                                    last blocks (official ITC: 1 and 1)
    w window blocks                 3 (fixed, as the official code)
    random pattern                  numpy ``seed``, per head (static)
    Q, K, V, output                 ``query``, ``key``, ``value``, ``out``

  The pattern is a function of the padded length: the sequence is padded at
  the end to a multiple of ``block_size`` (padded keys masked), and the last
  global block and the random blocks depend on the number of blocks, so
  appending padding that adds blocks changes the pattern (as in the official
  code, which always runs at a fixed padded length). With
  ``global_right=0`` and ``num_rand_blocks=0`` the pattern is
  padding-invariant.

  Init: ``lecun_normal`` kernels, zero biases (official: truncated normal
  0.02, BERT style). ``attn_dropout``: dropout on attention probabilities
  (rng ``"dropout"``) when not ``deterministic``. Padded positions output 0.

  ``rows_tokens``: the non-global row blocks run as a scan over groups of
  that many query tokens, each taking only its own key/value blocks;
  None computes them all at once (about twice the memory; see
  ``kernels.bigbird_attention.BIGBIRD_ROWS_TOKENS``).
  """
  d_model: int
  n_heads: int = 4
  head_dim: int | None = None
  block_size: int = 64
  num_rand_blocks: int = 3
  global_left: int = 1
  global_right: int = 1
  seed: int = 0
  causal: bool = False
  attn_dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  impl: str = "auto"
  rows_tokens: int | None = bsa.BIGBIRD_ROWS_TOKENS

  @nn.compact
  def __call__(
      self,
      x: Float[Array, "b t d"],
      mask: Bool[ArrayLike, "b t"] | None = None,
      *,
      deterministic: bool = True,
  ) -> Float[Array, "b t d"]:
    b, t, _ = x.shape
    h = self.n_heads
    p = self.head_dim or self.d_model // h
    bs = self.block_size
    if mask is not None and mask.shape != (b, t):
      raise ValueError(f"{mask.shape=} must be {(b, t)}")
    x = x.astype(self.dtype)

    def proj(name):
      y = head_dense(h * p, name, self.dtype, self.param_dtype)(x)
      return y.reshape(b, t, h, p)

    q, k, v = proj("query"), proj("key"), proj("value")
    tp = -(-t // bs) * bs
    kv_mask = jnp.ones((b, t), bool) if mask is None else mask
    if tp != t:
      pad = [(0, 0), (0, tp - t), (0, 0), (0, 0)]
      q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
      kv_mask = jnp.pad(kv_mask, [(0, 0), (0, tp - t)])
    kwargs = dict(block_size=bs, num_rand_blocks=self.num_rand_blocks,
                  global_left=self.global_left,
                  global_right=self.global_right, seed=self.seed,
                  causal=self.causal,
                  kv_mask=None if (mask is None and tp == t) else kv_mask)
    if Impl(self.impl) is not Impl.REFERENCE:
      kwargs.update(rows_tokens=self.rows_tokens)
    if self.attn_dropout > 0.0 and not deterministic:
      kwargs.update(dropout_rate=self.attn_dropout,
                    dropout_rng=self.make_rng("dropout"))
    y, _ = bsa.bigbird_attention(q, k, v, impl=Impl(self.impl), **kwargs)
    y = head_dense(self.d_model, "out", self.dtype, self.param_dtype,
                   out=True)(y[:, :t].reshape(b, t, h * p))
    if mask is not None:
      y = jnp.where(mask[..., None], y, 0)
    return y
