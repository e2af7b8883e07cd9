"""What one training or evaluation step computes, apart from the loop.

``TrainState`` (what a step updates), the loss and metric sums, the pure
``train_step`` (non-finite steps are not applied: train/nonfinite.py) and
``eval_step``, ``evaluate`` over a split, and the small helpers the trainer
and ``restore_model`` share (model inputs, variables, abstract states).
"""
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

import layers
from train import nonfinite
from train import partitioning


@flax.struct.dataclass
class TrainState:
  """Everything a training step updates (a pytree)."""
  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: Any
  batch_stats: Any  # BatchNorm running statistics ({} without BatchNorm).
  # Non-trainable variables fixed at init (SGConv's kernel norm); {} if none.
  constants: Any
  opt_state: Any


def loss_sums(logits, batch) -> dict[str, jax.Array]:
  """Weighted sums the loss and the metrics are means of.

  ``logits [b, classes]`` (one label per sequence) or ``[b, t, vocab]`` (one
  target per position; integer ``targets``), or forecasts ``[b, t, c]`` when
  ``targets`` are real-valued. Padding rows have weight 0.

  Classes and tokens: ``loss_sum`` / ``loss_count`` (cross-entropy per example,
  or per token of ``batch["loss_mask"]``, default ``batch["target_mask"]``),
  ``correct`` / ``count`` (accuracy per example; with token targets an example
  is correct when all its ``target_mask`` tokens are), and with token targets
  ``token_correct`` / ``token_count`` (accuracy per ``target_mask`` token).

  Forecasts: ``loss_sum`` = ``se_sum`` (squared errors), ``ae_sum`` (absolute
  errors), ``loss_count`` (predicted values) and ``count`` (examples): the
  loss is the MSE over every predicted value, as the Informer's.
  """
  targets, weight = batch["targets"], batch["weight"]
  if jnp.issubdtype(targets.dtype, jnp.floating):
    err = logits.astype(jnp.float32) - targets.astype(jnp.float32)
    per_value = weight.reshape((-1,) + (1,) * (err.ndim - 1))
    values = math.prod(err.shape[1:])
    se_sum = jnp.sum(jnp.square(err) * per_value)
    return {"loss_sum": se_sum, "loss_count": jnp.sum(weight) * values,
            "ae_sum": jnp.sum(jnp.abs(err) * per_value),
            "count": jnp.sum(weight)}
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  hit = jnp.argmax(logits, axis=-1) == targets
  if logits.ndim == 2:
    count = jnp.sum(weight)
    return {"loss_sum": jnp.sum(ce * weight), "loss_count": count,
            "correct": jnp.sum(hit.astype(jnp.float32) * weight),
            "count": count}
  target_mask = batch["target_mask"]
  loss_mask = batch.get("loss_mask", target_mask)
  loss_weight = loss_mask.astype(jnp.float32) * weight[:, None]
  token_weight = target_mask.astype(jnp.float32) * weight[:, None]
  all_hit = jnp.all(hit | ~target_mask, axis=1).astype(jnp.float32)
  return {"loss_sum": jnp.sum(ce * loss_weight),
          "loss_count": jnp.sum(loss_weight),
          "correct": jnp.sum(all_hit * weight), "count": jnp.sum(weight),
          "token_correct": jnp.sum(hit.astype(jnp.float32) * token_weight),
          "token_count": jnp.sum(token_weight)}


def means_of(sums) -> dict[str, Any]:
  """Loss and accuracies (or MSE and MAE) from the sums of :func:`loss_sums`."""
  loss_count = jnp.maximum(sums["loss_count"], 1.0)
  means = {"loss": sums["loss_sum"] / loss_count}
  if "ae_sum" in sums:
    means["mse"] = means["loss"]
    means["mae"] = sums["ae_sum"] / loss_count
    return means
  means["accuracy"] = sums["correct"] / jnp.maximum(sums["count"], 1.0)
  if "token_correct" in sums:
    means["token_accuracy"] = sums["token_correct"] / jnp.maximum(
        sums["token_count"], 1.0)
  return means


# Metrics that are better when smaller (the others are better when larger).
LOWER_IS_BETTER = ("loss", "mse", "mae")


def best_metric(config: ml_collections.ConfigDict, info) -> tuple[str, str]:
  """``(validation metric, "min" | "max")`` that picks the best checkpoint:
  ``train.best_metric``, by default the accuracy, or the loss for forecasts."""
  name = config.train.get("best_metric")
  if name is None:
    name = "loss" if getattr(info, "output_kind", "class") == "forecast" else (
        "accuracy")
  return name, "min" if name in LOWER_IS_BETTER else "max"


def mixer_groups(model_config, info) -> dict:
  """The optimizer groups of the model's sequence mixer
  (``model.<mixer>.optim_groups``)."""
  name = model_config.mixer
  if getattr(info, "output_kind", "class") == "forecast":
    name = model_config.informer.get("encoder_mixer") or None
  if name is None:
    return {}
  return layers.get_spec(name).optim_groups(model_config.get(name))


