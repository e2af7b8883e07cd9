"""The mixer registry: what a mixer declares reaches the config, the
validation, the model and the optimizer, and nothing else names it."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

import layers
import models
from configs import checks, default, validate
from data.tasks import TaskInfo
from layers import registry
from train import optim as optim_lib
from train import steps
from train import trainer


def test_declared_fields_are_module_fields_with_their_defaults():
  for name, spec in layers.SPECS.items():
    fields = {f.name: f for f in dataclasses.fields(spec.module)}
    cfg = spec.default_config()
    assert isinstance(cfg, ml_collections.ConfigDict), name
    for key in cfg.keys():
      if key == registry.OPTIM_GROUPS:
        continue
      assert key in fields, (name, key)
      default_value = fields[key].default
      if default_value is not dataclasses.MISSING:
        assert cfg[key] == default_value, (name, key, cfg[key], default_value)


def test_default_config_has_every_mixer_namespace():
  config = default.get_config()
  for name, spec in layers.SPECS.items():
    assert config.model[name].to_dict() == spec.default_config().to_dict()


# A toy mixer declared the way every mixer is: fields, checks, a length.
TOY = "_registry_toy"


def _toy_config():
  c = ml_collections.ConfigDict()
  c.scale = 2.0
  c.l_max = ml_collections.config_dict.placeholder(int)
  return c


def _toy_validate(c, ctx):
  checks.check_float(f"{ctx.prefix}.scale", c.scale, low=0.0, low_open=True)


class _ToyMixer(nn.Module):
  d_model: int
  scale: float = 2.0
  l_max: int | None = None
  dtype: object = jnp.float32
  param_dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, *, deterministic=True):
    del mask, deterministic
    self.sow("intermediates", "l_max", self.l_max)
    return (self.scale * x).astype(self.dtype)


if TOY not in registry.MIXERS:
  registry.register_mixer(TOY, config=_toy_config, validate=_toy_validate,
                          length_field="l_max")(_ToyMixer)


def test_a_new_mixer_needs_only_its_declaration():
  config = default.get_config()
  assert config.model[TOY].scale == 2.0  # Built from the declaration.
  with config.unlocked():
    config.model.mixer = TOY
    config.model[TOY].scale = -1.0
  info = TaskInfo(num_classes=2, max_length=12, input_kind="tokens",
                  vocab_size=5)
  with pytest.raises(ValueError, match=rf"model\.{TOY}\.scale=-1\.0"):
    validate.validate_mixer(config, TOY, max_length=12, causal=False)
  config.model[TOY].scale = 3.0
  model = models.build_model(config.model, info)
  tokens = jnp.ones((1, 12), jnp.int32)
  variables = model.init(jax.random.key(0), tokens)
  _, inter = model.apply(variables, tokens, mutable=["intermediates"])
  # The task's length reached the field the mixer named.
  sown = inter["intermediates"]["backbone"]["block_0"]["mixer"]["l_max"]
  assert sown == (12,)


def test_mixer_group_named_like_a_global_group_is_an_error():
  from configs import lra_listops  # pylint: disable=g-import-not-at-top
  config = lra_listops.get_config("test")
  with config.unlocked():
    config.optim.groups.ssm = ml_collections.ConfigDict(dict(
        pattern="x$", learning_rate=None, weight_decay=None))
  with pytest.raises(ValueError, match=r"model\.s4\.optim_groups\.ssm"):
    validate.validate_config(config, num_devices=8)


def test_mixer_groups_reach_the_informer_encoder():
  """The encoder mixer of a forecaster gets its own groups (Mamba-2's decay-
  free A_log, D, dt_bias), under ``encoder_<i>/mixer``."""
  config = default.get_config()
  with config.unlocked():
    config.model.d_model = 16
    config.model.informer.encoder_mixer = "mamba2"
    config.model.informer.n_heads = 2
    config.model.informer.d_ff = 16
    config.model.mamba2.update(dict(d_state=4, head_dim=8, chunk_size=8))
  info = TaskInfo(num_classes=0, max_length=16, input_kind="continuous",
                  input_channels=3, output_kind="forecast", output_channels=3,
                  time_channels=4, label_len=8, pred_len=4,
                  extra_inputs=("inputs_time", "decoder_inputs",
                                "decoder_time"))
  model = models.build_model(config.model, info)
  batch = trainer.dummy_inputs(info)
  params = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0),
                          "sample": jax.random.key(1)},
                         batch["inputs"], batch["mask"],
                         **{k: batch[k] for k in info.extra_inputs}))["params"]
  params = steps.unbox_without_constraints(params)  # pylint: disable=protected-access
  groups = steps.mixer_groups(config.model, info)  # pylint: disable=protected-access
  labels = optim_lib.param_labels(
      params, optim_lib.group_patterns(config.optim, groups))
  encoder = labels["encoder_0"]["mixer"]
  assert [encoder[k] for k in ("A_log", "D", "dt_bias")] == ["ssm"] * 3
  assert encoder["in_proj"]["kernel"] == "default"


@pytest.mark.parametrize("name,field", [("sgconv", "impl"),
                                        ("mamba2", "impl"),
                                        ("linear_attention", "impl")])
def test_pallas_where_no_kernel_exists_is_an_error(name, field):
  spec = registry.get_spec(name)
  cfg = spec.default_config()
  cfg[field] = "pallas_interpret"
  ctx = registry.MixerContext(prefix=f"model.{name}", d_model=64,
                              max_length=16)
  with pytest.raises(ValueError, match=rf"model\.{name}\.{field}="
                     r"'pallas_interpret'.*no Pallas kernel"):
    spec.validate(cfg, ctx)


@pytest.mark.parametrize("name,fields", [
    ("sgconv", dict(l_max=8, kernel_dim=4)),
    ("s4", dict(mode="diag", ssm_init="lin", d_state=4)),
    ("mamba2", dict(d_state=4, head_dim=4)),
])
def test_layer_asked_for_a_missing_pallas_kernel_raises(name, fields):
  """No silent fallback to the XLA form inside the layer either."""
  module = registry.get_mixer(name)(d_model=8, impl="pallas_interpret",
                                    **fields)
  with pytest.raises(ValueError, match="pallas_interpret"):
    module.init(jax.random.key(0), jnp.ones((1, 8, 8)))
