"""Linformer self-attention (Flax Linen): keys, values projected along length.

Wang et al., "Linformer: Self-Attention with Linear Complexity" (arXiv
2006.04768). Official code: facebookresearch/fairseq ``examples/linformer``
(``linformer_src/modules/multihead_linear_attention.py``,
``MultiheadLinearAttention``; the layerwise-shared projection is built in
``linformer_sentence_encoder.py``).

Per head i (paper Eq. 7), with n = ``max_length`` and k the projected length::

  head_i = softmax(Q W_i^Q (E_i K W_i^K)^T / sqrt(p)) F_i V W_i^V,
  out = concat_i(head_i) W^O,

E_i, F_i in R^{k x n}. Cost O(n k) instead of O(n^2).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jaxtyping import Array, ArrayLike, Bool, Float
from ml_collections import config_dict

from configs import checks
from kernels import attention as fa
from layers.attention import attention_config, validate_attention
from layers.dense import FlatDense
from layers.registry import MixerContext, check_module_impl, register_mixer

# Paper Sec. 4 ("Additional Efficiency Techniques"):
#   none      -- E_i, F_i per head (the paper's general form);
#   headwise  -- one E and one F per layer, shared by the heads (the fairseq
#                module's own mode: it compresses the input before the head
#                split, shared_kv_compressed=0);
#   kv        -- headwise and E = F (fairseq shared_kv_compressed=1);
#   layerwise -- one E for every layer, head, key and value (fairseq
#                shared_layer_kv_compressed=1).
SHARING = ("none", "headwise", "kv", "layerwise")

# Query block of the attention over the k compressed keys. Layer forward +
# backward (batch 8, width 256, 4 heads, k = 256, this 2-core CPU,
# train/host.py's malloc settings), medians of interleaved runs: t = 1024,
# blocks of 512 145 ms, 1024 140 ms; t = 16384, 512 2.15 s, 1024 2.12 s.
BLOCK_Q = 1024


def _xavier_uniform_half(key, shape, dtype=jnp.float32):
  """``torch.nn.init.xavier_uniform_(w, gain=1/sqrt(2))`` on the last 2 axes.

  Bound ``gain * sqrt(6 / (fan_in + fan_out)) = sqrt(3 / (fan_in + fan_out))``;
  fairseq's init of q/k/v_proj and of compress_k/v ([k, n] weights) when the
  key/value widths equal the model width (always, for self-attention).
  """
  bound = math.sqrt(3.0 / (shape[-1] + shape[-2]))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _xavier_uniform(key, shape, dtype=jnp.float32):
  """``torch.nn.init.xavier_uniform_`` (gain 1): fairseq's out_proj init."""
  bound = math.sqrt(6.0 / (shape[-1] + shape[-2]))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def linformer_reference(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b s h p"],
    v: Float[Array, "b s h p"],
    E: Float[Array, "h k n"],
    F: Float[Array, "h k n"],
    *,
    kv_mask: Bool[ArrayLike, "b s"] | None = None,
    k_bias: Float[Array, "h p"] | None = None,
    v_bias: Float[Array, "h p"] | None = None,
    scale: float | None = None,
) -> tuple[Float[Array, "b t h p"], None]:
  """Linformer attention per head, written plainly, in float32.

  ``head_i = softmax(scale * q_i (E_i k_i + b^K_i)^T) (F_i v_i + b^V_i)`` with
  ``E_i, F_i`` cut to their leading ``s`` columns (fairseq:
  ``compress_k.weight[:, 0:tgt_len]``) and padded keys/values (``kv_mask``
  False) zeroed before the length projection. ``k``, ``v`` are the projected
  inputs WITHOUT their biases: fairseq compresses the layer input and then
  applies ``k_proj``/``v_proj``, so the biases are added once per compressed
  row (``k_bias``, ``v_bias``), not compressed with the rows.

  Args:
    q: queries (unscaled). k, v: keys and values, ``s <= n``.
    E, F: the length projections per head (broadcast a shared one).
    kv_mask: True = real key.
    k_bias, v_bias: biases of the key/value projections, per head.
    scale: logits scale, default ``1 / sqrt(p)`` (fairseq ``scaling``).

  Returns:
    ``(out, None)``: softmax attention has no recurrent state.
  """
  b, t, h, p = q.shape
  s = k.shape[1]
  if s > E.shape[-1]:
    raise ValueError(f"key length {s=} exceeds the projections' "
                     f"n={E.shape[-1]}")
  scale = 1.0 / math.sqrt(p) if scale is None else scale
  f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
  q, k, v, E, F = map(f32, (q, k, v, E, F))
  if kv_mask is not None:
    k = jnp.where(kv_mask[:, :, None, None], k, 0.0)
    v = jnp.where(kv_mask[:, :, None, None], v, 0.0)
  heads = []
  for i in range(h):
    k_i = jnp.einsum("ks,bsp->bkp", E[i, :, :s], k[:, :, i])  # E_i K W_i^K
    v_i = jnp.einsum("ks,bsp->bkp", F[i, :, :s], v[:, :, i])  # F_i V W_i^V
    if k_bias is not None:
      k_i = k_i + f32(k_bias)[i][None, None, :]
    if v_bias is not None:
      v_i = v_i + f32(v_bias)[i][None, None, :]
    logits = jnp.einsum("btp,bkp->btk", q[:, :, i], k_i) * scale
    probs = jax.nn.softmax(logits, axis=-1)
    heads.append(jnp.einsum("btk,bkp->btp", probs, v_i))
  return jnp.stack(heads, axis=2), None


