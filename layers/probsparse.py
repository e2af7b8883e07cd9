"""Informer's attention layer, the ``"probsparse"`` mixer (Flax Linen).

Zhou et al., "Informer: Beyond Efficient Transformer for Long Sequence
Time-Series Forecasting" (AAAI 2021); official code
github.com/zhouhaoyi/Informer2020 ``models/attn.py``: :class:`ProbSparseAttention`
is ``AttentionLayer`` around ``ProbAttention`` (``attention="prob"``, the
kernel ``kernels.probsparse``) or ``FullAttention`` (``"full"``): Q/K/V/out
projections, optional ``mix`` of heads and lengths. The Informer's other
blocks are in layers/informer.py.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jaxtyping import Array, ArrayLike, Bool, Float

from configs import checks
from kernels import probsparse as ps_ops
from layers.attention import attention_config, validate_attention
from layers.registry import MixerContext, check_impl, register_mixer
from layers.torch_defaults import HashDropout, torch_dense

ATTENTIONS = ("prob", "full")
SAMPLE_RNG = "sample"


def config() -> ml_collections.ConfigDict:
  """``model.probsparse``: the fields of :class:`ProbSparseAttention` as a
  mixer of the LRA backbone."""
  # factor: the c of the c*ceil(ln L) sampled keys and top queries; impl of
  # the ProbSparse kernel: "auto" | "reference" | "xla".
  return attention_config(factor=5, impl="auto")


def validate(c: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  """Checks ``model.probsparse`` (``ctx.prefix``) before anything is built."""
  validate_attention(c, ctx)
  checks.check_int(f"{ctx.prefix}.factor", c.factor, minimum=1)
  check_impl(f"{ctx.prefix}.impl", c.impl, "probsparse_attention")


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


@register_mixer("probsparse", config=config, validate=validate)
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
      mask: Bool[ArrayLike, "b t"] | None = None,
      *,
      deterministic: bool = True,
      context: Float[Array, "b s d"] | None = None,
      context_mask: Bool[ArrayLike, "b s"] | None = None,
      last_rows: int | None = None,
  ) -> Float[Array, "b r d"]:
    """Self-attention of ``x``, or cross-attention to ``context``:
    ``[b, r, d]`` with ``r = t``, or ``r = last_rows``.

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
