"""Mamba-2 layer: full pass = decode = prefill + decode (with every
mitigation), chunked = reference, masks, init, state-norm sowing, grads."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers import mamba2
from kernels import ssd as ssd_ops
from kernels import ssd_common
from layers.mamba2 import Mamba2
from layers.registry import get_mixer
from numerics import assert_close, rel_err

D_MODEL, HEAD_DIM, D_STATE, CHUNK, T = 16, 8, 8, 8, 20

CONFIGS = {
    "plain": dict(),
    "groups": dict(n_groups=2),
    "scaled": dict(decay_scale=2.0, insert_scale=0.5),
    "window1": dict(window=1),
    "window3": dict(window=3),
    "window_k_chunk_m": dict(window=CHUNK + 3, n_groups=2),
    "state_norm": dict(state_norm=0.05),
}


def _x(seed=0, b=2, t=T, d=D_MODEL):
  return jax.random.normal(jax.random.key(seed), (b, t, d), jnp.float32)


def _layer(**kw):
  # Larger dt than the default so that the state carries over many tokens and
  # the mitigations visibly change it.
  kw = {**dict(d_model=D_MODEL, head_dim=HEAD_DIM, d_state=D_STATE,
               chunk_size=CHUNK, dt_min=0.05, dt_max=0.5, a_init_max=2.0),
        **kw}
  return Mamba2(**kw)


@functools.cache
def _jitted_init(layer):
  return jax.jit(layer.init)


def _init(layer, x, seed=1):
  return _jitted_init(layer)(jax.random.key(seed), x)


@functools.cache
def _jitted_apply(layer, mutable=False):
  return jax.jit(functools.partial(layer.apply, mutable=mutable))


def _apply(layer, variables, *args, mutable=False):
  return _jitted_apply(layer, mutable)(variables, *args)


def _params(layer):
  """Parameters for ``layer``: they depend on its shapes only, so every
  mitigation / impl variant shares one (compiled once) init."""
  base = _layer(n_groups=layer.n_groups, dtype=jnp.float32)
  return _init(base, _x())["params"]


def _empty_cache(dec, x):
  """The cache ``dec.init`` creates (all zeros), without compiling init."""
  shapes = jax.eval_shape(dec.init, jax.random.key(0), x)["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _decode_steps(layer, params, x, pieces):
  """Runs ``x`` through ``layer.clone(decode=True)`` in consecutive pieces of
  the given lengths; returns (outputs, final cache)."""
  dec = layer.clone(decode=True)
  cache = _empty_cache(dec, x[:, :1])
  ys, start = [], 0
  for n in pieces:
    y, mut = _apply(dec, {"params": params, "cache": cache},
                    x[:, start:start + n], mutable=("cache",))
    cache = mut["cache"]
    ys.append(y)
    start += n
  assert start == x.shape[1]
  return jnp.concatenate(ys, axis=1), cache


def test_registered():
  assert get_mixer("mamba2") is Mamba2


def test_param_names_axes_and_init():
  layer = Mamba2(d_model=64, head_dim=4, d_state=16, n_groups=2)
  p = _init(layer, _x(d=64))["params"]
  e, h, gn = 128, 32, 2 * 16
  want = {
      "in_proj/kernel": ((64, 2 * e + 2 * gn + h), ("embed", "mlp")),
      "conv1d/kernel": ((4, e + 2 * gn), (None, "mlp")),
      "conv1d/bias": ((e + 2 * gn,), ("mlp",)),
      "dt_bias": ((h,), ("heads",)),
      "A_log": ((h,), ("heads",)),
      "D": ((h,), ("heads",)),
      "norm/scale": ((e,), ("mlp",)),
      "out_proj/kernel": ((e, 64), ("mlp", "embed")),
  }
  flat = {"/".join(k): v for k, v in
          jax.tree_util.tree_flatten_with_path(
              p, is_leaf=lambda v: hasattr(v, "names"))[0]
          for k in [tuple(getattr(q, "key", q) for q in k)]}
  assert set(flat) == set(want)
  for k, (shape, axes) in want.items():
    assert flat[k].value.shape == shape, k
    assert flat[k].names == axes, k
  no_decay = re.compile(mamba2.config().optim_groups.ssm.pattern)
  assert {k for k in flat if no_decay.search("block_0/mixer/" + k)} == {
      "A_log", "D", "dt_bias"}
  # dt = softplus(dt_bias) log-uniform in [dt_min, dt_max] = [1e-3, 1e-1].
  dt = np.asarray(jax.nn.softplus(flat["dt_bias"].value))
  assert np.all(dt >= 1e-3 * (1 - 1e-5)) and np.all(dt <= 1e-1 * (1 + 1e-5))
  u = (np.log(dt) - np.log(1e-3)) / (np.log(1e-1) - np.log(1e-3))
  assert 0.3 < u.mean() < 0.7 and u.min() < 0.2 and u.max() > 0.8
  # A = exp(A_log) uniform in [1, 16].
  A = np.exp(np.asarray(flat["A_log"].value))
  assert np.all(A >= 1 - 1e-5) and np.all(A <= 16 + 1e-4)
  assert 5.5 < A.mean() < 11.5
  np.testing.assert_array_equal(flat["D"].value, 1.0)
  np.testing.assert_array_equal(flat["norm/scale"].value, 1.0)
  # torch default Linear init: U(+-1/sqrt(fan_in)).
  w = np.asarray(flat["in_proj/kernel"].value)
  assert np.max(np.abs(w)) <= 1 / 8
  assert abs(w.std() * np.sqrt(3 * 64) - 1) < 0.05
  wc = np.asarray(flat["conv1d/kernel"].value)
  assert np.max(np.abs(wc)) <= 0.5 and wc.std() > 0.2


def test_dt_init_floor():
  layer = Mamba2(d_model=16, head_dim=4, d_state=4, dt_min=1e-6, dt_max=1e-5,
                 dt_init_floor=1e-4)
  # Only the per-head parameters (created in setup): no forward to compile.
  p = layer.init(jax.random.key(0), method=lambda m: m.dt_bias)["params"]
  dt = jax.nn.softplus(p["dt_bias"].value)
  np.testing.assert_allclose(dt, 1e-4, rtol=1e-3)


def test_invalid_configs_raise():
  x = _x()
  for kw, match in [
      (dict(head_dim=5), "head_dim=5"),
      (dict(n_groups=3), "n_groups=3"),
      (dict(decay_scale=0.5), "decay_scale"),
      (dict(insert_scale=0.0), "insert_scale"),
      (dict(insert_scale=1.5), "insert_scale"),
      (dict(state_norm=0.0), "state_norm"),
      (dict(window=0), "window"),
      (dict(window=2.5), "window"),
      (dict(window=4, state_norm=1.0), "window=4 and state_norm"),
      (dict(impl="cuda"), "impl="),
  ]:
    with pytest.raises(ValueError, match=match):
      _layer(**kw).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="x must be"):
    _layer().init(jax.random.key(0), x[..., :4])


def test_init_creates_an_empty_cache():
  """The cache layout, all zeros after init (what ``_empty_cache`` builds)."""
  r = 3
  dec = _layer(window=r, n_groups=2, decode=True)
  cache = _init(dec, _x()[:, :1])["cache"]
  e, h, gn = 2 * D_MODEL, 2 * D_MODEL // HEAD_DIM, 2 * D_STATE
  want = {
      "conv_state": ((2, 3, e + 2 * gn), jnp.float32),
      "ssm_state": ((2, h, HEAD_DIM, D_STATE), jnp.float32),
      "lag_state": ((2, h, HEAD_DIM, D_STATE), jnp.float32),
      "win_x": ((2, r, h, HEAD_DIM), jnp.float32),
      "win_B": ((2, r, 2, D_STATE), jnp.float32),
      "win_log_decay": ((2, r, h), jnp.float32),
      "index": ((), jnp.int32),
  }
  assert set(cache) == set(want)
  for k, (shape, dtype) in want.items():
    assert cache[k].shape == shape and cache[k].dtype == dtype, k
    assert not np.any(np.asarray(cache[k])), k


@pytest.mark.parametrize("name,impl", [
    ("plain", "auto"), ("plain", "reference"), ("groups", "auto"),
    ("scaled", "auto"), ("window1", "auto"), ("window3", "auto"),
    ("window_k_chunk_m", "auto"), ("state_norm", "reference")])
def test_decode_equals_full_pass(name, impl):
  """Token-by-token decode, steps then a block, and a prefill (chunked on an
  empty cache) then steps, all equal one full pass."""
  layer = _layer(impl=impl, **CONFIGS[name])
  x = _x(3)
  params = _params(layer)
  y = _apply(layer, {"params": params}, x)
  half = T // 2
  y_steps, cache = _decode_steps(layer, params, x, [1] * half + [half])
  assert int(cache["index"]) == T
  assert rel_err(y_steps, y) < 2e-5
  y_pre, cache = _decode_steps(layer, params, x, [half] + [1] * half)
  assert rel_err(y_pre, y) < 2e-5
  assert int(cache["index"]) == T
  if name == "plain":
    assert cache["conv_state"].shape == (2, 3, 2 * D_MODEL + 2 * D_STATE)
    assert cache["ssm_state"].shape == (2, 4, HEAD_DIM, D_STATE)
  if "window" in name:
    r = CONFIGS[name]["window"]
    assert cache["win_x"].shape == (2, r, 4, HEAD_DIM)
    assert cache["win_log_decay"].shape == (2, r, 4)


@pytest.mark.parametrize("name", ["plain", "window_k_chunk_m"])
def test_chunked_layer_matches_reference_layer(name):
  """impl='auto' (chunked SSD) vs impl='reference' (sequential): values and
  gradients of a random cotangent wrt the parameters and the input; the
  length is not a multiple of the chunk size."""
  fast = _layer(**CONFIGS[name])
  ref = fast.clone(impl="reference")
  x = _x(8)
  ct = _x(9)
  params = _params(fast)

  def loss(layer):
    return jax.jit(jax.value_and_grad(
        lambda p, x: jnp.sum(layer.apply({"params": p}, x) * ct),
        argnums=(0, 1)))

  (l_f, (gp_f, gx_f)), (l_r, (gp_r, gx_r)) = (loss(fast)(params, x),
                                              loss(ref)(params, x))
  assert rel_err(_apply(fast, {"params": params}, x),
              _apply(ref, {"params": params}, x)) < 1e-5
  assert abs(float(l_f - l_r)) <= 1e-5 * abs(float(l_r)) + 1e-5
  assert rel_err(gx_f, gx_r) < 1e-4
  for (path, g_f), g_r in zip(jax.tree_util.tree_leaves_with_path(gp_f),
                              jax.tree_util.tree_leaves(gp_r)):
    assert rel_err(g_f, g_r) < 1e-4, path


def test_decay_scale_is_a_scaled_A():
  """decay_scale lambda == the same layer with A -> lambda A."""
  layer = _layer(impl="reference")
  x = _x(4)
  params = _params(layer)
  lam = 3.0
  scaled = dict(params)
  scaled["A_log"] = params["A_log"].replace_boxed(
      params["A_log"].value + np.log(lam))
  y_scaled = _apply(layer, {"params": scaled}, x)
  y = _apply(layer.clone(decay_scale=lam), {"params": params}, x)
  assert rel_err(y, y_scaled) < 1e-5
  assert rel_err(y, _apply(layer, {"params": params}, x)) > 1e-3


def _state_norms(layer, params, x, mask=None):
  _, mut = _apply(layer, {"params": params}, x, mask,
                  mutable=("intermediates",))
  (norms,) = mut["intermediates"]["state_norm"]
  return np.asarray(norms)


def test_sown_state_norms():
  """[b, n_chunks, h] Frobenius norms of the chunk-end states; the last one is
  the final state that decode leaves in its cache; insert_scale gamma scales
  every state by gamma (the recurrence is linear in B)."""
  layer = _layer(impl="reference")
  x = _x(5)
  params = _params(layer)
  norms = _state_norms(layer, params, x)
  assert norms.shape == (2, -(-T // CHUNK), 4)
  dec = layer.clone(decode=True)
  _, mut = _apply(dec, {"params": params, "cache": _empty_cache(dec, x)}, x,
                  mutable=("cache", "intermediates"))
  final = np.sqrt(np.sum(np.asarray(mut["cache"]["ssm_state"]) ** 2,
                         axis=(-2, -1)))
  np.testing.assert_allclose(norms[:, -1], final, rtol=1e-5)
  # Decode sows the norms of the state it leaves, [b, 1, h].
  (dec_norms,) = mut["intermediates"]["state_norm"]
  np.testing.assert_allclose(dec_norms[:, 0], final, rtol=1e-6)
  gamma = 0.25
  norms_g = _state_norms(layer.clone(insert_scale=gamma), params, x)
  np.testing.assert_allclose(norms_g, gamma * norms, rtol=1e-5)
  # Without a mutable "intermediates" nothing is sown.
  _, mut = _apply(layer, {"params": params}, x, mutable=("cache",))
  assert "intermediates" not in mut


def test_state_norm_bounds_the_state():
  """state_norm runs the sequential form whatever impl says."""
  layer = _layer(impl="auto")
  x = 3 * _x(6)
  params = _params(layer)
  plain = _state_norms(layer, params, x)
  tau = 0.5 * float(plain.max())
  clipped = _state_norms(layer.clone(state_norm=tau), params, x)
  assert clipped.max() <= tau * (1 + 1e-5)
  assert rel_err(_apply(layer.clone(state_norm=tau), {"params": params}, x),
              _apply(layer, {"params": params}, x)) > 1e-4
  # A threshold never reached changes nothing.
  huge = layer.clone(state_norm=1e6)
  assert rel_err(_apply(huge, {"params": params}, x),
              _apply(layer, {"params": params}, x)) < 1e-5


def test_window_limits_the_receptive_field():
  """With window r, output s depends on inputs s - r - d_conv + 2 .. s only
  (r tokens of SSM, d_conv - 1 more through the causal conv); a window >= t
  is the plain layer."""
  r, s = 5, 17
  layer = _layer(window=r)
  x = _x(7)
  params = _params(layer)
  g = np.abs(np.asarray(jax.jit(jax.grad(
      lambda x: layer.apply({"params": params}, x)[:, s].sum()))(x)))
  g = g.sum(-1)  # [b, t]
  first = s - r - 4 + 2
  assert np.max(g[:, :first]) < 1e-5 * np.max(g)
  assert np.all(g[:, first] > 1e-4 * np.max(g))
  assert np.max(g[:, s + 1:]) == 0
  plain = _layer()
  y = _apply(plain, {"params": params}, x)
  assert rel_err(_apply(layer.clone(window=T), {"params": params}, x), y) < 1e-5
  assert rel_err(_apply(layer, {"params": params}, x), y) > 1e-3


@pytest.mark.parametrize("name", ["plain", "window3"])
def test_padding_mask_matches_unpadded(name):
  layer = _layer(**CONFIGS[name])
  x = _x(10)
  params = _params(layer)
  lengths = [T, 13]
  right = jnp.arange(T)[None, :] < jnp.asarray(lengths)[:, None]
  garbage = jnp.where(right[..., None], x, 100.0)
  y = _apply(layer, {"params": params}, garbage, right)
  for i, n in enumerate(lengths):
    y_ref = _apply(layer, {"params": params}, x[i:i + 1, :n])
    assert rel_err(y[i:i + 1, :n], y_ref) < 1e-5
    assert np.all(np.asarray(y[i, n:]) == 0)
  # Left padding: the real tokens at the end.
  n = 13
  left = jnp.arange(T)[None, :] >= T - n
  xl = jnp.where(left[..., None], jnp.roll(x[:1], T - n, axis=1), -50.0)
  y = _apply(layer, {"params": params}, xl, left)
  assert rel_err(y[:, T - n:],
                 _apply(layer, {"params": params}, x[:1, :n])) < 1e-5
  assert np.all(np.asarray(y[:, :T - n]) == 0)


def test_padding_leaves_the_decode_state_unchanged():
  """Right padding: the SSM state after the padded prompt is the unpadded
  one's. Left padding: the whole cache (conv history too) is."""
  layer = _layer(impl="reference")
  dec = layer.clone(decode=True)
  params = _params(layer)
  x = _x(11, b=1)
  n = 13

  def run(x, mask):
    cache = _empty_cache(dec, x[:, :1])
    _, mut = _apply(dec, {"params": params, "cache": cache}, x, mask,
                    mutable=("cache",))
    return mut["cache"]

  ref = run(x[:, :n], None)
  right = jnp.arange(T)[None, :] < n
  got = run(jnp.where(right[..., None], x, 7.0), right)
  assert rel_err(got["ssm_state"], ref["ssm_state"]) < 1e-5
  left = jnp.arange(T)[None, :] >= T - n
  got = run(jnp.where(left[..., None], jnp.roll(x, T - n, axis=1), 7.0), left)
  for k in ("ssm_state", "conv_state"):
    assert rel_err(got[k], ref[k]) < 1e-5, k