class LinformerProjection(nn.Module):
  """A length projection ``E [k, n]`` as a module: returns the matrix.

  The ``"layerwise"`` mode's one projection for all layers (fairseq
  ``shared_compress_layer``, initialised as there with
  ``xavier_uniform_(gain=1/sqrt(2))``; its unused bias is not kept).
  """
  max_length: int
  k: int = 256
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> Float[Array, "k n"]:
    return self.param("E", nn.with_logical_partitioning(
        _xavier_uniform_half, (None, None)), (self.k, self.max_length),
                      self.param_dtype)


def config() -> ml_collections.ConfigDict:
  """``model.linformer``: the fields of :class:`Linformer`."""
  return attention_config(
      # Keys and values are projected along the length, max_length -> k
      # (None = the task's maximum length).
      max_length=config_dict.placeholder(int), k=256,
      # "none", "headwise", "kv" or "layerwise" (one projection for every
      # layer).
      sharing="headwise")


def validate(c: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  """Checks ``model.linformer`` (``ctx.prefix``) before anything is built."""
  f = lambda name: f"{ctx.prefix}.{name}"
  if c.causal:
    checks.fail(f("causal"), True,
                "is not supported by Linformer (the length projection mixes "
                "every position into every key)")
  validate_attention(c, ctx)
  checks.check_int(f("max_length"), c.max_length, minimum=1, optional=True)
  if (c.max_length is not None and ctx.max_length is not None
      and c.max_length < ctx.max_length):
    checks.fail(f("max_length"), c.max_length,
                f"is shorter than the task's longest input ({ctx.max_length} "
                "positions; None = that length)")
  checks.check_int(f("k"), c.k, minimum=1)
  checks.check_choice(f("sharing"), c.sharing, SHARING)


def _shared(d_model: int, **fields) -> nn.Module | None:
  return Linformer.shared_module(d_model, **fields)


@register_mixer("linformer", config=config, validate=validate,
                length_field="max_length", shared=_shared)
class Linformer(nn.Module):
  """Multi-head Linformer self-attention with its Q/K/V and output projections.

  Paper symbols -> fields/params (``h = n_heads``, ``p = head_dim``):
    n (max sequence length)        ``max_length`` (required)
    k (projected length)           ``k``
    W^Q, W^K, W^V                  query, key, value ``kernel [d, h*p]``, bias
    W^O                            out ``kernel [h*p, d]``, bias
    E_i, F_i                       ``E``, ``F``: ``[h, k, n]`` ("none"),
                                   ``[k, n]`` ("headwise"), ``E [k, n]``
                                   ("kv"); "layerwise": the ``shared``
                                   module's ``E [k, n]``.

  Computation: the input is projected along length BEFORE the key/value dense
  layers, as fairseq does (``(E X) W^K = E (X W^K)``, and the key/value
  biases are added to the k compressed rows): O(n k d) for the projection
  and O(n k p h) for the attention. In "none" mode the key/value dense
  layers come first (on all n rows) and each head's ``E_i`` follows, which
  is cheaper than h compressions of the d-wide input. The attention
  over the k compressed keys is ``kernels.attention.attention`` (every
  query sees every compressed key: no mask; ``impl``, ``block_q`` and
  ``block_k``, default all k keys in one block); with attention dropout in
  training the probabilities are computed densely (``[b, h, t, k]``).

  Sequences shorter than n use the leading columns ``E[:, :t]`` (fairseq
  ``compress_k.weight[:, 0:tgt_len]``); ``t > max_length`` is an error.
  Padding: padded positions (``mask`` False) are zeroed before the length
  projection, so with the leading-columns rule appending padding changes
  nothing; padded query rows return zeros. Causal attention is not supported
  (the length projection mixes future positions into every key).

  Init (fairseq ``reset_parameters``): query/key/value kernels and E/F
  ``xavier_uniform_(gain=1/sqrt(2))``, out kernel ``xavier_uniform_``, out
  bias zero. Deviation: query/key/value biases start at zero (torch's default
  would be ``U(+-1/sqrt(d))``).

  Layerwise sharing: ``Linformer.shared_module(d_model, **fields)`` builds the
  one projection (call it once, in the parent that holds the layers); pass it
  to every layer as ``shared``. Without ``shared`` a "layerwise" layer owns
  its projection (then it equals "kv").

  Attention dropout (``attn_dropout``, rng "dropout") acts on the attention
  probabilities when not deterministic (fairseq ``attn_probs``).
  """
  d_model: int
  max_length: int | None = None
  k: int = 256
  sharing: str = "headwise"
  n_heads: int = 4
  head_dim: int | None = None
  causal: bool = False
  attn_dropout: float = 0.0
  use_bias: bool = True
  shared: Any = None
  impl: str = "auto"
  block_q: int = BLOCK_Q
  block_k: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @classmethod
  def shared_module(cls, d_model: int, *, name: str = "linformer_shared",
                    **fields) -> nn.Module | None:
    """The projection shared by all layers ("layerwise"), else None.

    Call inside the parent's compact method (the module then belongs to the
    parent and is named ``name``) and pass the result to every layer as
    ``shared``. ``fields`` are the layers' own fields (others are ignored).
    """
    del d_model
    if fields.get("sharing", cls.sharing) != "layerwise":
      return None
    if fields.get("max_length") is None:
      raise ValueError("Linformer needs max_length (n, the longest input)")
    return LinformerProjection(
        max_length=fields["max_length"], k=fields.get("k", cls.k),
        param_dtype=fields.get("param_dtype", jnp.float32), name=name)

  @property
  def p(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  def _validate(self):
    if self.max_length is None:
      raise ValueError("Linformer needs max_length (n, the longest input)")
    if self.sharing not in SHARING:
      raise ValueError(f"sharing={self.sharing!r} is not one of {SHARING}")
    if self.causal:
      raise ValueError("causal=True is not supported by Linformer (the length "
                       "projection mixes every position into every key)")
    for name in ("max_length", "k", "n_heads", "d_model"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
    if self.head_dim is None and self.d_model % self.n_heads:
      raise ValueError(f"d_model={self.d_model} is not a multiple of "
                       f"n_heads={self.n_heads}; set head_dim")
    if not 0.0 <= self.attn_dropout < 1.0:
      raise ValueError(f"attn_dropout={self.attn_dropout} must be in [0, 1)")
    check_module_impl(self.impl, "attention")

  def _dense(self, features, init, axes, name):
    return FlatDense(
        features, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                               axes[1:]),
        name=name)

  def projections(self) -> tuple[Array, Array]:
    """``(E, F)``: ``[h, k, n]`` in "none" mode, else ``[k, n]`` each."""
    n, kk, h = self.max_length, self.k, self.n_heads
    if self.sharing == "layerwise" and self.shared is not None:
      E = self.shared()
      if E.shape != (kk, n):
        raise ValueError(f"the shared projection has shape {E.shape}; this "
                         f"layer needs {(kk, n)} (k, max_length)")
      return E, E
    if self.sharing == "none":
      shape, axes = (h, kk, n), ("heads", None, None)
    else:
      shape, axes = (kk, n), (None, None)
    init = nn.with_logical_partitioning(_xavier_uniform_half, axes)
    E = self.param("E", init, shape, self.param_dtype)
    if self.sharing in ("kv", "layerwise"):
      return E, E
    return E, self.param("F", init, shape, self.param_dtype)

  @nn.compact
  def __call__(
      self,
      x: Float[Array, "b t d"],
      mask: Bool[ArrayLike, "b t"] | None = None,
      *,
      deterministic: bool = True,
  ) -> Float[Array, "b t d"]:
    self._validate()
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"x must be [b, t, {self.d_model}]; got {x.shape=}")
    b, t, d = x.shape
    h, p, kk = self.n_heads, self.p, self.k
    if t > self.max_length:
      raise ValueError(f"sequence length t={t} exceeds "
                       f"max_length={self.max_length}")
    if mask is not None and mask.shape != (b, t):
      raise ValueError(f"{mask.shape=} must be {(b, t)}")

    query = self._dense(h * p, _xavier_uniform_half, ("embed", "heads"),
                        "query")
    key = self._dense(h * p, _xavier_uniform_half, ("embed", "heads"), "key")
    value = self._dense(h * p, _xavier_uniform_half, ("embed", "heads"),
                        "value")
    out = self._dense(d, _xavier_uniform, ("heads", "embed"), "out")
    E, F = self.projections()
    E = E[..., :t].astype(self.dtype)
    F = F[..., :t].astype(self.dtype)

    x = x.astype(self.dtype)
    xm = x if mask is None else jnp.where(mask[..., None], x, 0)
    if self.sharing == "none":
      # Per-head projections: the dense layer first (h times cheaper than
      # h compressions of the d-wide input), then E_i per head. The dense
      # layer's bias b went into every (real) row: E_i (m o (X W + b)) =
      # E_i (m o X) W + (E_i m) b, so (1 - E_i m) b restores the convention
      # of one bias per compressed row. b = dense(0) exactly.
      m = (jnp.ones((b, t), self.dtype) if mask is None
           else mask.astype(self.dtype))
      def per_head(P, dense):
        y = dense(xm).reshape(b, t, h, p)
        if mask is not None:
          y = jnp.where(mask[..., None, None], y, 0)
        c = jnp.einsum("hkt,bthp->bkhp", P, y)
        if self.use_bias:
          bias = dense(jnp.zeros((1, 1, d), self.dtype)).reshape(1, 1, h, p)
          em = jnp.einsum("hkt,bt->bkh", P, m)
          c = c + (1.0 - em)[..., None] * bias
        return c
      k_c, v_c = per_head(E, key), per_head(F, value)  # [b, k, h, p]
    else:
      if self.sharing in ("kv", "layerwise"):  # E = F
        c_k = c_v = jnp.einsum("kt,btd->bkd", E, xm)
      else:  # one product for both projections
        c = jnp.einsum("kt,btd->bkd", jnp.concatenate([E, F], axis=0), xm)
        c_k, c_v = c[:, :kk], c[:, kk:]
      k_c = key(c_k).reshape(b, kk, h, p)
      v_c = value(c_v).reshape(b, kk, h, p)

    q = query(x).reshape(b, t, h, p)
    if self.attn_dropout > 0.0 and not deterministic:
      logits = jnp.einsum("bthp,bkhp->bhtk", q, k_c) * (p**-0.5)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      probs = nn.Dropout(self.attn_dropout, deterministic=False)(probs)
      y = jnp.einsum("bhtk,bkhp->bthp", probs.astype(self.dtype), v_c)
    else:
      # Every query sees all k compressed keys: plain softmax attention with
      # s = k (kernels.attention: dense, hand-written backward).
      y, _ = fa.attention(q, k_c, v_c, impl=self.impl, block_q=self.block_q,
                          block_k=self.block_k or kk)
    y = out(y.reshape(b, t, h * p))
    if mask is not None:
      y = jnp.where(mask[..., None], y, 0)
    return y.astype(self.dtype)
