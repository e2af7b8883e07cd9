"""Backbone, pooling and classifier: padding invariance, norms, pooling kinds."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from data.tasks import TaskInfo
from layers.registry import MIXERS, register_mixer
from models import build_model, pool


class _CausalMean(nn.Module):
  """A tiny mask-respecting causal mixer for testing the stack."""
  d_model: int
  l_max: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, *, deterministic=True):
    if mask is not None:
      x = jnp.where(mask[..., None], x, 0.0)
    w = self.param("w", nn.initializers.normal(0.5), (self.d_model,))
    c = jnp.cumsum(x, axis=1) / jnp.arange(1, x.shape[1] + 1)[None, :, None]
    return nn.gelu(c * w[None, None] + x)


if "_test_causal_mean" not in MIXERS:
  register_mixer("_test_causal_mean")(_CausalMean)


def _model_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      mixer="_test_causal_mean", d_model=16, n_layers=2, prenorm=True,
      norm="layer", dropout=0.0, output="glu", ff_mult=0, pool="mean",
      _test_causal_mean=dict(l_max=None)))
  cfg.update(overrides)
  return cfg


def test_pool_matches_numpy(rng):
  x = rng.normal(size=(3, 7, 4)).astype(np.float32)
  lengths = np.array([7, 3, 1])
  mask = np.arange(7)[None] < lengths[:, None]
  for kind in ("mean", "max", "last"):
    got = np.asarray(pool(jnp.asarray(x), jnp.asarray(mask), kind))
    for i, n in enumerate(lengths):
      want = {"mean": x[i, :n].mean(0), "max": x[i, :n].max(0),
              "last": x[i, n - 1]}[kind]
      np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(pool(jnp.asarray(x), jnp.asarray(mask), "cls"), x[:, 0])
  with pytest.raises(ValueError, match="model.pool='sum'"):
    pool(jnp.asarray(x), jnp.asarray(mask), "sum")


@pytest.mark.parametrize("pool_kind", ["mean", "last", "max", "cls"])
@pytest.mark.parametrize("prenorm", [True, False])
def test_padding_does_not_change_logits(rng, pool_kind, prenorm):
  info = TaskInfo(num_classes=3, max_length=12, input_kind="tokens", vocab_size=9)
  model = build_model(_model_config(pool=pool_kind, prenorm=prenorm, ff_mult=2), info)
  tokens = rng.integers(1, 9, size=(2, 12)).astype(np.int32)
  lengths = np.array([12, 5])
  mask = np.arange(12)[None] < lengths[:, None]
  variables = model.init(jax.random.key(0), tokens, mask)
  logits = model.apply(variables, tokens, mask)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32
  # Different garbage in the padding must not change anything.
  tokens2 = np.where(mask, tokens, 7).astype(np.int32)
  np.testing.assert_allclose(model.apply(variables, tokens2, mask), logits, atol=1e-5)
  # The padded row equals the same sequence run alone without padding.
  alone = model.apply(variables, tokens[1:, :5], mask[1:, :5])
  np.testing.assert_allclose(alone[0], logits[1], rtol=1e-5, atol=1e-5)


def test_batchnorm_statistics_skip_padding(rng):
  info = TaskInfo(num_classes=2, max_length=10, input_kind="continuous",
                  input_channels=1)
  model = build_model(_model_config(norm="batch", prenorm=False), info)
  x = rng.normal(size=(4, 10, 1)).astype(np.float32)
  mask = np.arange(10)[None] < np.array([10, 6, 3, 8])[:, None]
  variables = model.init(jax.random.key(0), x, mask)
  assert "batch_stats" in variables

  def stats(inputs):
    _, updates = model.apply(variables, inputs, mask, train=True,
                             mutable=["batch_stats"])
    return jax.tree.leaves(updates["batch_stats"])

  x2 = np.where(mask[..., None], x, 100.0).astype(np.float32)
  for a, b in zip(stats(x), stats(x2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_needs_rng_and_changes_output_only_in_training(rng):
  info = TaskInfo(num_classes=2, max_length=8, input_kind="tokens", vocab_size=5)
  model = build_model(_model_config(dropout=0.5), info)
  tokens = rng.integers(1, 5, size=(2, 8)).astype(np.int32)
  mask = np.ones((2, 8), bool)
  variables = model.init(jax.random.key(0), tokens, mask)
  eval1 = model.apply(variables, tokens, mask)
  eval2 = model.apply(variables, tokens, mask)
  np.testing.assert_array_equal(eval1, eval2)
  tr1 = model.apply(variables, tokens, mask, train=True,
                    rngs={"dropout": jax.random.key(1)})
  tr2 = model.apply(variables, tokens, mask, train=True,
                    rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(tr1, tr2)


def test_bad_choices_name_the_field():
  info = TaskInfo(num_classes=2, max_length=8, input_kind="tokens", vocab_size=5)
  tokens = np.ones((1, 8), np.int32)
  for field, value in (("norm", "group"), ("output", "relu")):
    model = build_model(_model_config(**{field: value}), info)
    with pytest.raises(ValueError, match=f"model.{field}={value!r}"):
      model.init(jax.random.key(0), tokens)
  with pytest.raises(ValueError, match="unknown mixer 'nope'"):
    build_model(_model_config(mixer="nope"), info)  # Before anything runs.


def test_params_carry_logical_axes():
  info = TaskInfo(num_classes=2, max_length=8, input_kind="tokens", vocab_size=5)
  model = build_model(_model_config(), info)
  abstract = jax.eval_shape(model.init, jax.random.key(0), np.ones((1, 8), np.int32))
  specs = nn.get_partition_spec(abstract)["params"]
  assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["backbone"]["block_0"]["out"]["kernel"]) == ("embed", "mlp")


@pytest.mark.parametrize("mode,bidirectional", [("dplr", True), ("diag", False)])
def test_s4_classifier_padding_invariance(rng, mode, bidirectional):
  cfg = _model_config(
      mixer="s4", d_model=8, n_layers=2, norm="batch", prenorm=False)
  cfg.s4 = ml_collections.ConfigDict(dict(
      d_state=4, mode=mode, ssm_init="legs", bidirectional=bidirectional,
      discretization="zoh", dt_min=1e-3, dt_max=1e-1, l_max=None, rank=1,
      activation="gelu", impl="auto"))
  info = TaskInfo(num_classes=4, max_length=16, input_kind="tokens", vocab_size=7)
  model = build_model(cfg, info)
  tokens = rng.integers(1, 7, size=(2, 16)).astype(np.int32)
  mask = np.arange(16)[None] < np.array([16, 9])[:, None]
  variables = model.init(jax.random.key(0), tokens, mask)
  logits = model.apply(variables, tokens, mask)
  alone = model.apply(variables, tokens[1:, :9], mask[1:, :9])
  np.testing.assert_allclose(alone[0], logits[1], rtol=1e-4, atol=1e-5)
