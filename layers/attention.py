"""Full softmax attention, and what every attention mixer shares.

The attention mixers own their query/key/value projections and their output
projection (``nn.Dense`` named ``query``, ``key``, ``value`` (``d -> h p``) and
``out`` (``h p -> d``); use the backbone with ``output="none"``). The kernel
is ``kernels.attention``. Every attention mixer's config starts from
:func:`attention_config` and its validation from :func:`validate_attention`.

Padding (``mask [b, t]``, True = real token): padded keys never receive
weight, and the outputs at padded positions are zero.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jaxtyping import Array, ArrayLike, Bool, Float, Int
from ml_collections import config_dict

from configs import checks
from kernels import attention as fa
from layers.dense import FlatDense
from layers.registry import (MixerContext, check_impl, check_module_impl,
                             register_mixer)

_HI = jax.lax.Precision.HIGHEST


def attention_config(**extra) -> ml_collections.ConfigDict:
  """The fields every attention mixer has, then ``extra`` (the mixer's own)."""
  c = ml_collections.ConfigDict()
  # Heads h.
  c.n_heads = 4
  # Head width p; None = d_model / n_heads.
  c.head_dim = config_dict.placeholder(int)
  # Queries attend only to keys j <= i.
  c.causal = False
  # Dropout on the attention probabilities (training only).
  c.attn_dropout = 0.0
  c.update(extra)
  return c


def validate_attention(c: ml_collections.ConfigDict, ctx: MixerContext, *,
                       dropout: bool = True) -> None:
  """Checks the fields of :func:`attention_config`; ``dropout=False`` for a
  mixer that has no attention probabilities to drop."""
  f = lambda name: f"{ctx.prefix}.{name}"
  checks.check_int(f("n_heads"), c.n_heads, minimum=1)
  checks.check_int(f("head_dim"), c.head_dim, minimum=1, optional=True)
  if c.head_dim is None and ctx.d_model % c.n_heads:
    checks.fail(f("n_heads"), c.n_heads,
                f"does not divide model.d_model={ctx.d_model} (or set "
                f"{f('head_dim')})")
  checks.check_bool(f("causal"), c.causal)
  if ctx.causal and not c.causal:
    checks.fail(f("causal"), False,
                "must be True for a task whose targets are predicted at every "
                "position from the tokens up to it (a causal model)")
  checks.check_float(f("attn_dropout"), c.attn_dropout, low=0.0, high=1.0,
                     high_open=True)
  if not dropout and c.attn_dropout:
    checks.fail(f("attn_dropout"), c.attn_dropout,
                "must be 0: this mixer has no attention probabilities to drop")


def config() -> ml_collections.ConfigDict:
  """``model.attention``: the fields of :class:`Attention`."""
  return attention_config(
      # "xla" picks the dense form when the score array is small and the
      # blocked (memory-efficient) form otherwise; "reference" is dense;
      # "pallas" the Pallas kernels (Triton on GPU, Mosaic on TPU; "auto"
      # keeps the XLA form until they have run natively).
      impl="auto",
      # Query and key blocks of the blocked or Pallas form; None = that
      # form's defaults.
      block_q=config_dict.placeholder(int),
      block_k=config_dict.placeholder(int))


def validate(c: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  """Checks ``model.attention`` (``ctx.prefix``) before anything is built."""
  validate_attention(c, ctx)
  check_impl(f"{ctx.prefix}.impl", c.impl, "attention")
  for name in ("block_q", "block_k"):
    checks.check_int(f"{ctx.prefix}.{name}", c[name], minimum=1,
                     optional=True)


class QKVProjections(nn.Module):
  """Shared parts: head sizes, the four projections, input checks."""
  d_model: int
  n_heads: int = 4
  head_dim: int | None = None
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @property
  def p(self) -> int:
    return self.d_model // self.n_heads if self.head_dim is None else (
        self.head_dim)

  def _dense(self, features, axes, name):
    return FlatDense(
        features, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                               axes[1:]),
        name=name)

  def _validate_heads(self):
    if self.n_heads < 1:
      raise ValueError(f"n_heads={self.n_heads} must be >= 1")
    if self.head_dim is None and self.d_model % self.n_heads:
      raise ValueError(f"d_model={self.d_model} is not a multiple of "
                       f"n_heads={self.n_heads} (or give head_dim)")
    if self.p < 1:
      raise ValueError(f"head_dim={self.p} must be >= 1")

  def _check_input(self, x, mask):
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"x must be [b, t, {self.d_model}]; got {x.shape=}")
    if mask is not None and mask.shape != x.shape[:2]:
      raise ValueError(f"{mask.shape=} must be {x.shape[:2]}")

  def _project_qkv(self, x):
    b, t, _ = x.shape
    h, p = self.n_heads, self.p
    x = x.astype(self.dtype)
    heads = lambda name: self._dense(h * p, ("embed", "heads"), name)(
        x).reshape(b, t, h, p)
    return heads("query"), heads("key"), heads("value")

  def _project_out(self, y, mask):
    b, t = y.shape[:2]
    out = self._dense(self.d_model, ("heads", "embed"), "out")(
        y.reshape(b, t, -1).astype(self.dtype))
    if mask is not None:
      out = jnp.where(mask[..., None], out, 0)
    return out


