"""SGConv layer: kernel construction, fixed norm, conv forms, causality."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from layers.registry import MIXERS
from layers.sgconv import (NORM_COLLECTION, SGConv, num_scales, scale_lengths,
                           sgconv_kernel, upsample_linear)
from numerics import rel_err

D_MODEL, KD, L_MAX = 3, 4, 40  # S = 1 + ceil(log2(40 / 4)) = 5, length 64


def _x(seed=0, b=2, t=L_MAX, d=D_MODEL):
  return jax.random.normal(jax.random.key(seed), (b, t, d), jnp.float32)


def _layer(**kw):
  return SGConv(**{**dict(d_model=D_MODEL, l_max=L_MAX, kernel_dim=KD), **kw})


@functools.cache
def _jitted_apply(layer, method=None, **kw):
  return jax.jit(functools.partial(layer.apply, method=method, **kw))


def _apply(layer, *args, method=None, **kw):
  return _jitted_apply(layer, method, **kw)(*args)


@functools.cache
def _jitted_init(layer):
  return jax.jit(layer.init)


def _init(layer, x, seed=1):
  return _jitted_init(layer)(jax.random.key(seed), x)


# ------------------------------------------ numpy model of the official code
def _np_upsample(x, factor):
  """torch F.interpolate(mode='linear', align_corners=False), one by one."""
  k = x.shape[-1]
  out = np.empty(x.shape[:-1] + (k * factor,), np.float64)
  for j in range(k * factor):
    s = max((j + 0.5) / factor - 0.5, 0.0)
    i0 = int(math.floor(s))
    i1 = min(i0 + 1, k - 1)
    lam = s - i0
    out[..., j] = (1 - lam) * x[..., i0] + lam * x[..., i1]
  return out


def _np_official(x, kernel, D, norm_kernel, *, multiplier, bidirectional,
                 activation):
  """Official GConv.forward ("cat_randn", linear=False up to output_linear).

  ``kernel [S, c', H, d]`` (the params now), ``norm_kernel`` the params the
  norm was taken from (the first forward). Weights ``multiplier^(S-1-i)``,
  circular FFT convolution of length 2L with the two-sided kernel.
  """
  def full(kern):
    S = kern.shape[0]
    return np.concatenate(
        [_np_upsample(kern[i].astype(np.float64), 2**max(0, i - 1)) *
         multiplier**(S - i - 1) for i in range(S)], -1)
  norm = np.linalg.norm(full(norm_kernel), axis=-1, keepdims=True)
  u = np.swapaxes(np.asarray(x, np.float64), 1, 2)  # [b, H, L]
  L = u.shape[-1]
  k = full(kernel)
  k = k[..., :L] if k.shape[-1] >= L else np.pad(
      k, ((0, 0), (0, 0), (0, L - k.shape[-1])))
  k = k / norm
  if bidirectional:
    c = k.shape[0] // 2
    k0, k1 = k[:c], k[c:]
    k = np.pad(k0, ((0, 0), (0, 0), (0, L))) + np.pad(
        k1[..., ::-1], ((0, 0), (0, 0), (L, 0)))
  k_f = np.fft.rfft(k, n=2 * L)
  u_f = np.fft.rfft(u, n=2 * L)
  y = np.fft.irfft(u_f[:, None] * k_f[None], n=2 * L)[..., :L]  # [b, c, H, L]
  y = y + np.asarray(D, np.float64)[None, :, :, None] * u[:, None]
  y = y.reshape(y.shape[0], -1, L)  # (c h)
  if activation == "gelu":
    y = 0.5 * y * (1 + scipy.special.erf(y / np.sqrt(2)))
  return np.swapaxes(y, 1, 2)


# ------------------------------------------------------------------- tests
def test_registered():
  assert MIXERS["sgconv"] is SGConv


@pytest.mark.parametrize("l_max,kd,want", [
    (40, 4, 5), (64, 64, 1), (65, 64, 2), (128, 64, 2), (129, 64, 3),
    (1024, 64, 5), (16384, 64, 9), (16, 64, 1), (1, 1, 1), (3, 1, 3)])
def test_num_scales_and_lengths(l_max, kd, want):
  S = num_scales(l_max, kd)
  assert S == want
  # Official formula where it is positive (float log2 as in GConv.__init__).
  official = 1 + math.ceil(math.log2(l_max / kd))
  assert S == max(1, official)
  lengths = scale_lengths(kd, S)
  assert lengths == [kd] + [kd * 2**(i - 1) for i in range(1, S)]
  assert sum(lengths) == kd * 2**(S - 1) >= l_max
  # Fewest scales: one fewer would not cover l_max.
  assert S == 1 or kd * 2**(S - 2) < l_max


def test_kernel_length_and_per_scale_segments():
  layer = _layer()
  v = _init(layer, _x())
  S = num_scales(L_MAX, KD)
  assert v["params"]["kernel"].value.shape == (S, 1, D_MODEL, KD)
  K = _apply(layer, v, method=SGConv.kernel)
  assert K.shape == (1, D_MODEL, KD * 2**(S - 1))
  # Each segment is its own sub-kernel upsampled: changing sub-kernel i only
  # changes taps [start_i, start_i + length_i).
  starts = np.cumsum([0] + scale_lengths(KD, S))
  for i in range(S):
    params = dict(v["params"])
    params["kernel"] = params["kernel"].value.at[i].add(1.0)
    K2 = _apply(layer, {"params": params, **{NORM_COLLECTION:
                                             v[NORM_COLLECTION]}},
                method=SGConv.kernel)
    changed = np.any(np.asarray(K2 != K), axis=(0, 1))
    assert np.all(changed[starts[i]:starts[i + 1]]), i
    assert not np.any(np.delete(changed, np.s_[starts[i]:starts[i + 1]])), i
  # Shorter L: the same kernel cut; explicit n_scales below the default gives
  # a shorter kernel, zero-padded up to L (official F.pad).
  np.testing.assert_array_equal(_apply(layer, v, method=SGConv.kernel, L=23),
                                K[..., :23])
  short = _layer(n_scales=2)
  v2 = _init(short, _x())
  K2 = _apply(short, v2, method=SGConv.kernel, L=L_MAX)
  assert K2.shape == (1, D_MODEL, L_MAX)
  assert np.all(np.asarray(K2[..., 2 * KD:]) == 0)
  assert np.all(np.asarray(K2[..., :2 * KD]) != 0)


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_upsample_matches_torch_linear_semantics(factor, k):
  x = np.random.default_rng(k).normal(size=(2, 3, k)).astype(np.float32)
  got = upsample_linear(jnp.asarray(x), factor)
  assert got.shape == (2, 3, k * factor)
  np.testing.assert_allclose(got, _np_upsample(x, factor), rtol=1e-6,
                             atol=1e-6)


def test_upsample_hand_values():
  # torch.nn.functional.interpolate(torch.tensor([[[0., 1.]]]),
  #   scale_factor=2, mode='linear') == [[[0, .25, .75, 1]]]
  np.testing.assert_allclose(upsample_linear(jnp.asarray([0.0, 1.0]), 2),
                             [0.0, 0.25, 0.75, 1.0])
  np.testing.assert_allclose(
      upsample_linear(jnp.asarray([0.0, 4.0]), 4),
      [0.0, 0.0, 0.5, 1.5, 2.5, 3.5, 4.0, 4.0])


@pytest.mark.parametrize("decay", [0.5, 0.3])
def test_decay_ratios(decay):
  S = 4
  kernels = jnp.ones((S, 1, 2, KD))
  K = np.asarray(sgconv_kernel(kernels, decay))
  starts = np.cumsum([0] + scale_lengths(KD, S))
  for i in range(S):
    np.testing.assert_allclose(K[..., starts[i]:starts[i + 1]], decay**i,
                               rtol=1e-6)
  # The official weights multiplier^(S-1-i) (multiplier = 1/decay) give the
  # same kernel up to a constant, which the normalisation removes.
  official = np.concatenate(
      [np.ones((1, 2, n)) * (1 / decay)**(S - 1 - i)
       for i, n in enumerate(scale_lengths(KD, S))], -1)
  np.testing.assert_allclose(K / np.linalg.norm(K, axis=-1, keepdims=True),
                             official / np.linalg.norm(official, axis=-1,
                                                       keepdims=True),
                             rtol=1e-6)


def test_norm_fixed_at_init():
  layer = _layer(channels=2, bidirectional=True)
  v = _init(layer, _x())
  norm = v[NORM_COLLECTION]["kernel_norm"]
  assert norm.names == (None, "embed")
  norm = np.asarray(norm.value)
  assert norm.shape == (4, D_MODEL)
  raw = _apply(layer, v, method=SGConv.raw_kernel)
  np.testing.assert_allclose(norm, np.linalg.norm(raw, axis=-1), rtol=1e-6)
  # At init the kernel has unit norm per (channel, feature).
  K = _apply(layer, v, method=SGConv.kernel)
  np.testing.assert_allclose(np.linalg.norm(K, axis=-1), 1.0, rtol=1e-5)
  # New params: the norm does not follow them (K = raw_new / norm_init), and
  # apply never writes the collection.
  params = dict(v["params"])
  params["kernel"] = params["kernel"].value * 3.0 + 0.1
  v_new = {"params": params, NORM_COLLECTION: v[NORM_COLLECTION]}
  K_new = _apply(layer, v_new, method=SGConv.kernel)
  raw_new = _apply(layer, v_new, method=SGConv.raw_kernel)
  np.testing.assert_allclose(K_new, raw_new / norm[..., None], rtol=1e-6)
  assert np.all(np.linalg.norm(K_new, axis=-1) > 2.5)
  _, mutated = layer.apply(v_new, _x(), mutable=True)
  np.testing.assert_array_equal(
      mutated[NORM_COLLECTION]["kernel_norm"].value, norm)
  # Applying without the collection is an error, not a silent recompute.
  with pytest.raises(ValueError, match=NORM_COLLECTION):
    layer.apply({"params": v["params"]}, _x())


@pytest.mark.parametrize("channels,bidirectional,t,n_scales", [
    (1, False, L_MAX, None), (2, True, 29, None), (3, False, 17, None),
    (1, True, L_MAX, 3)])
def test_layer_matches_numpy_official(channels, bidirectional, t, n_scales):
  """Whole forward vs a numpy transcription of the official GConv.forward,
  before and after a parameter change (norm from the initial params)."""
  layer = _layer(channels=channels, bidirectional=bidirectional,
                 n_scales=n_scales)
  x = _x(2, t=t)
  v = _init(layer, x)
  kern = np.asarray(v["params"]["kernel"].value)
  D = np.asarray(v["params"]["D"].value)
  y = _apply(layer, v, x)
  assert y.shape == (2, t, channels * D_MODEL)
  ref = _np_official(x, kern, D, kern, multiplier=2.0,
                     bidirectional=bidirectional, activation="gelu")
  assert rel_err(y, ref) < 1e-5
  kern2 = kern * 0.7 - 0.2
  params = dict(v["params"])
  params["kernel"] = jnp.asarray(kern2)
  y2 = _apply(layer, {"params": params, NORM_COLLECTION: v[NORM_COLLECTION]},
              x)
  ref2 = _np_official(x, kern2, D, kern, multiplier=2.0,
                      bidirectional=bidirectional, activation="gelu")
  assert rel_err(y2, ref2) < 1e-5


@pytest.mark.parametrize("channels,bidirectional", [(1, False), (2, True)])
def test_fft_matches_direct_conv_values_and_grads(channels, bidirectional):
  fast = _layer(channels=channels, bidirectional=bidirectional)
  ref = fast.clone(impl="reference")
  x = _x(3, t=37)
  ct = _x(4, t=37, d=channels * D_MODEL)
  v = _init(fast, x)

  def loss(layer):
    return jax.jit(jax.value_and_grad(
        lambda p, x: jnp.sum(layer.apply(
            {"params": p, NORM_COLLECTION: v[NORM_COLLECTION]}, x) * ct),
        argnums=(0, 1)))

  (l_f, (gp_f, gx_f)), (l_r, (gp_r, gx_r)) = (
      loss(fast)(v["params"], x), loss(ref)(v["params"], x))
  assert rel_err(_apply(fast, v, x), _apply(ref, v, x)) < 1e-5
  assert abs(float(l_f - l_r)) <= 1e-5 * abs(float(l_r)) + 1e-5
  assert rel_err(gx_f, gx_r) < 1e-4
  assert set(gp_f) == {"kernel", "D"}
  for k in gp_r:
    g = np.asarray(gp_f[k].value)
    assert np.all(np.isfinite(g)) and np.max(np.abs(g)) > 0, k
    assert rel_err(g, gp_r[k].value) < 1e-4, k


def test_causality_and_bidirectional():
  x = _x(5)
  t0 = 11
  causal = _layer()
  bidir = _layer(bidirectional=True)
  v_c = _init(causal, x)
  v_b = _init(bidir, x)
  g = np.abs(np.asarray(
      jax.jit(jax.grad(lambda x: causal.apply(v_c, x)[:, t0].sum()))(x)))
  assert np.max(g[:, t0 + 1:]) < 1e-6 * np.max(g)
  assert np.all(g[:, :t0 + 1].sum(-1) > 1e-4 * np.max(g))
  g = np.abs(np.asarray(
      jax.jit(jax.grad(lambda x: bidir.apply(v_b, x)[:, t0].sum()))(x)))
  assert np.all(g[:, t0 + 1:].sum(-1) > 1e-4 * np.max(g))
  # Causal prefix: a shorter input gives the first outputs of a longer one.
  assert rel_err(_apply(causal, v_c, x[:, :t0]),
              _apply(causal, v_c, x)[:, :t0]) < 1e-5
  # The bidirectional layer's first half is the causal kernel: with the
  # causal layer's kernel and norm in it, zeroing the backward half gives
  # the causal layer.
  params = {"kernel": jnp.concatenate(
      [v_c["params"]["kernel"].value, v_b["params"]["kernel"].value[:, 1:]],
      axis=1), "D": v_c["params"]["D"].value}
  norm = jnp.concatenate([v_c[NORM_COLLECTION]["kernel_norm"].value,
                          v_b[NORM_COLLECTION]["kernel_norm"].value[1:]], 0)
  vb = {"params": params, NORM_COLLECTION: {"kernel_norm": norm}}
  y_c = _apply(causal, v_c, x)
  assert rel_err(_apply(bidir, vb, x), y_c) > 1e-2
  params["kernel"] = params["kernel"].at[:, 1].set(0.0)
  assert rel_err(_apply(bidir, vb, x), y_c) < 1e-5


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_mask_matches_unpadded(bidirectional):
  layer = _layer(bidirectional=bidirectional, channels=2)
  x = _x(6)
  v = _init(layer, x)
  lengths = [L_MAX, 19]
  mask = jnp.arange(L_MAX)[None, :] < jnp.asarray(lengths)[:, None]
  garbage = jnp.where(mask[..., None], x, 100.0)
  y = _apply(layer, v, garbage, mask)
  for i, n in enumerate(lengths):
    y_ref = _apply(layer, v, x[i:i + 1, :n])
    assert rel_err(y[i:i + 1, :n], y_ref) < 1e-5
    assert np.all(np.asarray(y[i, n:]) == 0)


def test_param_names_axes_init_and_dtype():
  layer = _layer(l_max=1024, kernel_dim=64, d_model=16, channels=2)
  x = _x(d=16, t=8)
  v = _init(layer, x)
  p = v["params"]
  assert set(p) == {"kernel", "D"}
  assert p["kernel"].value.shape == (5, 2, 16, 64)
  assert p["kernel"].names == (None, None, "embed", None)
  assert p["D"].value.shape == (2, 16) and p["D"].names == (None, "embed")
  # Official init: torch.randn for sub-kernels and D.
  k = np.asarray(p["kernel"].value)
  assert abs(k.mean()) < 0.05 and abs(k.std() - 1) < 0.05
  y16 = _apply(layer.clone(dtype=jnp.bfloat16), v, x)
  assert y16.dtype == jnp.bfloat16 and y16.shape == (2, 8, 32)


def test_invalid_configs_and_lengths_raise():
  x = _x()
  layer = _layer()
  v = _init(layer, x)
  with pytest.raises(ValueError, match=r"t=41 exceeds l_max=40"):
    layer.apply(v, _x(t=41))
  with pytest.raises(ValueError, match="activation="):
    _init(_layer(activation="glu"), x)
  with pytest.raises(ValueError, match="decay="):
    _init(_layer(decay=0.0), x)
  with pytest.raises(ValueError, match="n_scales="):
    _init(_layer(n_scales=0), x)
  with pytest.raises(ValueError, match="impl="):
    _init(_layer(impl="cuda"), x)
  with pytest.raises(ValueError, match="factor="):
    upsample_linear(jnp.ones(3), 0)


def test_gelu_exact_matches_the_erf_gelu_and_its_gradient():
  from layers.activations import gelu_exact  # pylint: disable=g-import-not-at-top
  x = jnp.linspace(-8.0, 8.0, 1001, dtype=jnp.float32)
  np.testing.assert_allclose(gelu_exact(x), jax.nn.gelu(x, approximate=False),
                             rtol=1e-6, atol=1e-6)
  xd = np.asarray(x, np.float64)  # torch's formula, in float64
  np.testing.assert_allclose(
      gelu_exact(x), 0.5 * xd * (1.0 + scipy.special.erf(xd / np.sqrt(2.0))),
      rtol=1e-6, atol=1e-6)
  grad = jax.vmap(jax.grad(gelu_exact))(x)
  want = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)
