"""Linear attention (Katharopoulos et al. 2020), a mixer with the attention
projections of layers/attention.py and the kernels of
``kernels.linear_attention``."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jaxtyping import Array, ArrayLike, Bool, Float

from configs import checks
from kernels import linear_attention as la
from layers.attention import QKVProjections, attention_config
from layers.attention import validate_attention
from layers.registry import (MixerContext, check_impl, check_module_impl,
                             register_mixer)

FEATURE_MAPS = {
    # Katharopoulos et al. 2020, eq. 7 (and the official elu_feature_map).
    "elu": lambda x: jax.nn.elu(x) + 1.0,
    # A non-negative map often used in ablations; can give zero features
    # (then only eps keeps the denominator positive).
    "relu": jax.nn.relu,
}


def config() -> ml_collections.ConfigDict:
  """``model.linear_attention``: the fields of :class:`LinearAttention`."""
  # Feature map "elu" (elu + 1) or "relu", chunk of the chunked form,
  # normaliser epsilon; impl "auto"/"xla" (chunked) or "reference"
  # (recurrent).
  return attention_config(feature_map="elu", chunk_size=64, eps=1e-6,
                          impl="auto")


def validate(c: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  """Checks ``model.linear_attention`` (``ctx.prefix``)."""
  f = lambda name: f"{ctx.prefix}.{name}"
  validate_attention(c, ctx, dropout=False)
  checks.check_choice(f("feature_map"), c.feature_map, sorted(FEATURE_MAPS))
  checks.check_int(f("chunk_size"), c.chunk_size, minimum=1)
  checks.check_float(f("eps"), c.eps, low=0.0, low_open=True)
  check_impl(f("impl"), c.impl, "linear_attention")


@register_mixer("linear_attention", config=config, validate=validate)
class LinearAttention(QKVProjections):
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
      mask: Bool[ArrayLike, "b t"] | None = None,
      *,
      deterministic: bool = True,
  ) -> Float[Array, "b t d"]:
    del deterministic
    self._validate_heads()
    check_module_impl(self.impl, "linear_attention")
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
