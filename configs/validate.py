"""Checks a config before anything is built or compiled.

Every error is a ``ValueError`` that names the field and its value, e.g.
``ValueError("model.s4.d_state=63 must be even ...")``.
"""
import dataclasses
import math
import re
from typing import Any

import ml_collections

from configs import checks

NORMS = ("layer", "batch", "rms")
OUTPUTS = ("glu", "linear", "none")
POOLS = ("mean", "last", "max", "cls")
OPTIMIZERS = ("adamw",)
SCHEDULES = ("cosine", "constant", "epoch_decay")
MESH_AXES = ("data", "fsdp", "tensor", "seq")
# Mesh axes the batch is split over (config.mesh.logical_axis_rules "batch").
DATA_PARALLEL_AXES = ("data", "fsdp")

S4_MODES = ("dplr", "diag")
S4_INITS = ("legs", "lin", "inv")
S4_DISCRETIZATIONS = ("zoh", "bilinear")


# The checkers live in configs/checks.py, which task and mixer modules import too.
_fail = checks.fail
_check_choice = checks.check_choice
_check_int = checks.check_int
_check_float = checks.check_float


def _describe(shape: dict[str, int]) -> str:
  return ", ".join(f"mesh.{axis}={size}" for axis, size in shape.items())


def mesh_shape(mesh_config: ml_collections.ConfigDict,
               num_devices: int) -> dict[str, int]:
  """Resolves ``-1`` in ``config.mesh`` for ``num_devices`` devices.

  A mesh with no ``-1`` axis may be smaller than the machine: it then spans
  the first devices (e.g. ``mesh.data=1`` for a one-device reference run).
  """
  shape = {axis: mesh_config[axis] for axis in MESH_AXES}
  for axis, size in shape.items():
    if not isinstance(size, int) or size == 0 or size < -1:
      _fail(f"mesh.{axis}", size, "must be a positive integer or -1")
  free = [axis for axis, size in shape.items() if size == -1]
  if len(free) > 1:
    raise ValueError(
        f"only one mesh axis may be -1; got {', '.join(f'mesh.{a}=-1' for a in free)}")
  fixed = math.prod(size for size in shape.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
          f"{_describe(shape)} leave no integer size for mesh.{free[0]}=-1 "
          f"with {num_devices=}")
    shape[free[0]] = num_devices // fixed
  if free and math.prod(shape.values()) != num_devices:
    raise ValueError(
        f"{_describe(shape)} span {math.prod(shape.values())} devices but "
        f"{num_devices=}")
  if math.prod(shape.values()) > num_devices:
    raise ValueError(
        f"{_describe(shape)} need {math.prod(shape.values())} devices but "
        f"only {num_devices=} are available")
  return shape


def _validate_s4(s4: ml_collections.ConfigDict) -> None:
  _check_int("model.s4.d_state", s4.d_state, minimum=2)
  if s4.d_state % 2:
    _fail("model.s4.d_state", s4.d_state,
          "must be even (the state comes in complex-conjugate pairs)")
  _check_choice("model.s4.mode", s4.mode, S4_MODES)
  _check_choice("model.s4.ssm_init", s4.ssm_init, S4_INITS)
  if s4.mode == "dplr" and s4.ssm_init != "legs":
    _fail("model.s4.ssm_init", s4.ssm_init,
          "is not supported with model.s4.mode='dplr' (the normal plus "
          "low-rank form exists for HiPPO-LegS only; use ssm_init='legs' or "
          "mode='diag')")
  _check_choice("model.s4.discretization", s4.discretization,
                S4_DISCRETIZATIONS)
  _check_float("model.s4.dt_min", s4.dt_min, low=0.0, low_open=True)
  _check_float("model.s4.dt_max", s4.dt_max, low=0.0, low_open=True)
  if s4.dt_min > s4.dt_max:
    raise ValueError(
        f"model.s4.dt_min={s4.dt_min!r} must be <= model.s4.dt_max={s4.dt_max!r}")
  _check_int("model.s4.l_max", s4.l_max, minimum=1, optional=True)
  _check_int("model.s4.rank", s4.rank, minimum=1)
  try:
    from layers import s4 as s4_layer  # pylint: disable=g-import-not-at-top
  except ImportError:
    s4_layer = None
  if s4_layer is not None and hasattr(s4_layer, "ACTIVATIONS"):
    _check_choice("model.s4.activation", s4.activation,
                  tuple(s4_layer.ACTIVATIONS))
  from kernels import Impl  # pylint: disable=g-import-not-at-top
  _check_choice("model.s4.impl", s4.impl, tuple(i.value for i in Impl))
  if s4.impl == Impl.PALLAS.value:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.default_backend() == "cpu":
      _fail("model.s4.impl", s4.impl,
            "needs a GPU or TPU; on a CPU use 'xla', 'auto' or "
            "'pallas_interpret'")


