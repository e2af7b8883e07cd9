"""Checks a config before anything is built or compiled.

Every error is a ``ValueError`` that names the field and its value, e.g.
``ValueError("model.s4.d_state=63 must be even ...")``.
"""
import math

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

DTYPES = ("float32", "bfloat16")


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
  _check_int("model.dense_rank", model.get("dense_rank"), minimum=1,
             optional=True)
  for field in ("dtype", "param_dtype"):
    _check_choice(f"model.{field}", model.get(field, "float32"), DTYPES)
  output_kind = getattr(info, "output_kind", "class")
  if output_kind == "forecast":
    _validate_forecast(config, info, registry)
    # A registered mixer in the encoder sees the input window.
    mixer, max_length = model.informer.get("encoder_mixer"), info.max_length
  else:
    mixer = model.mixer
    max_length = info.max_length + (
        1 if output_kind == "class" and model.pool == "cls" else 0)
  if mixer is not None:
    validate_mixer(config, mixer, max_length=max_length,
                   causal=output_kind == "tokens")

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
    _check_group(f"optim.groups.{name}", group)

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
  _check_int("train.max_nonfinite_steps", train.max_nonfinite_steps,
             minimum=0)
  total_steps(config, num_train_examples)  # Checks the warmup against them.

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


GROUP_FIELDS = ("pattern", "learning_rate", "weight_decay")


def _check_group(prefix: str, group) -> None:
  """An optimizer group: ``{pattern, learning_rate, weight_decay}``."""
  if not isinstance(group, (ml_collections.ConfigDict, dict)):
    _fail(prefix, group, "must be a dict(pattern, learning_rate, weight_decay)")
  unknown = set(group.keys()) - set(GROUP_FIELDS)
  if unknown:
    raise ValueError(f"{prefix} has unknown fields {sorted(unknown)}; "
                     "expected pattern, learning_rate, weight_decay")
  checks.check_regex(f"{prefix}.pattern", group.get("pattern"))
  _check_float(f"{prefix}.learning_rate", group.get("learning_rate"),
               low=0.0, low_open=True, optional=True)
  _check_float(f"{prefix}.weight_decay", group.get("weight_decay"),
               low=0.0, optional=True)


def validate_mixer(config: ml_collections.ConfigDict, name: str, *,
                   max_length: int | None, causal: bool) -> None:
  """Checks the mixer ``name``'s fields (``model.<name>``) with the mixer's
  own validation, and its optimizer groups."""
  from layers import registry  # pylint: disable=g-import-not-at-top
  spec = registry.get_spec(name)
  model = config.model
  prefix = f"model.{name}"
  sub = model.get(name)
  if sub is None:
    sub = spec.default_config()
  declared = set(spec.default_config().keys())
  unknown = sorted(set(sub.keys()) - declared)
  if unknown:
    raise ValueError(
        f"{prefix} sets {unknown}, which the {name!r} mixer "
        f"({spec.module.__module__}.{spec.module.__name__}) does not have; "
        f"its fields: {sorted(declared)}")
  spec.validate(sub, registry.MixerContext(
      prefix=prefix, d_model=model.d_model, output=model.output,
      max_length=max_length, causal=causal))
  for group, fields in spec.optim_groups(sub).items():
    _check_group(f"{prefix}.{registry.OPTIM_GROUPS}.{group}", fields)
    if group in config.optim.groups:
      _fail(f"{prefix}.{registry.OPTIM_GROUPS}.{group}", fields["pattern"],
            f"names a group that optim.groups.{group} also defines; rename "
            "one of them")


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
  """Training steps of the whole run (None if the split size is unknown).

  Raises ``ValueError`` if a batch is larger than the training split or the
  warmup longer than the run: the checks that need the split's size, which
  the trainer knows only once it has the data.
  """
  num_steps = config.train.num_steps
  if num_steps is None:
    if num_train_examples is None:
      num_train_examples = config.data.num_train
    if num_train_examples is None:
      return None
    steps_per_epoch = num_train_examples // config.data.batch_size
    if steps_per_epoch == 0:
      _fail("data.batch_size", config.data.batch_size,
            f"is larger than the training split ({num_train_examples} examples)")
    num_steps = steps_per_epoch * config.train.num_epochs
  if config.optim.warmup_steps > num_steps:
    raise ValueError(
        f"optim.warmup_steps={config.optim.warmup_steps} is larger than the "
        f"total training steps ({num_steps})")
  return num_steps