def dummy_inputs(info, batch_size: int = 1) -> dict[str, jax.Array]:
  """Zero model inputs of a task's shapes (all positions real), for init."""
  t = info.max_length
  # Pair tasks: two sequences per example.
  lead = (batch_size, 2) if getattr(info, "output_kind", "class") == "pair" else (
      batch_size,)
  if info.input_kind == "tokens":
    batch = {"inputs": jnp.zeros(lead + (t,), jnp.int32)}
  else:
    batch = {"inputs": jnp.zeros(lead + (t, info.input_channels),
                                 jnp.float32)}
  batch["mask"] = jnp.ones(lead + (t,), bool)
  if getattr(info, "output_kind", "class") == "forecast":
    nt, c = info.time_channels, info.input_channels
    batch["inputs_time"] = jnp.zeros((batch_size, t, nt), jnp.float32)
    batch["decoder_inputs"] = jnp.zeros((batch_size, info.label_len, c),
                                        jnp.float32)
    batch["decoder_time"] = jnp.zeros(
        (batch_size, info.label_len + info.pred_len, nt), jnp.float32)
  return batch


def model_args(batch, info) -> tuple[tuple, dict]:
  """Positional and keyword model inputs of a batch."""
  extra = getattr(info, "extra_inputs", ()) if info is not None else ()
  return (batch["inputs"], batch["mask"]), {k: batch[k] for k in extra}


def variables_of(state: TrainState) -> dict:
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  if state.constants:
    variables["constants"] = state.constants
  return variables


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    info=None):
  """``train_step(state, batch, rng) -> (state, metrics, health)``, pure.

  A step whose loss, gradients or updated variables are not all finite
  returns the state it was given (``step`` + 1): ``health`` says which
  (``train.nonfinite``), ``metrics["finite_steps"]`` is 0 and the other
  metrics are 0.

  Dropout (rng "dropout") and sampling inside the model (rng "sample", e.g.
  ProbSparse attention's keys) use keys folded from ``rng`` and
  ``state.step``, so the randomness of a step depends only on the run's key
  and the step number. ``info`` (the task's ``TaskInfo``) names the extra
  model inputs of a batch.
  """

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)
    args, kwargs = model_args(batch, info)

    def loss_fn(params):
      variables = variables_of(state.replace(params=params))
      logits, updates = model.apply(
          variables, *args, train=True, **kwargs,
          rngs={"dropout": step_rng,
                "sample": jax.random.fold_in(step_rng, 1)},
          mutable=["batch_stats"])
      means = means_of(loss_sums(logits, batch))
      return means["loss"], (updates, means)

    (loss, (updates, means)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_vars = {"params": optax.apply_updates(state.params, param_updates),
                "batch_stats": updates.get("batch_stats", state.batch_stats)}
    # A step with a non-finite loss, gradient or update is not applied.
    finite, health = nonfinite.check(loss, grads, new_vars)
    old_vars = {"params": state.params, "batch_stats": state.batch_stats}
    new_vars, opt_state = nonfinite.select(
        finite, (new_vars, opt_state), (old_vars, state.opt_state))
    new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                              **new_vars)
    metrics = dict(means, grad_norm=optax.global_norm(grads))
    # Zero on a skipped step: the window means count finite steps only.
    metrics = {k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}
    metrics["finite_steps"] = finite.astype(jnp.float32)
    return new_state, metrics, health

  return train_step


def make_eval_step(model: nn.Module, info=None):
  """``eval_step(state, batch, rng) -> sums`` (padding rows have weight 0);
  ``rng`` feeds sampling inside the model (rng "sample")."""

  def eval_step(state: TrainState, batch: dict, rng: jax.Array):
    args, kwargs = model_args(batch, info)
    logits = model.apply(variables_of(state), *args, train=False, **kwargs,
                         rngs={"sample": rng})
    return loss_sums(logits, batch)

  return eval_step


# Key of the evaluation's sampling (ProbSparse attention): fixed, so that
# every evaluation of a checkpoint gives the same numbers.
EVAL_SAMPLE_SEED = 12345


def evaluate(eval_step, state: TrainState, batches, sharding,
             max_steps: int | None = None, *, seed: int = 0) -> dict[str, float]:
  """Weighted mean loss and accuracies over ``batches`` (each example once).

  Batch ``i`` samples with ``fold_in(key(seed + EVAL_SAMPLE_SEED), i)``."""
  sums = None
  rng = jax.random.key(seed + EVAL_SAMPLE_SEED)
  for i, batch in enumerate(batches):
    if max_steps is not None and i >= max_steps:
      break
    out = eval_step(state, partitioning.global_batch(batch, sharding),
                    jax.random.fold_in(rng, i))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  if sums is None:
    raise ValueError("evaluation saw no batch")
  sums = jax.device_get(sums)
  result = {k: float(v) for k, v in means_of(sums).items()}
  result["num_examples"] = float(sums["count"])
  return result


def unbox_without_constraints(tree):
  """Strips logical-axis boxes (also from abstract values, which
  ``nn.unbox`` would try to constrain)."""
  is_box = lambda x: isinstance(x, flax.core.meta.AxisMetadata)
  return jax.tree.map(
      lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
      is_leaf=is_box)


def abstract_like(tree, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)