def validate_config(config: ml_collections.ConfigDict, *,
                    num_devices: int | None = None,
                    process_count: int = 1,
                    num_train_examples: int | None = None) -> None:
  """Raises ``ValueError`` naming the first bad field of ``config``.

  Args:
    config: the full experiment config.
    num_devices: devices the mesh spans; when given, the mesh shape and batch
      divisibility are checked.
    process_count: number of jax processes (hosts) that load data.
    num_train_examples: size of the training split; when given (or when
      ``train.num_steps`` is set) the warmup is checked against the total steps.
  """
  # Imported here, not at the top, so that importing configs stays cheap;
  # importing `layers` registers the built-in mixers.
  import layers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from layers import registry  # pylint: disable=g-import-not-at-top

  _check_int("seed", config.seed, minimum=0)

  # data: the fields every task shares, then the task's own (data.<task>.*).
  data = config.data
  task = find_task(data.task)
  for field in ("num_train", "num_validation", "num_test"):
    _check_int(f"data.{field}", data[field], minimum=1, optional=True)
  _check_int("data.batch_size", data.batch_size, minimum=1)
  _check_int("data.eval_batch_size", data.eval_batch_size, minimum=1)
  _check_int("data.worker_count", data.worker_count, minimum=0)
  _check_int("data.generate_workers", data.generate_workers, minimum=1)
  for field, value in (("data.batch_size", data.batch_size),
                       ("data.eval_batch_size", data.eval_batch_size)):
    if value % process_count:
      _fail(field, value, f"is not divisible by the {process_count=}")
  task.validate(data)
  info = task.info(data)

  # model
  model = config.model
  if model.mixer not in registry.MIXERS:
    _fail("model.mixer", model.mixer,
          f"is not a registered mixer (known: {sorted(registry.MIXERS)})")
  _check_int("model.d_model", model.d_model, minimum=1)
  _check_int("model.n_layers", model.n_layers, minimum=1)
  _check_choice("model.norm", model.norm, NORMS)
  _check_choice("model.output", model.output, OUTPUTS)
  _check_choice("model.pool", model.pool, POOLS)
  _check_float("model.dropout", model.dropout, low=0.0, high=1.0)
  if model.dropout >= 1.0:
    _fail("model.dropout", model.dropout, "must be < 1")
  _check_int("model.ff_mult", model.ff_mult, minimum=0)
  if not isinstance(model.prenorm, bool):
    _fail("model.prenorm", model.prenorm, "must be True or False")
  if model.mixer == "s4":
    if "s4" not in model:
      _fail("model.mixer", model.mixer, "needs the sub-config model.s4")
    _validate_s4(model.s4)
  if model.mixer == "mamba2":
    _validate_mamba2(model.mamba2, model.d_model)
  if model.mixer == "sgconv":
    _validate_sgconv(model.sgconv)
    if model.sgconv.channels > 1 and model.output == "none":
      _fail("model.output", model.output,
            f"cannot follow model.sgconv.channels={model.sgconv.channels}: the "
            "mixer then returns channels * d_model features, which the output "
            "projection ('glu' or 'linear') maps back to d_model")
    if model.sgconv.l_max is not None and model.sgconv.l_max < info.max_length:
      _fail("model.sgconv.l_max", model.sgconv.l_max,
            f"is shorter than the task's length {info.max_length}: the kernel "
            "must cover the longest input (None = the task's length)")
  _check_mixer_fields(model, registry.MIXERS[model.mixer])
  _check_int("model.dense_rank", model.get("dense_rank"), minimum=1,
             optional=True)
  if getattr(info, "output_kind", "class") == "forecast":
    _validate_forecast(config, info, registry)
  if getattr(info, "output_kind", "class") == "tokens":
    sub = model.get(model.mixer)
    if sub is not None and sub.get("bidirectional"):
      _fail(f"model.{model.mixer}.bidirectional", True,
            f"is impossible for data.task={data.task!r}, whose targets are "
            "predicted at every position from the tokens up to it (a causal "
            "model)")

  # optimizer
  optim = config.optim
  _check_choice("optim.optimizer", optim.optimizer, OPTIMIZERS)
  _check_float("optim.learning_rate", optim.learning_rate, low=0.0,
               low_open=True)
  _check_float("optim.weight_decay", optim.weight_decay, low=0.0)
  _check_float("optim.b1", optim.b1, low=0.0, high=1.0)
  _check_float("optim.b2", optim.b2, low=0.0, high=1.0)
  _check_float("optim.eps", optim.eps, low=0.0)
  _check_float("optim.grad_clip_norm", optim.grad_clip_norm, low=0.0,
               low_open=True, optional=True)
  _check_choice("optim.schedule", optim.schedule, SCHEDULES)
  _check_float("optim.decay_rate", optim.get("decay_rate", 0.5), low=0.0,
               high=1.0, low_open=True)
  _check_int("optim.decay_every_epochs", optim.get("decay_every_epochs", 1),
             minimum=1)
  _check_int("optim.warmup_steps", optim.warmup_steps, minimum=0)
  for name, group in optim.groups.items():
    prefix = f"optim.groups.{name}"
    if not isinstance(group, (ml_collections.ConfigDict, dict)):
      _fail(prefix, group, "must be a dict(pattern, learning_rate, weight_decay)")
    unknown = set(group.keys()) - {"pattern", "learning_rate", "weight_decay"}
    if unknown:
      raise ValueError(f"{prefix} has unknown fields {sorted(unknown)}; "
                       "expected pattern, learning_rate, weight_decay")
    pattern = group.get("pattern")
    if not isinstance(pattern, str) or not pattern:
      _fail(f"{prefix}.pattern", pattern, "must be a non-empty regex string")
    try:
      re.compile(pattern)
    except re.error as e:
      _fail(f"{prefix}.pattern", pattern, f"is not a valid regex ({e})")
    _check_float(f"{prefix}.learning_rate", group.get("learning_rate"),
                 low=0.0, low_open=True, optional=True)
    _check_float(f"{prefix}.weight_decay", group.get("weight_decay"),
                 low=0.0, optional=True)

  # training
  train = config.train
  _check_int("train.num_epochs", train.num_epochs, minimum=1)
  _check_int("train.num_steps", train.num_steps, minimum=1, optional=True)
  _check_int("train.log_every_steps", train.log_every_steps, minimum=1)
  _check_int("train.eval_every_steps", train.eval_every_steps, minimum=1,
             optional=True)
  _check_int("train.eval_steps", train.eval_steps, minimum=1, optional=True)
  _check_int("train.checkpoint_every_steps", train.checkpoint_every_steps,
             minimum=1)
  if train.checkpoint_every_steps % train.log_every_steps:
    raise ValueError(
        f"train.checkpoint_every_steps={train.checkpoint_every_steps} must be a "
        f"multiple of train.log_every_steps={train.log_every_steps} (a resumed "
        "run must start at the beginning of a logging window)")
  _check_int("train.keep_checkpoints", train.keep_checkpoints, minimum=1)
  _check_choice("train.best_metric", train.get("best_metric"),
                (None, "accuracy", "loss", "mse", "mae"))
  if train.get("best_metric") is not None:
    forecast = getattr(info, "output_kind", "class") == "forecast"
    allowed = ("loss", "mse", "mae") if forecast else ("accuracy", "loss")
    if train.best_metric not in allowed:
      _fail("train.best_metric", train.best_metric,
            f"is not a validation metric of data.task={data.task!r} "
            f"(one of {allowed})")
  _check_int("train.early_stopping_patience",
             train.get("early_stopping_patience"), minimum=1, optional=True)
  _check_int("train.stop_after_step", train.stop_after_step, minimum=1,
             optional=True)
  num_steps = total_steps(config, num_train_examples)
  if num_steps is not None and optim.warmup_steps > num_steps:
    raise ValueError(
        f"optim.warmup_steps={optim.warmup_steps} is larger than the total "
        f"training steps ({num_steps})")

  # mesh
  for axis in MESH_AXES:
    if axis not in config.mesh:
      raise ValueError(f"mesh.{axis} is missing")
  rules = config.mesh.logical_axis_rules
  try:
    for logical, mesh_axes in rules:
      if not isinstance(logical, str):
        raise TypeError
      axes = (mesh_axes,) if mesh_axes is None or isinstance(
          mesh_axes, str) else tuple(mesh_axes)
      for axis in axes:
        if axis is not None and axis not in MESH_AXES:
          _fail("mesh.logical_axis_rules", rules,
                f"maps {logical!r} to unknown mesh axis {axis!r} "
                f"(mesh axes: {MESH_AXES})")
  except (TypeError, ValueError) as e:
    if isinstance(e, ValueError):
      raise
    _fail("mesh.logical_axis_rules", rules,
          "must be a sequence of (logical name, mesh axis or axes) pairs")
  if num_devices is not None:
    shape = mesh_shape(config.mesh, num_devices)
    data_parallel = math.prod(shape[a] for a in DATA_PARALLEL_AXES)
    for field, value in (("data.batch_size", data.batch_size),
                         ("data.eval_batch_size", data.eval_batch_size)):
      if value % data_parallel:
        _fail(field, value,
              f"is not divisible by the {data_parallel} data-parallel devices "
              f"(mesh data x fsdp = {shape['data']} x {shape['fsdp']})")


