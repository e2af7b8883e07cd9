"""AdamW with warmup + cosine schedules and parameter groups from the config.

A parameter's group is chosen by regex on its '/'-joined path
(``backbone/block_0/mixer/log_dt``), never by a bare leaf name: see
``config.optim.groups`` in configs/default.py. Each group has its own peak
learning rate and weight decay and follows the same schedule shape, as PyTorch
parameter groups under one LambdaLR do in the S4 reference code.
"""
import re
from typing import Any, Callable, Mapping

import jax
import ml_collections
import optax

DEFAULT_GROUP = "default"


def param_path(path) -> str:
  """'/'-joined names of a pytree key path (dict keys, attributes, indices)."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(str(key.name))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(key))
  return "/".join(parts)


def all_groups(optim_config: ml_collections.ConfigDict,
               mixer_groups: Mapping[str, Mapping[str, Any]] | None = None
               ) -> dict[str, dict[str, Any]]:
  """``config.optim.groups`` and the model's mixer's own groups
  (``model.<mixer>.optim_groups``, layers/registry.py), by name."""
  groups = {name: dict(group) for name, group in optim_config.groups.items()}
  for name, group in (mixer_groups or {}).items():
    if name in groups:
      raise ValueError(
          f"optimizer group {name!r} is defined by optim.groups and by the "
          "mixer's optim_groups; rename one of them")
    groups[name] = dict(group)
  return groups


def group_patterns(optim_config: ml_collections.ConfigDict,
                   mixer_groups: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> dict[str, str]:
  """``{group: regex}`` of :func:`all_groups`."""
  return {name: group["pattern"]
          for name, group in all_groups(optim_config, mixer_groups).items()}


def param_labels(params: Any, patterns: Mapping[str, str]) -> Any:
  """The group name of every leaf of ``params`` (``"default"`` if none).

  Raises:
    ValueError: if a parameter matches the patterns of two groups.
  """
  compiled = {name: re.compile(p) for name, p in patterns.items()}
  if DEFAULT_GROUP in compiled:
    raise ValueError(
        f"optim.groups.{DEFAULT_GROUP} is reserved for the ungrouped parameters")

  def label(path, _):
    name = param_path(path)
    hits = [g for g, rx in compiled.items() if rx.search(name)]
    if len(hits) > 1:
      raise ValueError(
          f"parameter {name!r} matches several optimizer groups: "
          + ", ".join(f"optim.groups.{g}.pattern={patterns[g]!r}" for g in hits))
    return hits[0] if hits else DEFAULT_GROUP

  return jax.tree_util.tree_map_with_path(label, params)


def make_schedule(peak: float, *, schedule: str, warmup_steps: int,
                  total_steps: int, steps_per_epoch: int | None = None,
                  decay_rate: float = 0.5,
                  decay_every_epochs: int = 1) -> optax.Schedule:
  """Linear warmup from 0 to ``peak``, then cosine to 0 at ``total_steps``,
  constant, or (``"epoch_decay"``) multiplied by ``decay_rate`` every
  ``decay_every_epochs`` epochs of ``steps_per_epoch`` steps: the Informer's
  ``lradj="type1"``, ``lr * 0.5 ** (epoch - 1)``."""
  if schedule == "epoch_decay":
    if not steps_per_epoch:
      raise ValueError("optim.schedule='epoch_decay' needs the steps per epoch")
    decay = optax.exponential_decay(
        peak, transition_steps=steps_per_epoch * decay_every_epochs,
        decay_rate=decay_rate, staircase=True)
    if warmup_steps == 0:
      return decay
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps), decay], [warmup_steps])
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)
  if schedule == "constant":
    if warmup_steps == 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps),
         optax.constant_schedule(peak)], [warmup_steps])
  raise ValueError(f"optim.schedule={schedule!r} is not 'cosine', 'constant' "
                   "or 'epoch_decay'")


def group_hyperparameters(
    optim_config: ml_collections.ConfigDict,
    mixer_groups: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, tuple[float, float]]:
  """``{group: (peak learning rate, weight decay)}``, default group included;
  a group's None means the base value."""
  hyper = {DEFAULT_GROUP: (optim_config.learning_rate, optim_config.weight_decay)}
  for name, group in all_groups(optim_config, mixer_groups).items():
    lr = group.get("learning_rate")
    wd = group.get("weight_decay")
    hyper[name] = (optim_config.learning_rate if lr is None else lr,
                   optim_config.weight_decay if wd is None else wd)
  return hyper


def make_optimizer(
    optim_config: ml_collections.ConfigDict, total_steps: int, *,
    steps_per_epoch: int | None = None,
    mixer_groups: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule],
           Callable[[Any], Any]]:
  """Builds the optimizer.

  ``mixer_groups``: the model's mixer's own parameter groups
  (``model.<mixer>.optim_groups``, e.g. S4's SSM parameters at learning rate
  1e-3 without weight decay, Mamba-2's A_log, D and dt_bias without weight
  decay), added to ``optim_config.groups``.

  ``steps_per_epoch`` is needed by the ``"epoch_decay"`` schedule.

  Returns:
    ``(tx, schedules, labels_fn)``: the transformation (its update needs the
    params), the learning-rate schedule of every group and the function that
    labels a params tree with group names.
  """
  if optim_config.optimizer != "adamw":
    raise ValueError(f"optim.optimizer={optim_config.optimizer!r} is not 'adamw'")
  patterns = group_patterns(optim_config, mixer_groups)
  schedules, transforms = {}, {}
  for name, (lr, wd) in group_hyperparameters(
      optim_config, mixer_groups).items():
    schedules[name] = make_schedule(
        lr, schedule=optim_config.schedule,
        warmup_steps=optim_config.warmup_steps, total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        decay_rate=optim_config.get("decay_rate", 0.5),
        decay_every_epochs=optim_config.get("decay_every_epochs", 1))
    transforms[name] = optax.adamw(
        schedules[name], b1=optim_config.b1, b2=optim_config.b2,
        eps=optim_config.eps, weight_decay=wd)
  labels_fn = lambda params: param_labels(params, patterns)
  tx = optax.multi_transform(transforms, labels_fn)
  if optim_config.grad_clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm), tx)
  return tx, schedules, labels_fn
