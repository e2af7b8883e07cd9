"""Low-Rank Transformer: LowRankDense, the lowrank mixer, SVD conversion."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.attention import Attention
from layers.lowrank import (TRANSFORMER_DENSE_PATHS, LowRankAttention,
                            LowRankDense, factorize, relative_output_error,
                            svd_lowrank)
from layers.registry import MIXERS
from models.classifier import SequenceClassifier
from numerics import rel_err

D, H, T = 16, 2, 12


def _x(seed=0, b=2, t=T, d=D):
  return jax.random.normal(jax.random.key(seed), (b, t, d), jnp.float32)


def test_registered():
  assert MIXERS["lowrank"] is LowRankAttention


def test_low_rank_dense_is_x_e_d_plus_bias():
  layer = LowRankDense(5, 3, kernel_axes=("embed", "heads"))
  x = _x(d=7)
  v = jax.jit(layer.init)(jax.random.key(0), x)
  p = v["params"]
  assert set(p) == {"E", "D", "bias"}
  assert p["E"].value.shape == (7, 3) and p["E"].names == ("embed", None)
  assert p["D"].value.shape == (3, 5) and p["D"].names == (None, "heads")
  assert p["bias"].names == ("heads",)
  bias = jnp.arange(5.0)
  params = {"E": p["E"].value, "D": p["D"].value, "bias": bias}
  y = jax.jit(layer.apply)({"params": params}, x)
  want = np.asarray(x, np.float64) @ (np.asarray(params["E"], np.float64)
                                      @ np.asarray(params["D"], np.float64))
  np.testing.assert_allclose(y, want + np.arange(5.0), rtol=1e-5, atol=1e-5)
  no_bias = LowRankDense(5, 3, use_bias=False)
  assert set(no_bias.init(jax.random.key(0), x)["params"]) == {"E", "D"}


def test_low_rank_dense_init_keeps_the_output_scale():
  layer = LowRankDense(256, 64)
  x = jax.random.normal(jax.random.key(0), (512, 256))
  y = jax.jit(layer.apply)(layer.init(jax.random.key(1), x), x)
  assert 0.7 < float(jnp.std(y)) < 1.3


@pytest.mark.parametrize("shape", [(9, 6), (6, 9)])
def test_factorize_is_the_truncated_svd(shape):
  W = np.random.default_rng(0).normal(size=shape)
  S = np.linalg.svd(W, compute_uv=False)
  for r in (1, 3, 6):
    E, Dm, err = factorize(W, r)
    assert E.shape == (shape[0], r) and Dm.shape == (r, shape[1])
    # Eckart-Young: the error of the best rank-r approximation.
    want = np.sqrt(np.sum(S[r:]**2) / np.sum(S**2))
    assert abs(err - want) < 1e-10
    assert abs(np.linalg.norm(W - E @ Dm) / np.linalg.norm(W) - want) < 1e-10
    # Balanced factors: E^T E = D D^T = diag(S_r).
    np.testing.assert_allclose(E.T @ E, np.diag(S[:r]), atol=1e-9)
    np.testing.assert_allclose(Dm @ Dm.T, np.diag(S[:r]), atol=1e-9)
  E, Dm, err = factorize(W, 8)  # above min(shape): zero padded, exact
  assert E.shape == (shape[0], 8) and err < 1e-12
  assert np.all(E[:, 6:] == 0) and np.all(Dm[6:] == 0)


def _model(mixer, **kw):
  base = dict(num_classes=3, input_kind="tokens", vocab_size=11, mixer=mixer,
              mixer_kwargs=dict(n_heads=H), d_model=D, n_layers=2,
              output="none", ff_mult=0)
  return SequenceClassifier(**{**base, **kw})


def _batch():
  tokens = jax.random.randint(jax.random.key(0), (3, T), 1, 11)
  mask = jnp.arange(T)[None, :] < jnp.asarray([T, 9, 5])[:, None]
  return tokens, mask


def _assert_same_tree(a, b):
  """Same structure, shapes, dtypes and logical axis names."""
  is_box = lambda l: isinstance(l, nn.meta.AxisMetadata)  # noqa: E731
  assert jax.tree.structure(a, is_leaf=is_box) == jax.tree.structure(
      b, is_leaf=is_box)
  for la, lb in zip(jax.tree.leaves(a, is_leaf=is_box),
                    jax.tree.leaves(b, is_leaf=is_box)):
    assert is_box(la) == is_box(lb)
    if is_box(la):
      assert la.names == lb.names
      la, lb = la.value, lb.value
    assert la.shape == lb.shape and la.dtype == lb.dtype


def test_convert_dense_attention_classifier():
  """A dense attention model -> lowrank: same tree as the low-rank model's
  init; exact at full rank; error grows as the rank falls."""
  tokens, mask = _batch()
  dense = _model("attention")
  v = jax.jit(dense.init)(jax.random.key(1), tokens, mask)
  apply_dense = jax.jit(dense.apply)
  errors, out_errors = [], []
  for rank in (D, 8, 4, 1):
    low = _model("lowrank", mixer_kwargs=dict(n_heads=H, rank=rank))
    new, report = svd_lowrank(v["params"], rank, paths=r"mixer/(query|key|"
                              r"value|out)$")
    _assert_same_tree(new, jax.eval_shape(low.init, jax.random.key(0),
                                          tokens, mask)["params"])
    assert len(report.rel_errors) == 2 * 4  # 2 layers x q, k, v, out
    assert report.params_before == sum(
        np.size(l) for l in jax.tree.leaves(nn.meta.unbox(v["params"])))
    # Each D x D kernel (+ D bias) becomes 2 D r (+ D bias).
    assert report.params_after - report.params_before == 8 * (
        2 * D * rank - D * D)
    errors.append(max(report.rel_errors.values()))
    out_errors.append(relative_output_error(
        apply_dense, v, jax.jit(low.apply), {"params": new}, tokens, mask))
    assert str(rank) in report.summary()
  assert errors[0] < 1e-6 and out_errors[0] < 1e-5
  assert all(a < b for a, b in zip(errors, errors[1:])), errors
  assert all(a < b for a, b in zip(out_errors, out_errors[1:])), out_errors
  assert out_errors[-1] > 1e-2


def test_convert_with_backbone_dense_rank():
  """The whole stack (mixer + backbone out / feed-forward): the backbone's
  ``dense_rank`` makes out, ff_in and ff_out LowRankDense."""
  assert "dense_rank" in {f.name for f in dataclasses.fields(SequenceClassifier)}
  tokens, mask = _batch()
  dense = _model("attention", output="glu", ff_mult=2)
  v = jax.jit(dense.init)(jax.random.key(1), tokens, mask)
  prev = 0.0
  for rank in (2 * D, 4):  # 2 D: full rank for every kernel (ff_in is D x 2D)
    low = _model("lowrank", output="glu", ff_mult=2, dense_rank=rank,
                 mixer_kwargs=dict(n_heads=H, rank=rank))
    new, report = svd_lowrank(v["params"], rank, paths=TRANSFORMER_DENSE_PATHS)
    _assert_same_tree(new, jax.eval_shape(low.init, jax.random.key(0),
                                          tokens, mask)["params"])
    assert len(report.rel_errors) == 2 * (4 + 3)
    err = relative_output_error(jax.jit(dense.apply), v, jax.jit(low.apply),
                                {"params": new}, tokens, mask)
    assert err > prev
    prev = err
    if rank == 2 * D:
      assert err < 1e-5


def test_lowrank_mixer_equals_attention_with_the_product_kernels():
  """Any rank: the lowrank mixer is the attention mixer with W = E D
  (values and gradients, with padding and causal)."""
  x = _x(2)
  mask = jnp.arange(T)[None, :] < jnp.asarray([T, 7])[:, None]
  ct = _x(3)
  for causal in (False, True):
    low = LowRankAttention(d_model=D, n_heads=H, rank=3, causal=causal)
    full = Attention(d_model=D, n_heads=H, causal=causal)
    p_low = nn.meta.unbox(jax.jit(low.init)(jax.random.key(1), x)["params"])

    def to_dense(p):
      return {name: {"kernel": p[name]["E"] @ p[name]["D"],
                     "bias": p[name]["bias"]} for name in p}

    def loss(model, params, x):
      y = model.apply({"params": params}, x, mask)
      return jnp.sum(y * ct), y

    @jax.jit
    def both(p, x):
      g = jax.value_and_grad(loss, (1, 2), has_aux=True)
      return (g(low, p, x),
              g(full, to_dense(p), x))

    ((_, y), (gp, gx)), ((_, y_ref), (gp_ref, gx_ref)) = both(p_low, x)
    assert rel_err(y, y_ref) < 1e-5
    assert np.all(np.asarray(y[1, 7:]) == 0)
    assert rel_err(gx, gx_ref) < 1e-4
    # dL/dE = dL/dW D^T, dL/dD = E^T dL/dW.
    for name in p_low:
      gW = gp_ref[name]["kernel"]
      assert rel_err(gp[name]["E"], gW @ p_low[name]["D"].T) < 1e-4, name
      assert rel_err(gp[name]["D"], p_low[name]["E"].T @ gW) < 1e-4, name
      # (The key bias's gradient is zero up to rounding: compare on the
      # scale of the output bias's.)
      scale = np.max(np.abs(np.asarray(gp_ref["out"]["bias"])))
      assert np.max(np.abs(np.asarray(gp[name]["bias"] - gp_ref[name]["bias"]
                                      ))) < 1e-4 * scale, name


def test_lowrank_padding_invariance_in_classifier():
  model = _model("lowrank", mixer_kwargs=dict(n_heads=H, rank=4))
  tokens, mask = _batch()
  v = jax.jit(model.init)(jax.random.key(1), tokens, mask)
  apply = jax.jit(model.apply)
  logits = apply(v, tokens, mask)
  assert logits.shape == (3, 3) and np.all(np.isfinite(logits))
  assert rel_err(logits[2:], apply(v, tokens[2:, :5])) < 1e-5


def test_paths_select_and_errors():
  tokens, mask = _batch()
  dense = _model("attention", n_layers=1)
  params = jax.jit(dense.init)(jax.random.key(1), tokens, mask)["params"]
  new, report = svd_lowrank(params, 4, paths=[r"block_0/mixer/query$",
                                              r"(^|/)head$"])
  assert set(report.rel_errors) == {"backbone/block_0/mixer/query", "head"}
  assert set(new["head"]) == {"E", "D", "bias"}
  assert set(new["backbone"]["block_0"]["mixer"]["key"]) == {"kernel", "bias"}
  new_all, report_all = svd_lowrank(params, 4)  # every Dense
  assert "encoder" not in params  # tokens: an Embed, not a Dense
  assert len(report_all.rel_errors) == 5
  with pytest.raises(ValueError, match="no Dense kernel matched"):
    svd_lowrank(params, 4, paths="nothing")
  with pytest.raises(ValueError, match="rank"):
    factorize(np.ones((3, 3)), 0)