def _validate_mamba2(m2: ml_collections.ConfigDict, d_model: int) -> None:
  for field in ("d_state", "d_conv", "expand", "head_dim", "n_groups",
                "chunk_size"):
    _check_int(f"model.mamba2.{field}", m2[field], minimum=1)
  d_inner = m2.expand * d_model
  if d_inner % m2.head_dim:
    _fail("model.mamba2.head_dim", m2.head_dim,
          f"does not divide the inner width expand * d_model = {m2.expand} * "
          f"{d_model} = {d_inner}")
  heads = d_inner // m2.head_dim
  if heads % m2.n_groups:
    _fail("model.mamba2.n_groups", m2.n_groups,
          f"does not divide the {heads} heads (expand * d_model / head_dim)")
  _check_float("model.mamba2.dt_min", m2.dt_min, low=0.0, low_open=True)
  _check_float("model.mamba2.dt_max", m2.dt_max, low=0.0, low_open=True)
  if m2.dt_min > m2.dt_max:
    raise ValueError(f"model.mamba2.dt_min={m2.dt_min!r} must be <= "
                     f"model.mamba2.dt_max={m2.dt_max!r}")
  _check_float("model.mamba2.a_init_min", m2.a_init_min, low=0.0,
               low_open=True)
  _check_float("model.mamba2.a_init_max", m2.a_init_max, low=0.0,
               low_open=True)
  if m2.a_init_min > m2.a_init_max:
    raise ValueError(f"model.mamba2.a_init_min={m2.a_init_min!r} must be <= "
                     f"model.mamba2.a_init_max={m2.a_init_max!r}")
  from kernels import Impl  # pylint: disable=g-import-not-at-top
  _check_choice("model.mamba2.impl", m2.impl,
                (Impl.AUTO.value, Impl.REFERENCE.value, Impl.XLA.value))
  _check_float("model.mamba2.decay_scale", m2.decay_scale, low=1.0)
  _check_float("model.mamba2.insert_scale", m2.insert_scale, low=0.0,
               high=1.0, low_open=True)
  _check_float("model.mamba2.state_norm", m2.state_norm, low=0.0,
               low_open=True, optional=True)
  _check_int("model.mamba2.window", m2.window, minimum=1, optional=True)
  if m2.window is not None and m2.state_norm is not None:
    _fail("model.mamba2.window", m2.window,
          f"cannot be combined with model.mamba2.state_norm={m2.state_norm!r}: "
          "the state difference is exact only for the linear recurrence")


