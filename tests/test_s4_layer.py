"""S4 / S4D layer: convolution = decode, kernel vs reference, masks, grads."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import get_mixer
from layers.s4 import S4
from numerics import rel_err, rel_err_norm

D_MODEL, D_STATE, T = 4, 8, 24

CONFIGS = {
    "dplr": dict(mode="dplr", ssm_init="legs", l_max=16),
    "diag_zoh": dict(mode="diag", ssm_init="lin", discretization="zoh"),
    "diag_bilinear": dict(mode="diag", ssm_init="legs", discretization="bilinear"),
    "diag_inv": dict(mode="diag", ssm_init="inv", discretization="zoh"),
}


def _x(seed=0, b=2, t=T, d=D_MODEL):
  return jax.random.normal(jax.random.key(seed), (b, t, d), jnp.float32)


@functools.cache
def _jitted_init(layer):
  return jax.jit(layer.init)


def _init(layer, x, seed=1):
  return _jitted_init(layer)(jax.random.key(seed), x)


@functools.cache
def _jitted_apply(layer, method=None, **kw):
  return jax.jit(functools.partial(layer.apply, method=method, **kw))


def _apply(layer, *args, method=None, **kw):
  """Jitted ``layer.apply``, compiled once per (layer, method, kwargs)."""
  return _jitted_apply(layer, method, **kw)(*args)


def _layer(name, **kw):
  # Larger dt than the default so that the kernels stay far from zero over T.
  return S4(d_model=D_MODEL, d_state=D_STATE, dt_min=0.01, dt_max=0.3,
            **{**CONFIGS[name], **kw})


def test_registered():
  assert get_mixer("s4") is S4


@pytest.mark.parametrize("name,bidirectional", [
    ("dplr", False), ("dplr", True), ("diag_zoh", True), ("diag_inv", False)])
def test_output_shape_and_dtype(name, bidirectional):
  layer = _layer(name, bidirectional=bidirectional)
  x = _x()
  v = _init(layer, x)
  y = jax.jit(layer.apply)(v, x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert np.all(np.isfinite(y))
  c = v["params"]["C"].value.shape[0]
  assert c == (2 if bidirectional else 1)
  if name == "diag_inv":
    # bfloat16 compute against the float32 output of the same params (the
    # kernel runs in float32; 8-bit mantissas in and out: ~3e-3 measured).
    y16 = _apply(layer.clone(dtype=jnp.bfloat16), v, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    err = rel_err_norm(y16, y)
    assert err < 3e-2, err


@pytest.mark.parametrize("name", ["dplr", "diag_zoh", "diag_bilinear"])
def test_convolution_equals_decode(name):
  layer = _layer(name)
  x = _x(3)
  v = _init(layer, x)
  y_conv = _apply(layer, v, x)
  dec = layer.clone(decode=True)
  cache = _init(dec, x[:, :1])["cache"]
  assert cache["state"].shape == (2, D_MODEL, D_STATE // 2)
  assert cache["state"].dtype == jnp.complex64
  assert int(cache["index"]) == 0
  step = jax.jit(lambda c, xi: dec.apply({"params": v["params"], "cache": c},
                                         xi, mutable=["cache"]))
  ys = []
  for i in range(T):
    y_i, mut = step(cache, x[:, i:i + 1])
    cache = mut["cache"]
    ys.append(y_i)
  assert int(cache["index"]) == T
  assert rel_err(jnp.concatenate(ys, 1), y_conv) < 1e-4
  # Prefill 10 steps at once, then continue: same as one full run.
  cache = _init(dec, x[:, :1])["cache"]
  y_a, mut = step(cache, x[:, :10])
  y_b, _ = step(mut["cache"], x[:, 10:])
  assert rel_err(jnp.concatenate([y_a, y_b], 1), y_conv) < 1e-4


@pytest.mark.parametrize("L", [5, 16, 40])
def test_dplr_kernel_vs_reference(L):
  """Layer kernel (C~ for l_max=16) vs the explicit C Abar^l Bbar sum."""
  from kernels import dplr
  layer = _layer("dplr")
  v = _init(layer, _x())
  K = _apply(layer, v, method=S4.kernel, L=L)
  log_dt, Lambda, P, B, C = _apply(layer, v, method=S4._ssm_params)
  Abar, _ = dplr.dplr_bilinear(Lambda, P, B, log_dt)
  C_true = dplr.c_from_c_tilde(C, Abar, 16)
  K_ref = dplr.dplr_kernel_reference(Lambda, P, B, C_true, log_dt, L)
  assert K.shape == (1, D_MODEL, L)
  assert rel_err(K, K_ref) < 1e-4


def test_dplr_without_l_max_is_the_same_system():
  """l_max=None stores C itself; with the same C the kernels agree."""
  from kernels import dplr
  layer = _layer("dplr")
  v = _init(layer, _x())
  log_dt, Lambda, P, B, C = _apply(layer, v, method=S4._ssm_params)
  Abar, _ = dplr.dplr_bilinear(Lambda, P, B, log_dt)
  C_true = dplr.c_from_c_tilde(C, Abar, 16)
  params = dict(v["params"])
  params["C"] = jnp.stack([C_true.real, C_true.imag], -1)
  K = _apply(layer.clone(l_max=None), {"params": params}, method=S4.kernel,
             L=24)
  K_ref = _apply(layer, v, method=S4.kernel, L=24)
  assert rel_err(K, K_ref) < 1e-4


@pytest.mark.parametrize("name", ["dplr", "diag_zoh"])
def test_causality_and_bidirectional(name):
  x = _x(4)
  t0 = 9
  causal = _layer(name)
  bidir = _layer(name, bidirectional=True)
  v_c = _init(causal, x)
  v_b = _init(bidir, x)
  # Causal: d y[:, t0] / d x[:, s] == 0 for s > t0 (up to FFT round-off),
  # nonzero for s <= t0.
  g = np.abs(np.asarray(
      jax.jit(jax.grad(lambda x: causal.apply(v_c, x)[:, t0].sum()))(x)))
  assert np.max(g[:, t0 + 1:]) < 1e-6 * np.max(g)
  assert np.all(g[:, :t0 + 1].sum(-1) > 1e-4 * np.max(g))
  g = np.abs(np.asarray(
      jax.jit(jax.grad(lambda x: bidir.apply(v_b, x)[:, t0].sum()))(x)))
  assert np.all(g[:, t0 + 1:].sum(-1) > 1e-4 * np.max(g))
  # The bidirectional layer's forward half is the causal layer's kernel when
  # sharing its parameters, and the backward half changes the output.
  params = dict(v_b["params"])
  params["C"] = jnp.concatenate([v_c["params"]["C"].value,
                                 v_b["params"]["C"].value[1:]], axis=0)
  for k in params:
    if k != "C":
      params[k] = v_c["params"][k].value
  y_b = _apply(bidir, {"params": params}, x)
  y_c = _apply(causal, v_c, x)
  assert rel_err(y_b, y_c) > 1e-2
  params["C"] = params["C"].at[1].set(0.0)
  assert rel_err(_apply(bidir, {"params": params}, x), y_c) < 1e-5


@pytest.mark.parametrize("name", ["dplr", "diag_bilinear"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_mask_matches_unpadded(name, bidirectional):
  layer = _layer(name, bidirectional=bidirectional)
  x = _x(5, b=2, t=T)
  v = _init(layer, x)
  lengths = [T, 13]
  mask = jnp.arange(T)[None, :] < jnp.asarray(lengths)[:, None]
  garbage = jnp.where(mask[..., None], x, 100.0)
  y = _apply(layer, v, garbage, mask)
  for i, n in enumerate(lengths):
    y_ref = _apply(layer, v, x[i:i + 1, :n])
    assert rel_err(y[i:i + 1, :n], y_ref) < 1e-5
    assert np.all(np.asarray(y[i, n:]) == 0)


@pytest.mark.parametrize("name", ["dplr", "diag_zoh"])
def test_gradients_reach_all_params(name):
  layer = _layer(name, bidirectional=True)
  x = _x(6)
  v = _init(layer, x)
  ct = _x(7)
  grads = jax.jit(jax.grad(
      lambda p: jnp.sum(layer.apply({"params": p}, x) * ct)))(v["params"])
  names = {"log_dt", "A_real", "A_imag", "B", "C", "D"} | (
      {"P"} if name == "dplr" else set())
  assert set(grads) == names
  for k, g in grads.items():
    g = np.asarray(g.value)
    assert np.all(np.isfinite(g)), k
    assert np.max(np.abs(g)) > 0, k


@pytest.mark.parametrize("name", ["dplr", "diag_inv"])
def test_param_names_axes_and_init(name):
  layer = _layer(name, rank=1)
  v = _init(layer, _x())
  p = v["params"]
  d, n2 = D_MODEL, D_STATE // 2
  want = {
      "log_dt": ((d,), ("embed",)),
      "A_real": ((d, n2), ("embed", "state")),
      "A_imag": ((d, n2), ("embed", "state")),
      "B": ((d, n2, 2), ("embed", "state", None)),
      "C": ((1, d, n2, 2), (None, "embed", "state", None)),
      "D": ((d,), ("embed",)),
  }
  if name == "dplr":
    want["P"] = ((1, d, n2, 2), (None, "embed", "state", None))
  assert set(p) == set(want)
  for k, (shape, axes) in want.items():
    assert p[k].value.shape == shape, k
    assert p[k].names == axes, k
  ssm = re.compile(r"(^|/)(log_dt|A_real|A_imag|P|B)$")
  assert {k for k in p if ssm.search("s4/" + k)} == set(want) - {"C", "D"}
  log_dt = np.asarray(p["log_dt"].value)
  assert np.all(log_dt >= np.log(0.01)) and np.all(log_dt <= np.log(0.3))
  np.testing.assert_allclose(np.exp(p["A_real"].value), 0.5, rtol=1e-5)
  assert np.all(np.asarray(p["A_imag"].value) > 0)


def test_s4d_lin_init_clamps_the_imaginary_part():
  """Official ``imag_transform="none"``: A_imag = clamp(Im Lambda, min=1e-4),
  so S4D-Lin's first mode -1/2 + 0i is stored as Im 1e-4; the others are
  pi n (n = 1, ..., N/2 - 1) as the paper's init."""
  layer = S4(d_model=D_MODEL, d_state=D_STATE, mode="diag", ssm_init="lin")
  p = _init(layer, _x())["params"]
  want = np.maximum(np.pi * np.arange(D_STATE // 2), 1e-4)
  np.testing.assert_allclose(np.asarray(p["A_imag"].value),
                             np.broadcast_to(want, (D_MODEL, D_STATE // 2)),
                             rtol=1e-6)
  np.testing.assert_allclose(np.exp(p["A_real"].value), 0.5, rtol=1e-6)


def test_invalid_configs_raise():
  x = _x()
  with pytest.raises(ValueError, match="bidirectional"):
    _init(_layer("diag_zoh", bidirectional=True, decode=True), x[:, :1])
  with pytest.raises(ValueError, match="needs ssm_init='legs'"):
    _init(S4(d_model=4, d_state=8, mode="dplr", ssm_init="lin"), x)
  with pytest.raises(ValueError, match="mode="):
    _init(S4(d_model=4, d_state=8, mode="dense"), x)
  with pytest.raises(ValueError, match="discretization="):
    _init(_layer("diag_zoh", discretization="euler"), x)


@pytest.mark.parametrize("name,bidirectional", [
    ("dplr", True), ("diag_zoh", False), ("diag_bilinear", True)])
def test_fast_layer_matches_reference_layer(name, bidirectional):
  """impl='auto' (Cauchy/Vandermonde + FFT) vs impl='reference' (explicit
  powers / dense recurrence + direct-sum convolution): values and grads."""
  fast = _layer(name, bidirectional=bidirectional)
  ref = fast.clone(impl="reference")
  x = _x(8)
  ct = _x(9)
  v = _init(fast, x)

  def loss(layer):
    return jax.jit(jax.value_and_grad(
        lambda p, x: jnp.sum(layer.apply({"params": p}, x) * ct),
        argnums=(0, 1)))

  (y_f, (gp_f, gx_f)), (y_r, (gp_r, gx_r)) = (
      loss(fast)(v["params"], x), loss(ref)(v["params"], x))
  assert rel_err(_apply(fast, v, x), _apply(ref, v, x)) < 1e-5
  assert abs(float(y_f - y_r)) <= 1e-5 * abs(float(y_r)) + 1e-5
  assert rel_err(gx_f, gx_r) < 1e-4
  for k in gp_r:
    assert rel_err(gp_f[k].value, gp_r[k].value) < 1e-4, k
