"""Attention sequence mixers: full softmax attention and linear attention.

Both own their query/key/value projections and their output projection
(``nn.Dense`` named ``query``, ``key``, ``value`` (``d -> h p``) and ``out``
(``h p -> d``); use the backbone with ``output="none"``). The kernels are in
``kernels.attention`` and ``kernels.linear_attention``.

Padding (``mask [b, t]``, True = real token): padded keys never receive
weight, and the outputs at padded positions are zero.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from kernels import Impl
from kernels import attention as fa
from kernels import linear_attention as la
from layers.dense import FlatDense
from layers.registry import register_mixer

_HI = jax.lax.Precision.HIGHEST


def _check_impl(impl):
  if impl not in [i.value for i in Impl]:
    raise ValueError(f"impl={impl!r} is not one of {[i.value for i in Impl]}")


class _QKVOut(nn.Module):
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


@register_mixer("attention")
class Attention(_QKVOut):
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
      mask: Bool[Array, "b t"] | None = None,
      *,
      deterministic: bool = True,
      segment_ids: Int[Array, "b t"] | None = None,
  ) -> Float[Array, "b t d"]:
    self._validate_heads()
    _check_impl(self.impl)
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


FEATURE_MAPS = {
    # Katharopoulos et al. 2020, eq. 7 (and the official elu_feature_map).
    "elu": lambda x: jax.nn.elu(x) + 1.0,
    # A non-negative map often used in ablations; can give zero features
    # (then only eps keeps the denominator positive).
    "relu": jax.nn.relu,
}


@register_mixer("linear_attention")
class LinearAttention(_QKVOut):
  """Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

  ``out_t = phi(q_t)^T S_t / (phi(q_t) . z_t + eps)`` with
  ``S_t = sum_{j <= t} phi(k_j) v_j^T`` and ``z_t = sum_{j <= t} phi(k_j)``
  (``causal``; otherwise sums over the whole sequence), per head, then the
  output projection. Params as ``Attention`` (``query``, ``key``, ``value``,
  ``out``); no ``1/sqrt(p)`` scaling (the official code applies the feature
  map to the raw projections).

  Fields: ``feature_map`` ``"elu"`` (``elu(x) + 1``, the paper's and the
  official default) or ``"relu"``; ``chunk_size`` (chunked kernel); ``eps``
  (denominator, official 1e-6); ``impl`` ("auto"/"xla" chunked,
  "reference" recurrent); ``attn_dropout`` must be 0 (there are no
  attention probabilities to drop).

  Padding: ``phi(k)`` is zeroed at padded positions, so they add nothing to
  the state (as the official ``key_lengths`` masking).

  Decode (``decode=True``, needs ``causal=True``): the ``"cache"`` collection
  holds ``S [b, h, p, p]``, ``z [b, h, p]`` (float32) and ``index`` (int32,
  positions consumed). A call with ``t = 1`` is one recurrence step, with
  ``t > 1`` the chunked form started from the cached state.
  """
  causal: bool = False
  attn_dropout: float = 0.0
  feature_map: str = "elu"
  chunk_size: int = 64
  eps: float = 1e-6
  impl: str = "auto"
  decode: bool = False

  @nn.compact
  def __call__(
      self,
      x: Float[Array, "b t d"],
      mask: Bool[Array, "b t"] | None = None,
      *,
      deterministic: bool = True,
  ) -> Float[Array, "b t d"]:
    del deterministic
    self._validate_heads()
    _check_impl(self.impl)
    if self.feature_map not in FEATURE_MAPS:
      raise ValueError(f"feature_map={self.feature_map!r} is not one of "
                       f"{sorted(FEATURE_MAPS)}")
    if self.attn_dropout:
      raise ValueError(f"attn_dropout={self.attn_dropout}: linear attention "
                       "has no attention probabilities; set it to 0")
    if self.decode and not self.causal:
      raise ValueError("decode=True needs causal=True")
    self._check_input(x, mask)
    b, t, _ = x.shape
    h, p = self.n_heads, self.p
    q, k, v = self._project_qkv(x)
    phi = FEATURE_MAPS[self.feature_map]
    q = phi(q.astype(jnp.float32))
    k = phi(k.astype(jnp.float32))
    if mask is not None:
      k = jnp.where(mask[..., None, None], k, 0.0)
    kw = dict(causal=self.causal, chunk_size=self.chunk_size, eps=self.eps)
    if not self.decode:
      y, _ = la.linear_attention(q, k, v, impl=self.impl, **kw)
      return self._project_out(y, mask)

    is_initialized = self.has_variable("cache", "S")
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    S = self.variable("cache", "S", zeros, b, h, p, p)
    z = self.variable("cache", "z", zeros, b, h, p)
    index = self.variable("cache", "index",
                          lambda: jnp.zeros((), jnp.int32))
    if S.value.shape != (b, h, p, p):
      raise ValueError(f"cache S has shape {S.value.shape}; this call needs "
                       f"{(b, h, p, p)}")
    state = (S.value, z.value)
    if t == 1:
      y, state = la.linear_attention_recurrent(q, k, v, initial_state=state,
                                               **kw)
    else:
      y, state = la.linear_attention(q, k, v, initial_state=state,
                                     impl=self.impl, **kw)
    if is_initialized:  # init only creates the (empty) cache
      S.value, z.value = state
      index.value = index.value + t
    return self._project_out(y, mask)