def _validate_sgconv(sg: ml_collections.ConfigDict) -> None:
  _check_int("model.sgconv.kernel_dim", sg.kernel_dim, minimum=1)
  _check_int("model.sgconv.n_scales", sg.n_scales, minimum=1, optional=True)
  _check_float("model.sgconv.decay", sg.decay, low=0.0, low_open=True)
  _check_int("model.sgconv.channels", sg.channels, minimum=1)
  _check_int("model.sgconv.l_max", sg.l_max, minimum=1, optional=True)
  from kernels import Impl  # pylint: disable=g-import-not-at-top
  from layers import sgconv  # pylint: disable=g-import-not-at-top
  _check_choice("model.sgconv.impl", sg.impl, tuple(i.value for i in Impl))
  _check_choice("model.sgconv.activation", sg.activation,
                tuple(sgconv.ACTIVATIONS))


def _check_mixer_fields(model: ml_collections.ConfigDict, mixer_cls,
                        name: str | None = None) -> None:
  """``model.<mixer>`` may only set fields the mixer class has."""
  name = model.mixer if name is None else name
  sub = model.get(name)
  if sub is None:
    return
  fields = {f.name for f in dataclasses.fields(mixer_cls)} - {
      "parent", "name", "d_model"}
  unknown = sorted(set(sub.keys()) - fields)
  if unknown:
    raise ValueError(
        f"model.{name} sets {unknown}, which the {name!r} mixer "
        f"({mixer_cls.__module__}.{mixer_cls.__name__}) does not have; its "
        f"fields: {sorted(fields)}")