@register_mixer("attention", config=config, validate=validate)
class Attention(QKVProjections):
  """Multi-head softmax attention (Vaswani et al. 2017, Sec. 3.2).

  ``out = concat_i softmax(Q_i K_i^T / sqrt(p)) V_i W_O`` with
  ``Q_i = x W_Q^i`` etc. Paper symbols -> params (``h = n_heads``,
  ``p = head_dim``, default ``d_model // n_heads``): ``W_Q, W_K, W_V`` ->
  ``query``, ``key``, ``value`` ``kernel [d, h p]`` (+ bias), ``W_O`` ->
  ``out`` ``kernel [h p, d]`` (+ bias). Init: ``lecun_normal`` kernels,
  zero biases.

  Fields: ``causal`` (queries see keys ``j <= i``), ``attn_dropout`` (on the
  attention probabilities, rng ``"dropout"``, only when not deterministic:
  that path computes the dense ``[b, h, t, t]`` probabilities, as the blocked
  kernel has no dropout), ``impl`` (``kernels.attention.attention``:
  "auto"/"xla" picks dense or blocked by size, "reference", "pallas",
  "pallas_interpret"), ``block_q`` / ``block_k`` (blocks of the blocked or
  Pallas form; None: that form's defaults). The call also takes ``segment_ids [b, t]``
  (tokens attend only within their segment, for packed sequences).
  """
  causal: bool = False
  attn_dropout: float = 0.0
  impl: str = "auto"
  block_q: int | None = None
  block_k: int | None = None

  @nn.compact
  def __call__(
      self,
      x: Float[Array, "b t d"],
      mask: Bool[ArrayLike, "b t"] | None = None,
      *,
      deterministic: bool = True,
      segment_ids: Int[ArrayLike, "b t"] | None = None,
  ) -> Float[Array, "b t d"]:
    self._validate_heads()
    check_module_impl(self.impl, "attention")
    if not 0.0 <= self.attn_dropout < 1.0:
      raise ValueError(f"attn_dropout={self.attn_dropout} must be in [0, 1)")
    self._check_input(x, mask)
    if segment_ids is not None and segment_ids.shape != x.shape[:2]:
      raise ValueError(f"{segment_ids.shape=} must be {x.shape[:2]}")
    q, k, v = self._project_qkv(x)
    kw = dict(causal=self.causal, kv_mask=mask, q_segment_ids=segment_ids,
              kv_segment_ids=segment_ids)
    if self.attn_dropout > 0 and not deterministic:
      y = self._dense_with_dropout(q, k, v, **kw)
    else:
      y, _ = fa.attention(q, k, v, impl=self.impl, block_q=self.block_q,
                          block_k=self.block_k, **kw)
    return self._project_out(y, mask)

  def _dense_with_dropout(self, q, k, v, *, causal, kv_mask, q_segment_ids,
                          kv_segment_ids):
    """Dense probabilities, dropout (inverted scaling), then ``P V``."""
    b, t, h, p = q.shape
    f32 = lambda a: a.astype(jnp.float32)
    scores = jnp.einsum("bthp,bshp->bhts", f32(q), f32(k),
                        precision=_HI) / jnp.sqrt(jnp.float32(p))
    allowed = jnp.ones((b, 1, t, t), bool)
    if kv_mask is not None:
      allowed = allowed & kv_mask[:, None, None, :]
    if q_segment_ids is not None:
      allowed = allowed & (q_segment_ids[:, None, :, None] ==
                           kv_segment_ids[:, None, None, :])
    if causal:
      allowed = allowed & jnp.tril(jnp.ones((t, t), bool))[None, None]
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(jnp.any(allowed, -1, keepdims=True), probs, 0.0)
    probs = nn.Dropout(self.attn_dropout)(probs, deterministic=False)
    y = jnp.einsum("bhts,bshp->bthp", probs, f32(v), precision=_HI)
    return y.astype(q.dtype)