@pytest.mark.parametrize("name", ["window3", "state_norm"])
def test_gradients_reach_all_params(name):
  layer = _layer(**CONFIGS[name])
  x = _x(12)
  ct = _x(13)
  params = _params(layer)
  grads = jax.jit(jax.grad(
      lambda p: jnp.sum(layer.apply({"params": p}, x) * ct)))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), path
    assert np.max(np.abs(g)) > 0, path


def test_state_norm_gradients_match_finite_differences(monkeypatch):
  """The sequential scan with state_norm (what the layer runs), in float64:
  the autodiff gradient of a random-cotangent loss of the outputs and the
  final state w.r.t. x, dt, A, B, C and the initial state equals central
  finite differences, element by element. The state is clipped on some steps
  and not on others, so both branches of the clip are differentiated.
  ``ssd_reference`` computes in float32; the test swaps that cast for one
  that keeps the float64 inputs, so the differences resolve ~1e-9."""
  keep_dtype = lambda *arrays: tuple(None if a is None else jnp.asarray(a)
                                     for a in arrays)
  monkeypatch.setattr(ssd_common, "as_float32", keep_dtype)
  rng = np.random.default_rng(0)
  b, t, h, p, g, n = 1, 6, 2, 2, 1, 3
  names = ("x", "dt", "A", "B", "C", "initial_state")
  shapes = ((b, t, h, p), (b, t, h), (h,), (b, t, g, n), (b, t, g, n),
            (b, h, p, n))
  with jax.enable_x64(True):
    args = [rng.normal(size=(b, t, h, p)), rng.uniform(0.2, 0.8, (b, t, h)),
            -rng.uniform(0.2, 1.0, h), rng.normal(size=(b, t, g, n)),
            rng.normal(size=(b, t, g, n)), 0.5 * rng.normal(size=(b, h, p, n))]
    args = [jnp.asarray(a, jnp.float64) for a in args]
    ct_y, ct_s = rng.normal(size=(b, t, h, p)), rng.normal(size=(b, h, p, n))

    def state_norms(state_norm):
      """[t, b, h] norms of the state after each step: prefixes' finals."""
      finals = [ssd_ops.ssd_reference(
          *(a[:, :k] for a in args[:2]), args[2],
          *(a[:, :k] for a in args[3:5]), initial_state=args[5],
          state_norm=state_norm)[1] for k in range(1, t + 1)]
      return np.sqrt(np.sum(np.asarray(finals) ** 2, axis=(-2, -1)))

    tau = float(np.median(state_norms(None)))

    def loss(*args):
      y, final = ssd_ops.ssd_reference(*args[:5], initial_state=args[5],
                                       state_norm=tau)
      assert y.dtype == jnp.float64
      return jnp.sum(y * ct_y) + jnp.sum(final * ct_s)

    at_tau = np.isclose(state_norms(tau), tau, rtol=1e-12)
    assert 0.2 < at_tau.mean() < 0.8, at_tau.mean()  # both branches taken
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(6))))(*args)

    sizes = [int(np.prod(s)) for s in shapes]
    theta = jnp.concatenate([a.ravel() for a in args])
    unflat = lambda v: [c.reshape(s) for c, s in
                        zip(jnp.split(v, np.cumsum(sizes)[:-1]), shapes)]
    eps = 1e-6
    steps = eps * jnp.eye(theta.size, dtype=jnp.float64)
    f = jax.jit(jax.vmap(lambda v: loss(*unflat(v))))
    numeric = (f(theta[None] + steps) - f(theta[None] - steps)) / (2 * eps)
    for name, got, want in zip(names, grads, unflat(numeric)):
      assert_close(got, want, rtol=1e-6, what=f"d loss / d {name}")


def test_bfloat16_and_jit():
  layer = _layer(dtype=jnp.bfloat16)
  x = _x(14)
  params = _params(layer)
  y = jax.jit(layer.apply)({"params": params}, x)
  assert y.shape == x.shape and y.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(y, np.float32)))
  y32 = _apply(layer.clone(dtype=jnp.float32), {"params": params}, x)
  assert rel_err(y, y32) < 5e-2