INFORMER_ATTNS = ("prob", "full")
INFORMER_EMBEDS = ("timeF", "fixed", "learned")


def _validate_forecast(config: ml_collections.ConfigDict, info,
                       registry) -> None:
  """The Informer model and the forecasting windows."""
  data, model = config.data, config.model
  inf = model.informer
  _check_choice("model.informer.attn", inf.attn, INFORMER_ATTNS)
  _check_int("model.informer.factor", inf.factor, minimum=1)
  _check_int("model.informer.n_heads", inf.n_heads, minimum=1)
  if model.d_model % inf.n_heads:
    _fail("model.informer.n_heads", inf.n_heads,
          f"does not divide model.d_model={model.d_model}")
  _check_int("model.informer.e_layers", inf.e_layers, minimum=1)
  _check_int("model.informer.d_layers", inf.d_layers, minimum=1)
  _check_int("model.informer.d_ff", inf.d_ff, minimum=1)
  _check_choice("model.informer.embed", inf.embed, INFORMER_EMBEDS)
  # The forecasting task's windows are checked by its own validate; the time
  # encoding must match the embedding.
  timeenc = data[data.task].get("timeenc", 1) if data.task in data else 1
  if (inf.embed == "timeF") != (timeenc == 1):
    _fail("model.informer.embed", inf.embed,
          f"does not match data.{data.task}.timeenc={timeenc} (timeF embeds the "
          "real time features of timeenc=1; fixed/learned embed the integer ones "
          "of timeenc=0)")
  if inf.encoder_mixer is not None:
    if inf.encoder_mixer not in registry.MIXERS:
      _fail("model.informer.encoder_mixer", inf.encoder_mixer,
            f"is not a registered mixer (known: {sorted(registry.MIXERS)})")
    _check_mixer_fields(model, registry.MIXERS[inf.encoder_mixer],
                        inf.encoder_mixer)


def find_task(name: str):
  """The registered task ``name`` (``config.data.task``)."""
  from data import tasks  # pylint: disable=g-import-not-at-top
  if name in tasks.TASKS:  # Registered already (e.g. by a test or notebook).
    return tasks.TASKS[name]
  try:
    return tasks.get_task(name)
  except ValueError:
    _fail("data.task", name,
          f"is not a registered task (known: {sorted(tasks.TASKS)})")
  except ImportError as e:
    _fail("data.task", name,
          f"is not a registered task (known: {sorted(tasks.TASKS)}; importing "
          f"the built-in task modules failed: {e})")


def total_steps(config: ml_collections.ConfigDict,
                num_train_examples: int | None) -> int | None:
  """Training steps of the whole run (None if the split size is unknown)."""
  if config.train.num_steps is not None:
    return config.train.num_steps
  if num_train_examples is None:
    num_train_examples = config.data.num_train
  if num_train_examples is None:
    return None
  steps_per_epoch = num_train_examples // config.data.batch_size
  if steps_per_epoch == 0:
    _fail("data.batch_size", config.data.batch_size,
          f"is larger than the training split ({num_train_examples} examples)")
  return steps_per_epoch * config.train.num_epochs
