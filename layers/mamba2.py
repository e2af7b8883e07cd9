"""Mamba-2 sequence mixer (Flax Linen), with training-free state-collapse
mitigations.

Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality" (ICML 2024). The block follows the
official code (github.com/state-spaces/mamba, ``mamba_ssm/modules/mamba2.py``
and ``mamba2_simple.py``; the gated norm is ``ops/triton/layernorm_gated.py``),
with the SSD scan in ``kernels.ssd``.

Mitigations: Chen et al., "Stuffed Mamba: State Collapse and State Capacity of
RNN-Based Long-Context Modeling" (arXiv 2410.07145), training-free methods
applied at inference to a trained model (see ``Mamba2``).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float
from ml_collections import config_dict

from configs import checks
from kernels import Impl, supported_impls
from kernels import ssd as ssd_ops
from layers.registry import MixerContext, check_impl, register_mixer

_HI = jax.lax.Precision.HIGHEST  # as kernels.ssd: no TF32 in the recurrence

# torch.nn.Linear / Conv1d default initialisation, kaiming_uniform(a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), variance 1 / (3 fan_in). The official
# Mamba-2 keeps it for in_proj/out_proj/conv1d (mamba_ssm's _init_weights only
# re-initialises embeddings and zeroes Linear biases).
_torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in",
                                                       "uniform")


class CausalDepthwiseConv(nn.Module):
  """Depthwise causal 1-D convolution, ``y_t = bias + sum_k w_k x_{t-K+1+k}``.

  Equal to torch ``Conv1d(groups=channels, padding=K-1)`` cut to the first
  ``t`` outputs (the official layer). ``history`` holds the ``K - 1`` inputs
  before ``x`` (zeros at the start of a sequence); the call returns the output
  and the last ``K - 1`` inputs, the next call's history (decode).
  """
  features: int
  width: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: Float[Array, "b t d"],
      history: Float[Array, "b k d"] | None = None,
  ) -> tuple[Float[Array, "b t d"], Float[Array, "b k d"]]:
    K, d = self.width, self.features
    bound = 1.0 / math.sqrt(K)  # torch Conv1d default: fan_in = K (depthwise)

    def uniform(key, shape, dtype):
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    kernel = self.param("kernel", nn.with_logical_partitioning(
        uniform, (None, "mlp")), (K, d), self.param_dtype)
    b, t, _ = x.shape
    if history is None:
      history = jnp.zeros((b, K - 1, d), x.dtype)
    xp = jnp.concatenate([history.astype(x.dtype), x], axis=1)  # [b, K-1+t, d]
    kernel = kernel.astype(self.dtype)
    y = sum(xp[:, k:k + t].astype(self.dtype) * kernel[k][None, None, :]
            for k in range(K))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(
          uniform, ("mlp",)), (d,), self.param_dtype)
      y = y + bias.astype(self.dtype)[None, None, :]
    return y, xp[:, xp.shape[1] - (K - 1):]


class GatedRMSNorm(nn.Module):
  """``rmsnorm(y * silu(z)) * scale`` with the RMS per group of channels.

  The official ``RMSNormGated(norm_before_gate=False, group_size=d_inner /
  n_groups)`` (``mamba_ssm/ops/triton/layernorm_gated.py``, ``rms_norm_ref``),
  computed in float32.
  """
  features: int
  group_size: int
  eps: float = 1e-5
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, y: Float[Array, "b t e"],
               z: Float[Array, "b t e"]) -> Float[Array, "b t e"]:
    scale = self.param("scale", nn.with_logical_partitioning(
        nn.initializers.ones_init(), ("mlp",)), (self.features,),
        self.param_dtype)
    y = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
    *lead, e = y.shape
    yg = y.reshape(*lead, e // self.group_size, self.group_size)
    rstd = jax.lax.rsqrt(jnp.mean(yg * yg, axis=-1, keepdims=True) + self.eps)
    y = (yg * rstd).reshape(*lead, e)
    return y * scale.astype(jnp.float32)[None, None, :]


# Parameters without weight decay (official: ``_no_weight_decay`` on A_log, D,
# dt_bias).
NO_DECAY_PATTERN = r"(^|/)mixer/(A_log|D|dt_bias)$"


def config() -> ml_collections.ConfigDict:
  """``model.mamba2``: the fields of :class:`Mamba2`; the defaults are the
  official Mamba2 module's."""
  c = ml_collections.ConfigDict()
  # State size N per head.
  c.d_state = 128
  # Width of the depthwise causal convolution.
  c.d_conv = 4
  # Inner width = expand * d_model.
  c.expand = 2
  # Head dimension P (heads = expand * d_model / head_dim).
  c.head_dim = 64
  # Groups sharing B and C (heads per group = heads / n_groups).
  c.n_groups = 1
  # Chunk length of the chunked SSD scan (any length works).
  c.chunk_size = 256
  # Range of the log-uniform initial step size dt.
  c.dt_min = 1e-3
  c.dt_max = 1e-1
  # Range of the uniform initial -A (A = -exp(A_log)).
  c.a_init_min = 1.0
  c.a_init_max = 16.0
  # SSD implementation: "auto" | "reference" (sequential scan) | "xla"
  # (chunked).
  c.impl = "auto"
  # State-collapse mitigations (Stuffed Mamba), training-free switches:
  # decay alpha_t -> alpha_t ** decay_scale (>= 1: forget more);
  c.decay_scale = 1.0
  # inserted term B_t -> insert_scale * B_t (<= 1: remember less);
  c.insert_scale = 1.0
  # rescale the state after every update so its norm stays bounded (None =
  # off; sequential scan only);
  c.state_norm = config_dict.placeholder(float)
  # keep only the last `window` tokens in the state, by state difference
  # (None = off).
  c.window = config_dict.placeholder(int)
  # Optimizer groups (layers/registry.py): A_log, D and dt_bias without
  # weight decay, as the official code.
  c.optim_groups = ml_collections.ConfigDict()
  c.optim_groups.ssm = ml_collections.ConfigDict(dict(
      pattern=NO_DECAY_PATTERN,
      learning_rate=config_dict.placeholder(float),
      weight_decay=config_dict.FieldReference(0.0, field_type=float)))
  return c


