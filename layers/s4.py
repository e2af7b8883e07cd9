"""S4 and S4D sequence mixers (Flax Linen).

S4: Gu, Goel, Re, "Efficiently Modeling Long Sequences with Structured State
Spaces" (ICLR 2022). S4D: Gu, Gupta, Goel, Re, "On the Parameterization and
Initialization of Diagonal State Space Models" (NeurIPS 2022). Initialisation
conventions follow the official code (github.com/state-spaces/s4,
``models/s4/s4.py``: ``SSMKernelDiag``, ``SSMKernelDPLR``, ``FFTConv``).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from jaxtyping import Array, ArrayLike, Bool, Complex, Float
from ml_collections import config_dict

from configs import checks
from kernels import Impl, dplr, hippo
from kernels.fftconv import fftconv
from kernels.vandermonde import DISCRETIZATIONS, discretize_diag, s4d_kernel
from layers.activations import gelu_exact
from layers.registry import (CAUSAL_TASK, MixerContext, check_impl,
                             check_module_impl, register_mixer)

MODES = ("dplr", "diag")
INITS = ("legs", "lin", "inv")
ACTIVATIONS = {
    # torch.nn.GELU (the official default) is the exact erf form.
    "gelu": gelu_exact,
    "silu": jax.nn.silu,
    "none": lambda x: x,
}


# The S4 reference training code gives the SSM parameters (dt, A, B, P) their
# own learning rate and no weight decay (state-spaces/s4,
# src/models/sequence/kernels/kernel.py `register`, and
# configs/model/layer/s4.yaml `lr: {dt, A, B}: 0.001`, `wd: 0`).
SSM_PARAMS_PATTERN = r"(^|/)mixer/(log_dt|A_real|A_imag|P|B)$"


def config() -> ml_collections.ConfigDict:
  """``model.s4``: the fields of :class:`S4`."""
  c = ml_collections.ConfigDict()
  # State size N per channel (even: the states come in conjugate pairs).
  c.d_state = 64
  # "dplr": S4 diagonal plus low rank (HiPPO-LegS NPLR); "diag": S4D.
  c.mode = "dplr"
  # State matrix init: "legs" (HiPPO-LegS; required by dplr), "lin", "inv".
  c.ssm_init = "legs"
  # True: a second kernel runs backwards in time (non-causal tasks).
  c.bidirectional = False
  # Diagonal (S4D) discretisation: "zoh" or "bilinear"; dplr is always bilinear.
  c.discretization = "zoh"
  # Range of the log-uniform initial step size dt.
  c.dt_min = 1e-3
  c.dt_max = 1e-1
  # Kernel length; None means the task's maximum sequence length.
  c.l_max = config_dict.placeholder(int)
  # Rank of the low-rank correction P (dplr).
  c.rank = 1
  # Activation after the SSM convolution: "gelu", "silu", "none".
  c.activation = "gelu"
  # Kernel implementation: "auto" | "reference" | "xla" | "pallas" |
  # "pallas_interpret" (kernels.Impl).
  c.impl = "auto"
  # Optimizer groups (layers/registry.py): dt, A, B and P at learning rate
  # 1e-3 without weight decay, as the S4 reference code.
  c.optim_groups = ml_collections.ConfigDict()
  c.optim_groups.ssm = ml_collections.ConfigDict(dict(
      pattern=SSM_PARAMS_PATTERN,
      learning_rate=config_dict.FieldReference(1e-3, field_type=float),
      weight_decay=config_dict.FieldReference(0.0, field_type=float)))
  return c


def validate(c: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  """Checks ``model.s4`` (``ctx.prefix``) before anything is built."""
  f = lambda name: f"{ctx.prefix}.{name}"
  checks.check_int(f("d_state"), c.d_state, minimum=2)
  if c.d_state % 2:
    checks.fail(f("d_state"), c.d_state,
                "must be even (the state comes in complex-conjugate pairs)")
  checks.check_choice(f("mode"), c.mode, MODES)
  checks.check_choice(f("ssm_init"), c.ssm_init, INITS)
  if c.mode == "dplr" and c.ssm_init != "legs":
    checks.fail(f("ssm_init"), c.ssm_init,
                f"is not supported with {f('mode')}='dplr' (the normal plus "
                "low-rank form exists for HiPPO-LegS only; use ssm_init='legs' "
                "or mode='diag')")
  checks.check_choice(f("discretization"), c.discretization, DISCRETIZATIONS)
  checks.check_bool(f("bidirectional"), c.bidirectional)
  if c.bidirectional and ctx.causal:
    checks.fail(f("bidirectional"), True, CAUSAL_TASK)
  checks.check_float(f("dt_min"), c.dt_min, low=0.0, low_open=True)
  checks.check_float(f("dt_max"), c.dt_max, low=0.0, low_open=True)
  if c.dt_min > c.dt_max:
    raise ValueError(
        f"{f('dt_min')}={c.dt_min!r} must be <= {f('dt_max')}={c.dt_max!r}")
  checks.check_int(f("l_max"), c.l_max, minimum=1, optional=True)
  checks.check_int(f("rank"), c.rank, minimum=1)
  checks.check_choice(f("activation"), c.activation, tuple(ACTIVATIONS))
  check_impl(f("impl"), c.impl,
             "dplr_kernel" if c.mode == "dplr" else "s4d_kernel")


def _as_complex(x: Float[Array, "... 2"]) -> Complex[Array, "..."]:
  """``[..., 2]`` (real, imag) parameter storage -> complex64."""
  return jax.lax.complex(x[..., 0].astype(jnp.float32),
                         x[..., 1].astype(jnp.float32))


def _as_real(z: np.ndarray | jax.Array) -> jax.Array:
  return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-1)


@register_mixer("s4", config=config, validate=validate, length_field="l_max")
class S4(nn.Module):
  """S4 (DPLR) / S4D (diagonal) state-space sequence mixer.

  ``y = activation(K * u + D u)`` with the SSM convolution kernel
  ``K_l = C Abar^l Bbar`` of the discretised system ``x' = A x + B u, y = C x``
  (input/output linear layers are the backbone's job).

  Paper symbols -> fields/params (``N = d_state``, ``n2 = N/2`` complex modes
  are stored; their conjugates are implicit, hence ``2 Re`` in the kernels):
    H (channels)          d_model
    N (state size)        d_state
    L (kernel length)     l_max (dplr: the length the C~ parameter is for)
    Delta (step size)     exp(log_dt)                      ``log_dt [H]``
    Lambda (diag of A)    -exp(A_real) + i A_imag          ``A_real, A_imag [H, n2]``
    P (low rank, A = Lambda - P P^*)                       ``P [rank, H, n2, 2]``
    B                                                      ``B [H, n2, 2]``
    C (dplr: C~ = C (I - Abar^l_max), see below)           ``C [c, H, n2, 2]``
    D (skip)                                               ``D [H]``
  Complex parameters are stored as ``[..., 2]`` (real, imag). ``c = 2`` when
  ``bidirectional`` (forward and backward kernels share A, B, P, dt; official
  ``channels *= 2``), else 1. ``Lambda`` keeps the ``Im >= 0`` half of each
  conjugate pair (kernels.hippo convention); A_imag stores ``Im(Lambda)``.

  Modes:
    "dplr": S4. A = Lambda - P P^* from the HiPPO-LegS NPLR form, bilinear
      discretisation, kernel by Cauchy + Woodbury (kernels.dplr). When
      ``l_max`` is set, ``C`` holds ``C~`` for length ``l_max`` (as the
      official code after its first forward); inputs with ``t <= l_max`` use
      the ``l_max`` kernel cut to ``t`` (exact: the first ``t`` taps of the
      length-``l_max`` kernel are the system's), longer inputs convert ``C~``
      to length ``t`` first. With ``l_max=None``, ``C`` holds ``C`` itself.
    "diag": S4D with ``ssm_init`` lin / inv / legs, ``discretization`` zoh or
      bilinear, kernel by a Vandermonde product (kernels.vandermonde).

  Init (official): ``log_dt ~ U[log dt_min, log dt_max]``; ``C`` complex
  standard normal (dplr: then mapped to ``C~``); ``D ~ N(0, 1)``; Lambda, B
  (and P) from the init (lin/inv: B = 1).

  Padding: ``mask`` (True = real token) zeroes padded inputs before the
  convolution. For right-padded sequences the valid outputs are then exactly
  those of the unpadded sequence: the causal part at a valid position only
  reads earlier (valid) positions, and the anti-causal part of the
  bidirectional kernel reads the padded tail, which now contributes zero, just
  as if the sequence ended there. (Causal mixers are also exact for
  left-padding, by time invariance.) Outputs at padded positions are zero.
  In decode, a masked step feeds u = 0 (the state still decays), as in the
  convolution form.

  Decode (``decode=True``): the ``"cache"`` collection holds the complex state
  ``state [b, H, n2]`` (dplr: the stored half of the conjugate-symmetric state)
  and ``index`` (int32, steps taken; dplr also caches the dense discrete
  system, computed when ``index == 0``, so params must not change within a
  sequence). Each call consumes ``x [b, t, H]``
  (usually t = 1) with the recurrence ``x_k = Abar x_{k-1} + Bbar u_k,
  y_k = 2 Re(C x_k) + D u_k``, equal to the convolution form.
  """
  d_model: int
  d_state: int = 64
  mode: str = "dplr"
  ssm_init: str = "legs"
  l_max: int | None = None
  bidirectional: bool = False
  discretization: str = "zoh"
  dt_min: float = 1e-3
  dt_max: float = 1e-1
  rank: int = 1
  activation: str = "gelu"
  impl: str = "auto"
  decode: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  # ---------------------------------------------------------------- checks
  def _validate(self):
    if self.mode not in MODES:
      raise ValueError(f"mode={self.mode!r} is not one of {MODES}")
    if self.ssm_init not in INITS:
      raise ValueError(f"ssm_init={self.ssm_init!r} is not one of {INITS}")
    if self.mode == "dplr" and self.ssm_init != "legs":
      raise ValueError(
          f"mode='dplr' needs ssm_init='legs'; got ssm_init={self.ssm_init!r}")
    if self.mode == "diag" and self.discretization not in DISCRETIZATIONS:
      raise ValueError(
          f"discretization={self.discretization!r} is not one of "
          f"{DISCRETIZATIONS}")
    if self.d_state < 2 or self.d_state % 2:
      raise ValueError(f"d_state={self.d_state} must be a positive even number")
    if self.rank < 1:
      raise ValueError(f"rank={self.rank} must be >= 1")
    if self.activation not in ACTIVATIONS:
      raise ValueError(
          f"activation={self.activation!r} is not one of {tuple(ACTIVATIONS)}")
    if not 0 < self.dt_min <= self.dt_max:
      raise ValueError(f"need 0 < dt_min <= dt_max; got {self.dt_min=} "
                       f"{self.dt_max=}")
    check_module_impl(self.impl,
                      "dplr_kernel" if self.mode == "dplr" else "s4d_kernel")
    if self.l_max is not None and self.l_max < 1:
      raise ValueError(f"l_max={self.l_max} must be positive or None")
    if self.decode and self.bidirectional:
      raise ValueError("decode=True is impossible with bidirectional=True: "
                       "the backward kernel needs future inputs")

  # ------------------------------------------------------------ parameters
  def _init_lambda_b(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(Lambda [n2], B [n2], P [rank, n2] or None) from the init, complex."""
    if self.mode == "dplr":
      nplr = hippo.legs_nplr(self.d_state, self.rank, dtype=np.complex128)
      return nplr.Lambda, nplr.B, nplr.P
    Lambda, B = hippo.s4d_init(self.ssm_init, self.d_state, dtype=np.complex128)
    return Lambda, B, None

  def _param(self, name, init_fn, shape, axes):
    return self.param(name, nn.with_logical_partitioning(init_fn, axes), shape,
                      self.param_dtype)

  def setup(self):
    self._validate()
    d, n2 = self.d_model, self.d_state // 2
    c = 2 if self.bidirectional else 1
    Lambda0, B0, P0 = self._init_lambda_b()

    def const(value):
      def init_fn(key, shape, dtype):
        del key
        return jnp.broadcast_to(jnp.asarray(value), shape).astype(dtype)
      return init_fn

    def log_dt_init(key, shape, dtype):
      return jax.random.uniform(key, shape, dtype, math.log(self.dt_min),
                                math.log(self.dt_max))

    self.log_dt = self._param("log_dt", log_dt_init, (d,), ("embed",))
    # Official real_transform="exp": A_real = log(clamp(-Re Lambda, 1e-4)).
    self.A_real = self._param("A_real",
                              const(np.log(np.maximum(-Lambda0.real, 1e-4))),
                              (d, n2), ("embed", "state"))
    # Official imag_transform="none": A_imag = clamp(Im Lambda, min=1e-4)
    # (S4D-Lin's first mode, -1/2 + 0i, starts at Im 1e-4).
    self.A_imag = self._param("A_imag",
                              const(np.maximum(Lambda0.imag, 1e-4)), (d, n2),
                              ("embed", "state"))
    self.B = self._param("B", const(np.stack([B0.real, B0.imag], -1)),
                         (d, n2, 2), ("embed", "state", None))
    if self.mode == "dplr":
      P0 = np.stack([P0.real, P0.imag], -1)[:, None]  # [rank, 1, n2, 2]
      self.P = self._param("P", const(P0), (self.rank, d, n2, 2),
                           (None, "embed", "state", None))

    def c_init(key, shape, dtype):
      C = jax.random.normal(key, shape[:-1], jnp.complex64)  # E|C|^2 = 1
      if self.mode == "dplr" and self.l_max is not None:
        log_dt, Lambda, P, B, _ = self._ssm_params(with_c=False)
        C = self._dplr_c_tilde(C, log_dt, Lambda, P, B, self.l_max)
      return _as_real(C).astype(dtype)

    self.C = self._param("C", c_init, (c, d, n2, 2),
                         (None, "embed", "state", None))
    self.D = self._param("D", nn.initializers.normal(1.0), (d,), ("embed",))

  def _ssm_params(self, with_c: bool = True):
    """(log_dt [H], Lambda [H, n2], P [r, H, n2] | None, B [H, n2], C [c, H, n2])."""
    Lambda = jax.lax.complex(-jnp.exp(self.A_real.astype(jnp.float32)),
                             self.A_imag.astype(jnp.float32))
    P = _as_complex(self.P) if self.mode == "dplr" else None
    C = _as_complex(self.C) if with_c else None
    return (self.log_dt.astype(jnp.float32), Lambda, P, _as_complex(self.B),
            C)

  # ------------------------------------------------------------- kernels
  @property
  def _conv_impl(self) -> Impl:
    # ``impl`` names the SSM kernel's implementation (Cauchy or Vandermonde);
    # the FFT convolution has no Pallas form, so it runs its XLA form unless
    # the reference is asked for.
    impl = Impl(self.impl)
    return Impl.REFERENCE if impl is Impl.REFERENCE else Impl.XLA

  def _dplr_c_tilde(self, C, log_dt, Lambda, P, B, length):
    """True C [c, H, n2] -> C~ = C (I - Abar^length)."""
    Abar, _ = dplr.dplr_bilinear(Lambda, P, B, log_dt)
    return dplr.c_tilde_from_c(C, Abar, length).astype(C.dtype)

  def kernel(self, L: int, params=None) -> Float[Array, "c d L"]:
    """SSM convolution kernel(s) of length ``L``: ``[c, H, L]``."""
    log_dt, Lambda, P, B, C = params if params is not None else (
        self._ssm_params())
    if self.mode == "diag":
      c = C.shape[0]
      tile = lambda x: jnp.concatenate([x] * c, axis=0)
      K = s4d_kernel(tile(Lambda), tile(B), C.reshape(-1, C.shape[-1]),
                     tile(log_dt), L, discretization=self.discretization,
                     impl=self.impl)
      return K.reshape(c, self.d_model, L)
    if self.l_max is None:  # C is the true C.
      C_tilde, L_k = self._dplr_c_tilde(C, log_dt, Lambda, P, B, L), L
    elif L > self.l_max:
      C_tilde = dplr.c_tilde_for_length(C, Lambda, P, log_dt, self.l_max, L)
      L_k = L
    else:  # The first L taps of the l_max kernel are exact.
      C_tilde, L_k = C, self.l_max
    K = dplr.dplr_kernel(Lambda, P, B, C_tilde, log_dt, L_k, impl=self.impl)
    return K[..., :L]

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
    params = self._ssm_params()
    D = self.D.astype(jnp.float32)
    u = x.astype(jnp.float32)
    if mask is not None:
      if mask.shape != (b, t):
        raise ValueError(f"{mask.shape=} must be {(b, t)}")
      u = jnp.where(mask[..., None], u, 0.0)

    if self.decode:
      y = self._decode(u, params) + D[None, None, :] * u
    else:
      K = self.kernel(t, params)
      # D u is the lag-0 tap of the convolution: folding it into the kernel
      # saves a full pass over [b, t, d] forward and backward.
      k_causal = K[0].at[:, 0].add(D)
      y = fftconv(u, k_causal, k_reverse=K[1] if self.bidirectional else None,
                  impl=self._conv_impl)
    y = ACTIVATIONS[self.activation](y)
    if mask is not None:
      y = jnp.where(mask[..., None], y, 0.0)
    return y.astype(self.dtype)

  # --------------------------------------------------------------- decode
  def _discrete(self, params):
    """Discrete (Abar, Bbar, C) for stepping; C is the true C (not C~)."""
    log_dt, Lambda, P, B, C = params
    C = C[0]
    if self.mode == "diag":
      Abar, Bbar, _ = discretize_diag(Lambda, B, log_dt,
                                      discretization=self.discretization)
      return Abar, Bbar, C
    # Full complex bilinear system on [x, conj(x)]; only the stored half's
    # rows are needed since the other half is its conjugate.
    Abar, Bbar = dplr.dplr_bilinear(Lambda, P, B, log_dt)
    if self.l_max is not None:
      C = dplr.c_from_c_tilde(C, Abar, self.l_max)
    n2 = Lambda.shape[-1]
    return Abar[:, :n2, :], Bbar[:, :n2], C

  def _decode(self, u: Float[Array, "b t d"], params) -> Float[Array, "b t d"]:
    b, t, d = u.shape
    n2 = self.d_state // 2
    is_initialized = self.has_variable("cache", "state")
    state = self.variable("cache", "state", jnp.zeros, (b, d, n2),
                          jnp.complex64)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    if state.value.shape != (b, d, n2):
      raise ValueError(f"cache state has shape {state.value.shape}; this call "
                       f"needs {(b, d, n2)}")
    if self.mode == "dplr":
      # The dense discretisation (solves, and Abar^l_max to recover C from
      # C~) is costly: compute it at the first step of a sequence (index 0)
      # and reuse it from the cache for the following steps.
      N = self.d_state
      discrete = self.variable(
          "cache", "discrete", lambda: (
              jnp.zeros((d, n2, N), jnp.complex64),
              jnp.zeros((d, n2), jnp.complex64),
              jnp.zeros((d, n2), jnp.complex64)))
      Abar, Bbar, C = jax.lax.cond(index.value == 0,
                                   lambda: self._discrete(params),
                                   lambda: discrete.value)
      if is_initialized:
        discrete.value = (Abar, Bbar, C)
    else:
      Abar, Bbar, C = self._discrete(params)

    if self.mode == "diag":
      def step(x, u_k):  # x [b, d, n2], u_k [b, d]
        x = Abar[None] * x + Bbar[None] * u_k[..., None]
        return x, 2 * jnp.sum(C[None] * x, axis=-1).real
    else:
      # Dense DPLR step on the full conjugate-symmetric state [x, conj(x)].
      def step(x, u_k):
        x_full = jnp.concatenate([x, jnp.conj(x)], axis=-1)
        x = jnp.einsum("dmn,bdn->bdm", Abar, x_full,
                       precision=jax.lax.Precision.HIGHEST)
        x = x + Bbar[None] * u_k[..., None]
        return x, 2 * jnp.sum(C[None] * x, axis=-1).real

    x_last, y = jax.lax.scan(step, state.value, jnp.swapaxes(u, 0, 1))
    if is_initialized:
      state.value = x_last
      index.value = index.value + t
    return jnp.swapaxes(y, 0, 1)
