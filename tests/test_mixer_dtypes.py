"""Every registered mixer in bfloat16 against its float32 output, and the
model's dtype reaching the mixer."""
import jax
import jax.numpy as jnp
import pytest

import layers
import models
from configs import default
from data.tasks import TaskInfo
from layers import registry
from numerics import rel_err_norm

B, T, D = 2, 64, 32

# Small settings per mixer (the rest are the declared defaults).
SMALL = {
    "s4": {"d_state": 8},
    "sgconv": {"kernel_dim": 8},
    "mamba2": {"d_state": 8, "head_dim": 16, "chunk_size": 16},
    "attention": {"n_heads": 2},
    "linear_attention": {"n_heads": 2, "chunk_size": 16},
    "linformer": {"n_heads": 2, "k": 16},
    "lowrank": {"n_heads": 2, "rank": 8},
    "longformer": {"n_heads": 2, "window": 8},
    "bigbird": {"n_heads": 2, "block_size": 8, "num_rand_blocks": 1},
    "probsparse": {"n_heads": 2, "factor": 2},
}
# The S4D variant too.
CASES = sorted(SMALL) + ["s4_diag"]

# Relative error ||y_bf16 - y_f32|| / ||y_f32|| allowed: bfloat16 keeps 8
# significant bits (a rounding error of 2^-9 = 2e-3 per operand). Measured
# with these settings: 2.3e-3 to 2.6e-3 for S4, S4D and SGConv (their kernels
# run in float32 from bfloat16 inputs), 4.1e-3 to 7.5e-3 for Mamba-2 and the
# attention mixers. 3e-2 leaves a factor of 4 over the largest.
BF16_RTOL = 3e-2


def _mixer(case: str, dtype):
  name = "s4" if case == "s4_diag" else case
  spec = registry.get_spec(name)
  cfg = spec.default_config()
  with cfg.ignore_type():
    cfg.update(SMALL[name])
    if case == "s4_diag":
      cfg.update({"mode": "diag", "ssm_init": "lin"})
  kwargs = spec.module_kwargs(cfg, max_length=T)
  return spec.module(d_model=D, **kwargs, dtype=dtype,
                     param_dtype=jnp.float32)


@pytest.mark.parametrize("case", CASES)
def test_mixer_in_bfloat16_matches_float32(case):
  x = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float32)
  mask = jnp.arange(T)[None, :] < jnp.array([[T], [T - 11]])
  rngs = {"params": jax.random.key(0), "sample": jax.random.key(2)}
  f32 = _mixer(case, jnp.float32)
  variables = f32.init(rngs, x, mask)
  y32 = f32.apply(variables, x, mask, rngs={"sample": jax.random.key(3)})
  bf16 = _mixer(case, jnp.bfloat16)
  y16 = bf16.apply(variables, x.astype(jnp.bfloat16), mask,
                   rngs={"sample": jax.random.key(3)})
  assert y16.dtype == jnp.bfloat16, y16.dtype
  assert y32.dtype == jnp.float32, y32.dtype
  err = rel_err_norm(y16.astype(jnp.float32), y32)
  assert err <= BF16_RTOL, f"{case}: bf16 vs f32 relative error {err:.3g}"


def test_every_builtin_mixer_is_covered():
  builtin = {name for name, spec in layers.SPECS.items()
             if spec.module.__module__.startswith("layers.")}
  assert set(SMALL) == builtin


def _classifier_config(dtype: str, param_dtype: str = "float32"):
  config = default.get_config()
  with config.unlocked():
    config.model.mixer = "attention"
    config.model.output = "none"
    config.model.d_model = D
    config.model.n_layers = 2
    config.model.attention.n_heads = 2
    config.model.dtype = dtype
    config.model.param_dtype = param_dtype
  return config


@pytest.mark.parametrize("mixer", ["s4", "mamba2", "attention"])
def test_model_dtype_reaches_the_mixer(mixer):
  """``model.dtype`` is the compute dtype of every mixer of the backbone,
  and the bfloat16 model's logits follow the float32 model's."""
  info = TaskInfo(num_classes=3, max_length=T, input_kind="tokens",
                  vocab_size=11)
  tokens = jax.random.randint(jax.random.key(0), (B, T), 1, 11)
  mask = jnp.ones((B, T), bool)
  outs = {}
  for dtype in ("float32", "bfloat16"):
    config = _classifier_config(dtype)
    with config.unlocked():
      config.model.mixer = mixer
      config.model.output = "none" if mixer != "s4" else "glu"
      config.model[mixer].update(
          {k: v for k, v in SMALL[mixer].items() if k != "n_heads"})
    model = models.build_model(config.model, info)
    rngs = {"params": jax.random.key(0), "sample": jax.random.key(1)}
    if dtype == "float32":
      variables = model.init(rngs, tokens, mask)
    logits, inter = model.apply(variables, tokens, mask,
                                rngs={"sample": jax.random.key(1)},
                                capture_intermediates=True,
                                mutable=["intermediates"])
    mixer_out = inter["intermediates"]["backbone"]["block_0"]["mixer"][
        "__call__"][0]
    assert mixer_out.dtype == jnp.dtype(dtype), (dtype, mixer_out.dtype)
    outs[dtype] = logits
  err = rel_err_norm(outs["bfloat16"], outs["float32"])
  assert err <= 2 * BF16_RTOL, f"{mixer}: logits bf16 vs f32 {err:.3g}"


def test_param_dtype_reaches_the_mixer():
  info = TaskInfo(num_classes=3, max_length=T, input_kind="tokens",
                  vocab_size=11)
  config = _classifier_config("bfloat16", "bfloat16")
  model = models.build_model(config.model, info)
  tokens = jnp.ones((B, T), jnp.int32)
  params = model.init(jax.random.key(0), tokens)["params"]
  mixer = params["backbone"]["block_0"]["mixer"]
  dtypes = {leaf.dtype for leaf in jax.tree.leaves(mixer)}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}, dtypes