def validate(c: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  """Checks ``model.mamba2`` (``ctx.prefix``) before anything is built."""
  f = lambda name: f"{ctx.prefix}.{name}"
  for name in ("d_state", "d_conv", "expand", "head_dim", "n_groups",
               "chunk_size"):
    checks.check_int(f(name), c[name], minimum=1)
  d_inner = c.expand * ctx.d_model
  if d_inner % c.head_dim:
    checks.fail(f("head_dim"), c.head_dim,
                f"does not divide the inner width expand * d_model = "
                f"{c.expand} * {ctx.d_model} = {d_inner}")
  heads = d_inner // c.head_dim
  if heads % c.n_groups:
    checks.fail(f("n_groups"), c.n_groups,
                f"does not divide the {heads} heads (expand * d_model / "
                "head_dim)")
  for low, high in (("dt_min", "dt_max"), ("a_init_min", "a_init_max")):
    checks.check_float(f(low), c[low], low=0.0, low_open=True)
    checks.check_float(f(high), c[high], low=0.0, low_open=True)
    if c[low] > c[high]:
      raise ValueError(f"{f(low)}={c[low]!r} must be <= {f(high)}={c[high]!r}")
  check_impl(f("impl"), c.impl, "ssd")
  checks.check_float(f("decay_scale"), c.decay_scale, low=1.0)
  checks.check_float(f("insert_scale"), c.insert_scale, low=0.0, high=1.0,
                     low_open=True)
  checks.check_float(f("state_norm"), c.state_norm, low=0.0, low_open=True,
                     optional=True)
  checks.check_int(f("window"), c.window, minimum=1, optional=True)
  if c.window is not None and c.state_norm is not None:
    checks.fail(f("window"), c.window,
                f"cannot be combined with {f('state_norm')}={c.state_norm!r}: "
                "the state difference is exact only for the linear recurrence")


@register_mixer("mamba2", config=config, validate=validate)
class Mamba2(nn.Module):
  """Mamba-2 block: in_proj, causal conv, SSD scan, gated RMSNorm, out_proj.

  ``[z, x, B, C, dt] = in_proj(u)``; ``[x, B, C] = silu(conv1d([x, B, C]))``;
  ``dt = softplus(dt + dt_bias)``; per head ``h_t = exp(dt_t A) h_{t-1} +
  dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t`` (``kernels.ssd``);
  ``out = out_proj(rmsnorm(y * silu(z)))``. The layer includes its output
  projection (use the backbone with ``output="none"``).

  Paper symbols -> fields/params (``e = d_inner = expand * d_model``,
  ``h = e / head_dim`` heads of width ``p = head_dim``, ``g = n_groups`` groups
  sharing B and C, ``n = d_state``):
    X, Z, B, C, Delta (projections)   in_proj ``kernel [d_model, 2e + 2gn + h]``
    conv over [X, B, C]               conv1d ``kernel [d_conv, e + 2gn]``, bias
    Delta bias                        dt_bias ``[h]``
    A (scalar per head, negative)     -exp(A_log) ``A_log [h]``
    D (skip)                          D ``[h]``
    gated RMSNorm scale               norm/scale ``[e]``
    output projection                 out_proj ``kernel [e, d_model]``

  Init (official ``Mamba2.__init__``): ``dt ~ exp(U[log dt_min, log dt_max])``
  clamped below at dt_init_floor, ``dt_bias = softplus^-1(dt) = dt +
  log(-expm1(-dt))``; ``A_log = log U[a_init_min, a_init_max]``; ``D = 1``;
  norm scale 1; dense
  and conv weights as torch's defaults (``U(+-1/sqrt(fan_in))``; the official
  LM additionally divides out_proj by ``sqrt(n_layer)``, which is the model's
  business). dt_bias, A_log and D take no weight decay (the ``ssm``
  optimizer group of :func:`config`, ``NO_DECAY_PATTERN``).

  Padding: ``mask`` (True = real token) zeroes the conv inputs and sets
  ``x = 0``, ``dt = 0`` at padded positions: such a step is the identity on
  the state (no decay, no insertion), so real outputs and the final state are
  those of the unpadded sequence for right and left padding (also with a
  window: padded positions count in it but contribute nothing). Outputs at
  padded positions are zero. In decode, padded steps also shift zeros into
  the conv history, so after a right-padded prompt the SSM state is the
  unpadded one's but the conv history is not (left-pad prompts to generate).

  Mitigations (the training-free methods of Stuffed Mamba; all default off):
    ``decay_scale`` lambda >= 1 ("forget more"): ``alpha_t = exp(dt_t A) ->
      alpha_t^lambda`` (the kernel gets ``lambda A``).
    ``insert_scale`` gamma in (0, 1] ("remember less"): ``B_t -> gamma B_t``.
      (The authors' code, github.com/thunlp/stuffed-mamba
      ``passkey-retrieval/mamba2/modeling_mamba2.py``, multiplies ``A`` and
      ``B`` after the conv the same way: ``A_mult``, ``B_mult``.)
    ``state_norm`` tau > 0: after every update each head's state is clipped
      to Frobenius norm tau, ``h <- h min(1, tau / ||h||)``
      (``kernels.ssd.ssd_reference(state_norm=tau)``). The authors' code
      calibrates one threshold per head as the state norm reached at the
      training length; here tau is one number for all heads. The clipping
      makes the state a nonlinear function of the inputs, so there is no
      chunked/quadratic form: the full-sequence pass runs the sequential
      reference scan, and decode applies the same rule step by step.
    ``window`` r >= 1 ("sliding window by state difference"):
      ``y_t = (h_t - prod_{u=t-r+1..t} alpha_u h_{t-r}) C_t``, the output of
      the recurrence restarted r tokens back; chunked in the full pass (kernel
      ``window=``), and in decode from a cache holding ``h_t``, the lagged
      state ``h_{t-r}`` and a ring buffer of the last r steps' inputs.
    ``state_norm`` and ``window`` cannot be combined.

  State norms: when the ``"intermediates"`` collection is mutable, the full
  pass sows ``state_norm [b, n_chunks, h]``, the Frobenius norm per head of the
  (windowed / normalised) state after the last token of every chunk of
  ``chunk_size`` tokens. In decode it sows ``[b, 1, h]``, the state at the end
  of the call.

  Decode (``decode=True``): the ``"cache"`` collection holds ``conv_state
  [b, d_conv - 1, e + 2gn]`` (the last conv inputs), ``ssm_state [b, h, p, n]``
  (float32) and ``index`` (int32, positions consumed); with a window also
  ``lag_state [b, h, p, n]`` (``h_{t-r}``) and the ring buffers ``win_x
  [b, r, h, p]`` (``dt x``), ``win_B [b, r, g, n]`` (``gamma B``) and
  ``win_log_decay [b, r, h]`` (``lambda dt A``). A call consumes ``x [b, t, d]``
  (t >= 1): without a window, t = 1 is one recurrence step and t > 1 the
  chunked form started from the cached state (exact for any continuation);
  with a window, t > 1 on an empty cache prefills with the chunked form, and
  otherwise steps token by token.
  """
  d_model: int
  d_state: int = 128
  d_conv: int = 4
  expand: int = 2
  head_dim: int = 64
  n_groups: int = 1
  chunk_size: int = 256
  dt_min: float = 1e-3
  dt_max: float = 1e-1
  dt_init_floor: float = 1e-4
  a_init_min: float = 1.0
  a_init_max: float = 16.0
  conv_bias: bool = True
  bias: bool = False
  norm_eps: float = 1e-5
  impl: str = "auto"
  decode: bool = False
  decay_scale: float = 1.0
  insert_scale: float = 1.0
  state_norm: float | None = None
  window: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  # ---------------------------------------------------------------- shapes
  @property
  def d_inner(self) -> int:
    return self.expand * self.d_model

  @property
  def n_heads(self) -> int:
    return self.d_inner // self.head_dim

  @property
  def conv_dim(self) -> int:
    return self.d_inner + 2 * self.n_groups * self.d_state

  # ---------------------------------------------------------------- checks
  def _validate(self):
    for name in ("d_model", "expand", "head_dim", "d_state", "d_conv",
                 "chunk_size", "n_groups"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
    if self.d_inner % self.head_dim:
      raise ValueError(
          f"d_inner = expand * d_model = {self.expand} * {self.d_model} = "
          f"{self.d_inner} is not a multiple of head_dim={self.head_dim}")
    if self.n_heads % self.n_groups:
      raise ValueError(f"heads={self.n_heads} (d_inner / head_dim) is not a "
                       f"multiple of n_groups={self.n_groups}")
    if not 0 < self.dt_min <= self.dt_max:
      raise ValueError(f"need 0 < dt_min <= dt_max; got {self.dt_min=} "
                       f"{self.dt_max=}")
    if not 0 < self.a_init_min <= self.a_init_max:
      raise ValueError(f"need 0 < a_init_min <= a_init_max; got "
                       f"{self.a_init_min=} {self.a_init_max=}")
    if self.impl not in supported_impls("ssd"):
      raise ValueError(
          f"impl={self.impl!r} is not one of {supported_impls('ssd')}")
    if not self.decay_scale >= 1:
      raise ValueError(f"decay_scale={self.decay_scale} must be >= 1 "
                       "(alpha^lambda with lambda >= 1 forgets more)")
    if not 0 < self.insert_scale <= 1:
      raise ValueError(f"insert_scale={self.insert_scale} must be in (0, 1]")
    if self.state_norm is not None and not self.state_norm > 0:
      raise ValueError(f"state_norm={self.state_norm} must be > 0 or None")
    if self.window is not None and (int(self.window) != self.window
                                    or self.window < 1):
      raise ValueError(f"window={self.window} must be an integer >= 1 or None")
    if self.window is not None and self.state_norm is not None:
      raise ValueError(f"window={self.window} and state_norm="
                       f"{self.state_norm} cannot be combined")

  # ------------------------------------------------------------ parameters
  def setup(self):
    self._validate()
    h, e = self.n_heads, self.d_inner

    def dense(features, axes, name):
      return nn.Dense(
          features, use_bias=self.bias, dtype=self.dtype,
          param_dtype=self.param_dtype,
          kernel_init=nn.with_logical_partitioning(_torch_default_init, axes),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                 axes[1:]),
          name=name)

    self.in_proj = dense(2 * e + 2 * self.n_groups * self.d_state + h,
                         ("embed", "mlp"), "in_proj")
    self.conv1d = CausalDepthwiseConv(
        self.conv_dim, self.d_conv, use_bias=self.conv_bias, dtype=self.dtype,
        param_dtype=self.param_dtype)
    self.norm = GatedRMSNorm(e, e // self.n_groups, eps=self.norm_eps,
                             param_dtype=self.param_dtype)
    self.out_proj = dense(self.d_model, ("mlp", "embed"), "out_proj")

    def dt_bias_init(key, shape, dtype):
      lo, hi = math.log(self.dt_min), math.log(self.dt_max)
      dt = jnp.exp(jax.random.uniform(key, shape, jnp.float32, lo, hi))
      dt = jnp.maximum(dt, self.dt_init_floor)
      return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    def a_log_init(key, shape, dtype):
      return jnp.log(jax.random.uniform(key, shape, jnp.float32,
                                        self.a_init_min,
                                        self.a_init_max)).astype(dtype)

    def param(name, init_fn):
      return self.param(name, nn.with_logical_partitioning(init_fn, ("heads",)),
                        (h,), self.param_dtype)

    self.dt_bias = param("dt_bias", dt_bias_init)
    self.A_log = param("A_log", a_log_init)
    self.D = param("D", nn.initializers.ones_init())

  # ------------------------------------------------------------- kernels
  def _ssd(self, x, dt, A, B, C, *, initial_state=None, chunk_states=False,
           impl=None, windowed=True):
    """``kernels.ssd`` with the layer's options: ``(y, state[, states])``."""
    kw = dict(chunk_size=self.chunk_size, initial_state=initial_state,
              window=self.window if windowed else None)
    if self.state_norm is not None:
      return ssd_ops.ssd_reference(x, dt, A, B, C, state_norm=self.state_norm,
                                   return_chunk_states=chunk_states, **kw)
    op = ssd_ops.ssd_chunk_states if chunk_states else ssd_ops.ssd
    return op(x, dt, A, B, C, impl=impl or self.impl, **kw)

  # ----------------------------------------------------------------- call
  @nn.compact
  def __call__(
      self,
      x: Float[Array, "b t d"],
      mask: Bool[ArrayLike, "b t"] | None = None,
      *,
      deterministic: bool = True,
  ) -> Float[Array, "b t d"]:
    del deterministic  # no dropout inside the mixer
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"x must be [b, t, {self.d_model}]; got {x.shape=}")
    b, t, _ = x.shape
    if mask is not None and mask.shape != (b, t):
      raise ValueError(f"{mask.shape=} must be {(b, t)}")
    e, h, p = self.d_inner, self.n_heads, self.head_dim
    g, n = self.n_groups, self.d_state

    zxbcdt = self.in_proj(x.astype(self.dtype))
    z, xbc, dt = jnp.split(zxbcdt, [e, e + self.conv_dim], axis=-1)
    if mask is not None:
      xbc = jnp.where(mask[..., None], xbc, 0)

    if self.decode:
      is_initialized = self.has_variable("cache", "conv_state")
      conv_state = self.variable(
          "cache", "conv_state", jnp.zeros, (b, self.d_conv - 1,
                                             self.conv_dim), self.dtype)
      want = (b, self.d_conv - 1, self.conv_dim)
      if conv_state.value.shape != want:
        raise ValueError(f"cache conv_state has shape "
                         f"{conv_state.value.shape}; this call needs {want}")
      xbc, history = self.conv1d(xbc, conv_state.value)
    else:
      xbc, history = self.conv1d(xbc)
    xbc = jax.nn.silu(xbc)
    xs, B, C = jnp.split(xbc, [e, e + g * n], axis=-1)
    xs = xs.reshape(b, t, h, p)
    B = B.reshape(b, t, g, n) * jnp.asarray(self.insert_scale, B.dtype)
    C = C.reshape(b, t, g, n)
    dt = jax.nn.softplus(dt.astype(jnp.float32)
                         + self.dt_bias.astype(jnp.float32)[None, None, :])
    if mask is not None:
      dt = jnp.where(mask[..., None], dt, 0.0)
      xs = jnp.where(mask[..., None, None], xs, 0)
    A = -jnp.exp(self.A_log.astype(jnp.float32)) * self.decay_scale

    if self.decode:
      y = self._decode(xs, dt, A, B, C, is_initialized)
      if is_initialized:  # init only creates the (empty) cache
        conv_state.value = history
    else:
      y = self._full(xs, dt, A, B, C)
    y = (y.astype(jnp.float32)
         + self.D.astype(jnp.float32)[None, None, :, None]
         * xs.astype(jnp.float32))
    y = self.norm(y.reshape(b, t, e), z)
    out = self.out_proj(y.astype(self.dtype))
    if mask is not None:
      out = jnp.where(mask[..., None], out, 0)
    return out.astype(self.dtype)

  def _full(self, xs, dt, A, B, C) -> Float[Array, "b t h p"]:
    if self.is_mutable_collection("intermediates"):
      y, _, chunk_states = self._ssd(xs, dt, A, B, C, chunk_states=True)
      self.sow("intermediates", "state_norm", _frobenius(chunk_states))
      return y
    y, _ = self._ssd(xs, dt, A, B, C)
    return y

  # --------------------------------------------------------------- decode
  def _decode(self, xs, dt, A, B, C,
              is_initialized: bool) -> Float[Array, "b t h p"]:
    b, t, h, p = xs.shape
    g, n = B.shape[-2:]
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    ssm_state = self.variable("cache", "ssm_state", zeros, b, h, p, n)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    if ssm_state.value.shape != (b, h, p, n):
      raise ValueError(f"cache ssm_state has shape {ssm_state.value.shape}; "
                       f"this call needs {(b, h, p, n)}")

    if self.window is None:
      # One token: the recurrence step (the reference scan of length 1); more
      # tokens: the chunked form started from the cached state (exact for any
      # continuation, not only an empty cache).
      impl = Impl.REFERENCE if t == 1 else None
      y, state = self._ssd(xs, dt, A, B, C, initial_state=ssm_state.value,
                           impl=impl)
      out_state = state
      new = {"ssm_state": state}
    else:
      r = int(self.window)
      lag_state = self.variable("cache", "lag_state", zeros, b, h, p, n)
      win_x = self.variable("cache", "win_x", zeros, b, r, h, p)
      win_B = self.variable("cache", "win_B", zeros, b, r, g, n)
      win_a = self.variable("cache", "win_log_decay", zeros, b, r, h)
      carry = (ssm_state.value, lag_state.value, win_x.value, win_B.value,
               win_a.value)

      def step():
        return self._window_steps(carry, index.value, xs, dt, A, B, C)

      if t == 1:
        y, carry = step()
      else:
        y, carry = jax.lax.cond(
            index.value == 0,
            lambda: self._window_prefill(xs, dt, A, B, C),
            step)
      state, lag, wx, wb, wa = carry
      out_state = state - jnp.exp(jnp.sum(wa, axis=1))[..., None, None] * lag
      new = {"ssm_state": state, "lag_state": lag, "win_x": wx, "win_B": wb,
             "win_log_decay": wa}
    if self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "state_norm", _frobenius(out_state[:, None]))
    if is_initialized:
      for name, value in new.items():
        self.put_variable("cache", name, value)
      index.value = index.value + t
    return y

  def _window_steps(self, carry, index, xs, dt, A, B, C):
    """Token-by-token windowed recurrence (state difference), see class doc.

    Before step ``s``: ``lag = h_{s-1-r}`` and the ring buffer holds the
    inputs of steps ``s-r .. s-1`` at slots ``step % r`` (zeros before the
    start: identity steps). The oldest entry (slot ``s % r``) advances the
    lagged state to ``h_{s-r}``, then step ``s`` takes its slot.
    """
    r = int(self.window)
    h = xs.shape[2]
    g = B.shape[2]

    def per_head(v):  # [b, g, n] -> [b, h, n]
      return jnp.repeat(v, h // g, axis=1)

    def one(carry, inp):
      state, lag, wx, wb, wa, i = carry
      x_s, dt_s, B_s, C_s = inp
      slot = i % r
      old_x = jax.lax.dynamic_index_in_dim(wx, slot, axis=1, keepdims=False)
      old_B = jax.lax.dynamic_index_in_dim(wb, slot, axis=1, keepdims=False)
      old_a = jax.lax.dynamic_index_in_dim(wa, slot, axis=1, keepdims=False)
      lag = (jnp.exp(old_a)[..., None, None] * lag
             + jnp.einsum("bhp,bhn->bhpn", old_x, per_head(old_B),
                          precision=_HI))
      u_x = dt_s[..., None] * x_s  # [b, h, p]
      a = dt_s * A[None, :]  # [b, h]
      wx = jax.lax.dynamic_update_index_in_dim(wx, u_x, slot, axis=1)
      wb = jax.lax.dynamic_update_index_in_dim(wb, B_s, slot, axis=1)
      wa = jax.lax.dynamic_update_index_in_dim(wa, a, slot, axis=1)
      state = (jnp.exp(a)[..., None, None] * state
               + jnp.einsum("bhp,bhn->bhpn", u_x, per_head(B_s),
                            precision=_HI))
      decay = jnp.exp(jnp.sum(wa, axis=1))  # prod of the last r alphas
      windowed = state - decay[..., None, None] * lag
      y = jnp.einsum("bhpn,bhn->bhp", windowed, per_head(C_s),
                     precision=_HI)
      return (state, lag, wx, wb, wa, i + 1), y

    f32 = lambda v: jnp.swapaxes(v.astype(jnp.float32), 0, 1)  # noqa: E731
    (*carry, _), y = jax.lax.scan(
        one, (*carry, index), (f32(xs), f32(dt), f32(B), f32(C)))
    return jnp.swapaxes(y, 0, 1).astype(xs.dtype), tuple(carry)

  def _window_prefill(self, xs, dt, A, B, C):
    """Windowed chunked pass on an empty cache, and the cache it leaves."""
    r = int(self.window)
    b, t, h, p = xs.shape
    g, n = B.shape[-2:]
    y, _ = self._ssd(xs, dt, A, B, C)
    _, state = self._ssd(xs, dt, A, B, C, windowed=False)  # h_T
    if t > r:  # h_{T-1-r}: the state after the first T - r tokens
      _, lag = self._ssd(xs[:, :t - r], dt[:, :t - r], A, B[:, :t - r],
                         C[:, :t - r], windowed=False)
    else:
      lag = jnp.zeros((b, h, p, n), jnp.float32)
    steps = np.arange(max(0, t - r), t)
    slots = steps % r
    f32 = lambda v: v.astype(jnp.float32)  # noqa: E731
    wx = jnp.zeros((b, r, h, p), jnp.float32).at[:, slots].set(
        f32(dt[:, steps, :, None] * xs[:, steps]))
    wb = jnp.zeros((b, r, g, n), jnp.float32).at[:, slots].set(f32(B[:, steps]))
    wa = jnp.zeros((b, r, h), jnp.float32).at[:, slots].set(
        dt[:, steps] * A[None, None, :])
    return y, (f32(state), f32(lag), wx, wb, wa)


def _frobenius(states: Float[Array, "b c h p n"]) -> Float[Array, "b c h"]:
  states = states.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(states * states, axis=(-2, -1)))
