"""SGConv: Structured Global Convolution sequence mixer (Flax Linen).

Li, Cai, Zhang, Chen, Dey, "What Makes Convolutional Models Great on Long
Sequence Modeling?" (ICLR 2023, arXiv 2210.09298). The kernel construction,
initialisation and defaults follow the official code (github.com/ctlllll/SGConv,
``gconv_standalone.py``, class ``GConv`` in its default mode ``"cat_randn"``,
commit 97862df); the places are cited below as ``GConv.__init__`` /
``GConv.forward``.

The global kernel is the concatenation of ``S`` sub-kernels of growing length,
each a small learnable kernel upsampled by linear interpolation and weighted by
a decaying factor, then normalised by a norm fixed at initialisation::

  K = concat_i [ alpha^i * Upsample_{2^max(0, i-1)}(k_i) ] / Z,  i = 0..S-1

so scale 0 and 1 cover ``kernel_dim`` taps each at full resolution and scale
``i >= 1`` covers ``kernel_dim * 2^(i-1)`` taps with ``kernel_dim`` parameters:
the total length is ``kernel_dim * 2^(S-1)`` with ``S * kernel_dim``
parameters per channel.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float
from ml_collections import config_dict

from configs import checks
from kernels import supported_impls
from kernels.fftconv import fftconv
from layers.activations import gelu_exact
from layers.registry import (CAUSAL_TASK, MixerContext, check_impl,
                             register_mixer)

# The fixed kernel norm lives outside "params" (it is not trained); whoever
# applies the layer must carry this collection from init (like "batch_stats").
NORM_COLLECTION = "constants"

ACTIVATIONS = {
    # torch.nn.GELU (official default, GConv activation='gelu') is the exact
    # erf form.
    "gelu": gelu_exact,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "none": lambda x: x,
}


def num_scales(l_max: int, kernel_dim: int) -> int:
  """Official default ``S = 1 + ceil(log2(l_max / kernel_dim))``
  (``GConv.__init__``, ``init_scale = 0``), the fewest scales whose total length
  ``kernel_dim * 2^(S-1)`` reaches ``l_max``; at least 1 (the official formula
  gives S <= 0 when ``l_max < kernel_dim / 2``, which its forward cannot run).
  Computed in integers, so exact powers of two do not suffer float rounding.
  """
  if l_max < 1 or kernel_dim < 1:
    raise ValueError(f"need l_max >= 1 and kernel_dim >= 1; got {l_max=} "
                     f"{kernel_dim=}")
  m = 0
  while kernel_dim << m < l_max:
    m += 1
  return 1 + m


def scale_lengths(kernel_dim: int, n_scales: int) -> list[int]:
  """Length of each upsampled sub-kernel: ``kernel_dim * 2^max(0, i-1)``."""
  return [kernel_dim * 2**max(0, i - 1) for i in range(n_scales)]


def upsample_linear(x: Float[Array, "... k"],
                    factor: int) -> Float[Array, "... m"]:
  """Linear interpolation along the last axis by an integer ``factor``.

  Matches ``torch.nn.functional.interpolate(x, scale_factor=factor,
  mode="linear", align_corners=False)`` (what ``GConv.forward`` uses): output
  sample ``j`` reads the source coordinate ``s = max((j + 0.5) / factor - 0.5,
  0)`` and blends ``x[floor(s)]`` and ``x[min(floor(s) + 1, k - 1)]`` with
  weight ``s - floor(s)`` on the second; so the first and last
  ``factor / 2`` outputs repeat the end samples.
  """
  if factor < 1 or int(factor) != factor:
    raise ValueError(f"{factor=} must be a positive integer")
  if factor == 1:
    return x
  k = x.shape[-1]
  src = np.maximum((np.arange(k * factor) + 0.5) / factor - 0.5, 0.0)
  lo = np.floor(src).astype(np.int32)
  hi = np.minimum(lo + 1, k - 1)
  w = jnp.asarray(src - lo, x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
  return x[..., lo] * (1 - w) + x[..., hi] * w


def sgconv_kernel(kernels: Float[Array, "s c d k"],
                  decay: float) -> Float[Array, "c d l"]:
  """Unnormalised multiscale kernel ``concat_i decay^i Upsample_i(k_i)``.

  The official code weights scale ``i`` by ``multiplier^(S-1-i)`` with
  ``multiplier = decay_min = decay_max = 2`` (``GConv.__init__``), i.e.
  ``2^(S-1) * (1/2)^i``: the same kernel up to the constant ``2^(S-1)``,
  which the normalisation by the (equally scaled) initial norm removes.
  ``decay = 1 / multiplier``.
  """
  parts = [
      upsample_linear(kernels[i], 2**max(0, i - 1)) * (decay**i)
      for i in range(kernels.shape[0])
  ]
  return jnp.concatenate(parts, axis=-1)


def config() -> ml_collections.ConfigDict:
  """``model.sgconv``: the fields of :class:`SGConv`."""
  c = ml_collections.ConfigDict()
  # Size d of each scale's learnable kernel.
  c.kernel_dim = 64
  # Number of scales; None = as many as needed to cover l_max.
  c.n_scales = config_dict.placeholder(int)
  # Weight alpha^i of scale i (the paper's decay).
  c.decay = 0.5
  # Kernels per feature; their outputs are concatenated (channels * d_model
  # features), so channels > 1 needs model.output "glu" or "linear".
  c.channels = 1
  # True: a second kernel runs backwards in time (non-causal tasks).
  c.bidirectional = False
  # Kernel length; None means the task's maximum sequence length.
  c.l_max = config_dict.placeholder(int)
  # Activation after the convolution.
  c.activation = "gelu"
  # FFT convolution implementation: "auto" | "reference" | "xla" (it has no
  # Pallas kernel).
  c.impl = "auto"
  return c


def validate(c: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  """Checks ``model.sgconv`` (``ctx.prefix``) before anything is built."""
  f = lambda name: f"{ctx.prefix}.{name}"
  checks.check_int(f("kernel_dim"), c.kernel_dim, minimum=1)
  checks.check_int(f("n_scales"), c.n_scales, minimum=1, optional=True)
  checks.check_float(f("decay"), c.decay, low=0.0, low_open=True)
  checks.check_int(f("channels"), c.channels, minimum=1)
  if c.channels > 1 and ctx.output == "none":
    checks.fail(
        "model.output", ctx.output,
        f"cannot follow {f('channels')}={c.channels}: the mixer then returns "
        "channels * d_model features, which the output projection ('glu' or "
        "'linear') maps back to d_model")
  checks.check_bool(f("bidirectional"), c.bidirectional)
  if c.bidirectional and ctx.causal:
    checks.fail(f("bidirectional"), True, CAUSAL_TASK)
  checks.check_int(f("l_max"), c.l_max, minimum=1, optional=True)
  if (c.l_max is not None and ctx.max_length is not None
      and c.l_max < ctx.max_length):
    checks.fail(f("l_max"), c.l_max,
                f"is shorter than the task's longest input ({ctx.max_length} "
                "positions): the kernel must cover it (None = that length)")
  checks.check_choice(f("activation"), c.activation, tuple(ACTIVATIONS))
  check_impl(f("impl"), c.impl, "fftconv")


@register_mixer("sgconv", config=config, validate=validate,
                length_field="l_max")
class SGConv(nn.Module):
  """Structured Global Convolution (SGConv) sequence mixer.

  ``y = activation(K * u + D u)`` per feature, with the multiscale kernel of
  the module docstring. As in layers/s4.py (and the official ``GConv``,
  whose ``output_linear`` follows the activation), the position-wise output
  projection is the backbone's output layer, not part of this mixer.

  Paper / official symbol -> field or variable:
    H (features), official ``d_model``     d_model
    L (max length), official ``l_max``     l_max: the longest input; inputs
        with ``t < l_max`` use the kernel cut to ``t``, longer ones raise.
    d (sub-kernel size), ``kernel_dim``    kernel_dim (64)
    S (number of scales), ``n_scales``     n_scales (None: ``num_scales``)
    alpha (decay per scale)                decay (0.5; official multiplier 2)
    C (channels / "heads")                 channels (1)
    k_i (sub-kernels)                      param ``kernel [S, c', H, d]``
    D (skip)                               param ``D [C, H]``
    Z (kernel norm, fixed)                 ``constants/kernel_norm [c', H]``
  ``c' = C`` or ``2C`` when ``bidirectional``: the first ``C`` are the causal
  kernels, the last ``C`` the anti-causal ones (official
  ``rearrange(k, '(s c) h l -> s c h l', s=2)``); D is not doubled.

  Kernel norm: the official code sets ``kernel_norm = ||K_full||`` (L2 over
  the whole length-``kernel_dim * 2^(S-1)`` kernel, per channel and feature,
  before cutting to the input length) at its first forward and never updates
  it (a buffer: no gradient, kept in checkpoints); every later kernel is
  divided by that same constant. Here it is computed from the initial params
  at ``init`` and stored in the non-trainable collection ``"constants"``
  (``NORM_COLLECTION``); changing params afterwards does not change it.
  Applying the layer without that collection raises (recomputing it from
  trained params would silently change the function).

  Init (official ``GConv.__init__``): each sub-kernel ``torch.randn`` ->
  ``N(0, 1)``; ``D ~ N(0, 1)``. (The official code also gives the sub-kernels
  their own learning rate, 0.001 by default: an optimizer-group setting.)

  Output width: ``channels * d_model`` with features ordered ``(c, H)``
  (official ``'... c h l -> ... (c h) l'``); ``d_model`` for ``channels=1``.
  With ``channels > 1`` the backbone's output layer (glu/linear) maps it back
  to ``d_model``, as the official ``output_linear`` does.

  Padding: ``mask`` (True = real token) zeroes padded inputs before the
  convolution; for right-padded sequences the valid outputs then equal those
  of the unpadded sequence (causal and bidirectional, see layers/s4.py), and
  outputs at padded positions are zero.
  """
  d_model: int
  l_max: int
  kernel_dim: int = 64
  n_scales: int | None = None
  decay: float = 0.5
  channels: int = 1
  bidirectional: bool = False
  activation: str = "gelu"
  impl: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  # ---------------------------------------------------------------- checks
  def _validate(self):
    if self.l_max is None or self.l_max < 1:
      raise ValueError(f"l_max={self.l_max} must be a positive int (the "
                       "kernel length is derived from it)")
    if self.kernel_dim < 1:
      raise ValueError(f"kernel_dim={self.kernel_dim} must be >= 1")
    if self.n_scales is not None and self.n_scales < 1:
      raise ValueError(f"n_scales={self.n_scales} must be >= 1 or None")
    if not self.decay > 0:
      raise ValueError(f"decay={self.decay} must be > 0")
    if self.channels < 1:
      raise ValueError(f"channels={self.channels} must be >= 1")
    if self.activation not in ACTIVATIONS:
      raise ValueError(
          f"activation={self.activation!r} is not one of {tuple(ACTIVATIONS)}")
    if self.impl not in supported_impls("fftconv"):
      raise ValueError(
          f"impl={self.impl!r} is not one of {supported_impls('fftconv')} "
          "(the FFT convolution has no Pallas kernel)")

  @property
  def scales(self) -> int:
    """Number of scales ``S`` (``n_scales`` or derived from ``l_max``)."""
    if self.n_scales is not None:
      return self.n_scales
    return num_scales(self.l_max, self.kernel_dim)

  @property
  def kernel_length(self) -> int:
    """Length of the full kernel, ``kernel_dim * 2^(S-1)``."""
    return sum(scale_lengths(self.kernel_dim, self.scales))

  @property
  def _kernel_channels(self) -> int:
    return self.channels * (2 if self.bidirectional else 1)

  def setup(self):
    self._validate()
    c, d = self._kernel_channels, self.d_model
    self.kernel_params = self.param(
        "kernel",
        nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                     (None, None, "embed", None)),
        (self.scales, c, d, self.kernel_dim), self.param_dtype)
    self.D = self.param(
        "D", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                          (None, "embed")),
        (self.channels, d), self.param_dtype)
    # Fixed at init from the initial params (see the class docstring).
    if not (self.is_initializing() or
            self.has_variable(NORM_COLLECTION, "kernel_norm")):
      raise ValueError(
          f"SGConv needs the {NORM_COLLECTION!r} collection from init (the "
          "kernel norm, fixed at initialisation): pass it to apply along "
          "with 'params'")
    self.kernel_norm = self.variable(
        NORM_COLLECTION, "kernel_norm",
        nn.with_logical_partitioning(self._initial_norm, (None, "embed")))

  def _initial_norm(self) -> Float[Array, "c d"]:
    K = self.raw_kernel()
    return jax.lax.stop_gradient(jnp.sqrt(jnp.sum(K * K, axis=-1)))

  # --------------------------------------------------------------- kernels
  def raw_kernel(self) -> Float[Array, "c d l"]:
    """The unnormalised full-length kernel ``[c', H, kernel_length]``."""
    return sgconv_kernel(self.kernel_params.astype(jnp.float32), self.decay)

  def kernel(self, L: int | None = None) -> Float[Array, "c d L"]:
    """Normalised kernel cut to ``L`` (default: full length): ``[c', H, L]``.

    ``L`` beyond ``kernel_length`` is zero-padded (official: ``F.pad``), as
    happens when an explicit ``n_scales`` gives a kernel shorter than l_max.
    """
    K = self.raw_kernel()
    L = self.kernel_length if L is None else L
    K = K[..., :L]
    if L > K.shape[-1]:
      K = jnp.pad(K, ((0, 0), (0, 0), (0, L - K.shape[-1])))
    norm = self.kernel_norm.value.astype(jnp.float32)
    return K / norm[:, :, None]

  # ------------------------------------------------------------------ call
  def __call__(
      self,
      x: Float[Array, "b t d"],
      mask: Bool[ArrayLike, "b t"] | None = None,
      *,
      deterministic: bool = True,
  ) -> Float[Array, "b t e"]:
    """``x [b, t, H] -> y [b, t, channels * H]`` (``e = channels * H``)."""
    del deterministic  # no dropout inside the mixer
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"x must be [b, t, {self.d_model}]; got {x.shape=}")
    b, t, d = x.shape
    if t > self.l_max:
      raise ValueError(f"input length t={t} exceeds l_max={self.l_max}")
    c = self.channels
    u = x.astype(jnp.float32)
    if mask is not None:
      if mask.shape != (b, t):
        raise ValueError(f"{mask.shape=} must be {(b, t)}")
      u = jnp.where(mask[..., None], u, 0.0)

    K = self.kernel(t)  # [c', d, t]
    # D u is the lag-0 tap: fold it into the causal kernel (one FFT pass
    # fewer forward and backward), as layers/s4.py does.
    k_causal = K[:c].at[:, :, 0].add(self.D.astype(jnp.float32))
    k_reverse = K[c:].reshape(c * d, t) if self.bidirectional else None
    # Channels share the input: repeat it so that feature (i, j) of the
    # [b, t, c*d] output is channel i's kernel applied to feature j.
    u_c = jnp.tile(u, (1, 1, c)) if c > 1 else u
    y = fftconv(u_c, k_causal.reshape(c * d, t), k_reverse=k_reverse,
                impl=self.impl)
    y = ACTIVATIONS[self.activation](y)
    if mask is not None:
      y = jnp.where(mask[..., None], y, 0.0)
    return y.astype(self.dtype)
