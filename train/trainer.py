"""Training and evaluation loop: ``train_and_evaluate(config, workdir)``.

The run directory ``workdir`` holds::

  checkpoints/        latest checkpoints (train.keep_checkpoints of them)
  checkpoints_best/   the checkpoint with the best validation metric (train.best_metric)
  config.json         the config the run was started with (train.run_config)
  metrics.jsonl       one JSON record per log / evaluation
  tensorboard/<split> TensorBoard event files
  test_metrics.json   the best checkpoint's test metrics (written at the end)

What a step computes (``TrainState``, the losses, ``train_step``,
``eval_step``, ``evaluate``) is train/steps.py; this module is the run around
it. A checkpoint holds the train state (step, params, batch statistics,
optimizer state), the dropout key and the data iterator's position, so a run
killed after any step and started again with the same command continues from
its last checkpoint and logs exactly what an uninterrupted run logs.
"""
import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

import models
from configs import checks
from configs import validate
from data import pipeline
from data import provenance
from train import checkpoints
from train import interrupts
from train import metrics as metrics_lib
from train import nonfinite
from train import optim as optim_lib
from train import partitioning
from train import run_config
from train import steps


# The step-level API, also reachable from here.
TrainState = steps.TrainState
best_metric = steps.best_metric
dummy_inputs = steps.dummy_inputs
evaluate = steps.evaluate

# Errors that end a run with a message naming the cause (python -m train
# prints them in one line).
RUN_ERRORS = (checks.ConfigError, nonfinite.NonFiniteError,
              run_config.ConfigMismatchError, checkpoints.CheckpointError,
              provenance.StaleDataError)

# ``hook(step, state)``: see ``train_and_evaluate``'s ``hooks``.
StepHook = Callable[[int, steps.TrainState], None]


@dataclasses.dataclass(frozen=True)
class _Setup:
  """What a run builds before its first step and never changes."""
  config: ml_collections.ConfigDict
  task: Any  # data.tasks.Task
  info: Any  # data.tasks.TaskInfo
  sources: Mapping[str, Any]  # {"train" | "validation" | "test": source}
  val_batches: Any  # One pass over the validation split per iteration.
  steps_per_epoch: int
  total_steps: int
  eval_every: int  # Steps between validation evaluations.
  schedules: dict[str, optax.Schedule]  # Learning rate of each group.
  metric_name: str  # The validation metric that picks the best checkpoint,
  metric_mode: str  # and whether its "min" or its "max" is best.
  mesh: jax.sharding.Mesh
  rules: tuple  # Logical axis rules.
  data_sharding: jax.sharding.NamedSharding
  # Shapes, dtypes and shardings to restore into.
  abstract_state: steps.TrainState
  init_state: Callable[[], steps.TrainState]  # The step-0 state, on the mesh.
  dropout_rng: jax.Array  # A fresh run's dropout key.
  train_step: Callable  # Jitted steps.make_train_step and steps.make_eval_step.
  eval_step: Callable
  is_main: bool  # Process 0 writes the logs and test_metrics.json.
  # Names of the leaves the train step's health flags refer to.
  grad_names: list[str]
  variable_names: list[str]


def _setup(config: ml_collections.ConfigDict, devices) -> _Setup:
  """The data sources, model, optimizer, mesh, shardings and jitted steps of
  a validated ``config``."""
  task = validate.find_task(config.data.task)
  info = task.info(config.data)
  sources = task.sources(config.data)
  num_train = len(sources["train"])
  # The checks that need the split's size: validate_config ran without it.
  total_steps = validate.total_steps(config, num_train)
  steps_per_epoch = pipeline.steps_per_epoch(num_train, config.data.batch_size)

  model = models.build_model(config.model, info)
  tx, schedules, _ = optim_lib.make_optimizer(
      config.optim, total_steps, steps_per_epoch=steps_per_epoch,
      mixer_groups=steps.mixer_groups(config.model, info))
  metric_name, metric_mode = steps.best_metric(config, info)

  mesh = partitioning.make_mesh(config.mesh, devices)
  rules = partitioning.axis_rules(config.mesh)
  data_sharding = partitioning.batch_sharding(mesh, rules)
  data_parallel = partitioning.data_parallel_size(mesh, rules)
  for field in ("batch_size", "eval_batch_size"):
    if config.data[field] % data_parallel:  # Rules may split "batch" anew.
      raise ValueError(
          f"data.{field}={config.data[field]} is not divisible by the "
          f"{data_parallel} devices that mesh.logical_axis_rules split the "
          "batch over")
  replicated = partitioning.replicated(mesh)
  spec = pipeline.element_spec(task, config.data, sources["train"])
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))

  def init_variables(rng):
    dummy = {k: jnp.zeros((1,) + v.shape, v.dtype) for k, v in spec.items()}
    dummy["mask"] = jnp.ones((1,) + spec["mask"].shape, bool)
    args, kwargs = steps.model_args(dummy, info)
    params_rng, dropout_init_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_init_rng,
                       "sample": dropout_init_rng}, *args, train=False,
                      **kwargs)

  def create_state(rng):
    variables = nn.unbox(init_variables(rng))
    params = variables["params"]
    return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      constants=variables.get("constants", {}),
                      opt_state=tx.init(params))

  with partitioning.mesh_context(mesh, rules):
    boxed = jax.eval_shape(init_variables, init_rng)
    var_shardings = partitioning.variables_sharding(boxed, mesh, rules)
    abstract_vars = steps.unbox_without_constraints(boxed)
    params_sharding = var_shardings["params"]
    abstract_opt = jax.eval_shape(tx.init, abstract_vars["params"])
    opt_sharding = partitioning.like_params_sharding(
        abstract_opt, abstract_vars["params"], params_sharding, replicated)
    state_sharding = steps.TrainState(
        step=replicated, params=params_sharding,
        batch_stats=var_shardings.get("batch_stats", {}),
        constants=var_shardings.get("constants", {}),
        opt_state=opt_sharding)
    abstract_state = steps.abstract_like(
        jax.eval_shape(create_state, init_rng), state_sharding)
  train_step = jax.jit(
      steps.make_train_step(model, tx, info),
      in_shardings=(state_sharding, data_sharding, replicated),
      out_shardings=(state_sharding, replicated, replicated),
      donate_argnums=(0,))
  eval_step = jax.jit(steps.make_eval_step(model, info),
                      in_shardings=(state_sharding, data_sharding, replicated),
                      out_shardings=replicated)
  init_state = functools.partial(
      jax.jit(create_state, out_shardings=state_sharding), init_rng)
  return _Setup(
      config=config, task=task, info=info, sources=sources,
      val_batches=pipeline.make_eval_iterable(
          task, config.data, "validation", source=sources["validation"]),
      steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      eval_every=config.train.eval_every_steps or steps_per_epoch,
      schedules=schedules, metric_name=metric_name, metric_mode=metric_mode,
      mesh=mesh, rules=rules, data_sharding=data_sharding,
      abstract_state=abstract_state, init_state=init_state,
      dropout_rng=dropout_rng, train_step=train_step, eval_step=eval_step,
      is_main=jax.process_index() == 0,
      grad_names=nonfinite.leaf_names(abstract_state.params),
      variable_names=nonfinite.leaf_names(
          {"params": abstract_state.params,
           "batch_stats": abstract_state.batch_stats}))


@dataclasses.dataclass
class _Run:
  """What the loop advances and checkpoints, and where it writes."""
  state: steps.TrainState
  dropout_rng: jax.Array
  # Early stopping: the best validation value so far, the evaluations since
  # it, and whether the run has stopped (all saved with each checkpoint).
  stopping: dict[str, Any]
  train_iter: grain.DatasetIterator  # Its position is checkpointed.
  manager: ocp.CheckpointManager  # The latest checkpoints (to resume).
  best_manager: ocp.CheckpointManager  # The best-by-validation checkpoint.
  # Write each finished save's CHECKSUMS.json (train/checkpoints.py).
  checksums: checkpoints.Checksums
  best_checksums: checkpoints.Checksums
  writer: metrics_lib.MetricWriter
  seed: int  # config.seed, saved with each checkpoint.
  start_step: int  # The step the loop continues after.
  # Steps skipped for non-finite values (train.max_nonfinite_steps).
  nonfinite_steps: list[int] = dataclasses.field(default_factory=list)
  # The metric sums of the steps since the last train record, and how many
  # (saved with a checkpoint between records: an interrupt's).
  sums: dict[str, Any] | None = None
  window: int = 0
  validation: dict[str, float] | None = None  # This run's last evaluation.

  def save(self, manager: ocp.CheckpointManager, step: int, metrics=None, *,
           with_data: bool = True) -> None:
    """Starts writing the checkpoint of ``step`` (asynchronously)."""
    items = {"state": ocp.args.StandardSave(self.state)}
    if with_data:
      items["data"] = grain.checkpoint.CheckpointSave(self.train_iter)
      items["meta"] = ocp.args.JsonSave({
          "dropout_rng": np.asarray(
              jax.random.key_data(self.dropout_rng)).tolist(),
          "seed": self.seed, "early_stopping": dict(self.stopping),
          "nonfinite_steps": list(self.nonfinite_steps),
          "window": {"steps": self.window, "sums": None if self.sums is None
                     else {k: float(v) for k, v in
                           jax.device_get(self.sums).items()}}})
    checksums = (self.checksums if manager is self.manager
                 else self.best_checksums)
    # Orbax's save waits for the manager's previous save to finish anyway:
    # its checksums are written first.
    checksums.poll(wait=True)
    manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                 force=True)
    checksums.saved(step)

  def poll_checksums(self) -> None:
    """Writes the checksums of the saves that have finished since."""
    self.checksums.poll()
    self.best_checksums.poll()

  def finish_writes(self) -> None:
    """Waits for the checkpoints, stops the data workers, flushes the logs."""
    self.checksums.poll(wait=True)
    self.best_checksums.poll(wait=True)
    self.manager.wait_until_finished()
    self.best_manager.wait_until_finished()
    self.train_iter.close()  # Stops grain's worker processes, if any.
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()
    self.manager.close()
    self.best_manager.close()


def _create_or_restore(setup: _Setup, workdir: str) -> _Run:
  """A fresh run, or the one whose latest checkpoint is in ``workdir``: its
  state, dropout key, data position and early-stopping record."""
  config = setup.config
  train_iter = pipeline.make_train_iterator(
      setup.task, config.data, seed=config.seed, source=setup.sources["train"])
  ckpt_dir = os.path.join(workdir, "checkpoints")
  manager = checkpoints.manager(
      ckpt_dir, max_to_keep=config.train.keep_checkpoints, best=False)
  best_manager = checkpoints.manager(
      os.path.join(workdir, "checkpoints_best"), max_to_keep=1, best=True,
      metric=setup.metric_name, mode=setup.metric_mode)
  stopping = {"best": None, "evals_since_best": 0, "stopped_early": False}
  nonfinite_steps, sums, saved_window = [], None, {"steps": 0}
  # The newest checkpoint that verifies and restores; newer unusable ones are
  # reported and set aside.
  latest, restored = checkpoints.restore_latest_usable(
      manager, lambda: ocp.args.Composite(
          state=ocp.args.StandardRestore(setup.abstract_state),
          data=grain.checkpoint.CheckpointRestore(train_iter),
          meta=ocp.args.JsonRestore()),
      set_aside=setup.is_main)
  if latest is None:
    state, dropout_rng = setup.init_state(), setup.dropout_rng
  else:
    logging.info("resuming from %s step %d", ckpt_dir, latest)
    state = restored["state"]
    dropout_rng = jax.random.wrap_key_data(
        np.asarray(restored["meta"]["dropout_rng"], np.uint32))
    stopping.update(restored["meta"].get("early_stopping", {}))
    nonfinite_steps = list(restored["meta"].get("nonfinite_steps", []))
    saved_window = restored["meta"].get("window") or {"steps": 0}
    if saved_window.get("sums") is not None:  # float32 values, exactly.
      sums = {k: np.float32(v) for k, v in saved_window["sums"].items()}
  start_step = int(jax.device_get(state.step))
  # Best-by-validation checkpoints the interrupted run wrote after the
  # checkpoint it resumes from are redone by this run.
  for step in best_manager.all_steps():
    if step > start_step:
      best_manager.delete(step)
  writer = metrics_lib.MetricWriter(
      workdir, resume_step=None if latest is None else start_step,
      enabled=setup.is_main)
  return _Run(state=state, dropout_rng=dropout_rng, stopping=stopping,
              train_iter=train_iter, manager=manager,
              best_manager=best_manager, writer=writer, seed=config.seed,
              checksums=checkpoints.Checksums(manager, enabled=setup.is_main),
              best_checksums=checkpoints.Checksums(best_manager,
                                                   enabled=setup.is_main),
              start_step=start_step, nonfinite_steps=nonfinite_steps,
              sums=sums, window=saved_window["steps"])


def _train_means(setup: _Setup, step: int, sums, window: int,
                 window_start: float) -> dict[str, float]:
  """The train record of the ``window`` steps up to ``step``: the means
  over its finite steps (none: no loss is recorded), and with
  ``train.max_nonfinite_steps`` the number of steps it skipped."""
  sums = {k: float(v) for k, v in jax.device_get(sums).items()}
  finite = sums.pop("finite_steps")
  means = {k: v / finite for k, v in sums.items()} if finite else {}
  if setup.config.train.max_nonfinite_steps:
    means["skipped_steps"] = float(window - finite)
  means["learning_rate"] = float(
      setup.schedules[optim_lib.DEFAULT_GROUP](step - 1))
  means["epoch"] = step / setup.steps_per_epoch
  elapsed = time.perf_counter() - window_start
  means["steps_per_second"] = window / max(elapsed, 1e-9)
  return means


def _summary(metrics: Mapping[str, float]) -> str:
  """``accuracy 0.8125, loss 0.4312`` (the example count left out)."""
  return ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())
                   if k != "num_examples")


def _evaluate_validation(setup: _Setup, run: _Run, step: int) -> bool:
  """Evaluates ``run.state`` on the validation split, logs it, saves it if it
  is the best so far; returns whether early stopping ends the run here."""
  config = setup.config
  run.validation = steps.evaluate(
      setup.eval_step, run.state, setup.val_batches, setup.data_sharding,
      config.train.eval_steps, seed=config.seed)
  nonfinite.check_metrics(f"validation at step {step}", run.validation)
  run.writer.write(step, "validation", run.validation)
  value = run.validation[setup.metric_name]
  stopping = run.stopping
  best = stopping["best"]
  improved = best is None or (value < best if setup.metric_mode == "min"
                              else value > best)
  logging.info("validation at step %d: %s%s", step, _summary(run.validation),
               " (best so far)" if improved else
               f" (best {setup.metric_name} {best:.4g})")
  # Only a strict improvement counts (the first of equal values stays the
  # best), as the Informer's early stopping.
  if improved:
    stopping["best"], stopping["evals_since_best"] = value, 0
    run.save(run.best_manager, step, {setup.metric_name: value},
             with_data=False)
  else:
    stopping["evals_since_best"] += 1
  patience = config.train.get("early_stopping_patience")
  if patience is None or stopping["evals_since_best"] < patience:
    return False
  logging.info("early stopping at step %d: validation %s has not improved "
               "for %d evaluations (train.early_stopping_patience)", step,
               setup.metric_name, patience)
  stopping["stopped_early"] = True
  return True


def _check_step(setup: _Setup, run: _Run, step: int, health) -> None:
  """Counts a non-finite ``step`` (its update was not applied); raises
  ``NonFiniteError`` once more than ``train.max_nonfinite_steps`` were."""
  if bool(jax.device_get(health["finite"])):
    return
  health = jax.device_get(health)
  what = nonfinite.describe(step, health, setup.grad_names,
                            setup.variable_names)
  allowed = setup.config.train.max_nonfinite_steps
  run.nonfinite_steps.append(step)
  if len(run.nonfinite_steps) > allowed:
    raise nonfinite.NonFiniteError(
        f"{what}. The run stops here (steps skipped before: "
        f"{run.nonfinite_steps[:-1] or 'none'}, train.max_nonfinite_steps="
        f"{allowed}); no checkpoint holds a non-finite state.")
  logging.warning("%s: skipped, the state is that of step %d (%d of "
                  "train.max_nonfinite_steps=%d)", what, step - 1,
                  len(run.nonfinite_steps), allowed)


def _train_loop(setup: _Setup, run: _Run, hooks: Sequence[StepHook],
                signals: interrupts.Signals) -> None:
  """Trains from ``run.start_step`` to the last step, an early stop or
  ``train.stop_after_step``: logs, evaluates and checkpoints on the way.
  After a SIGINT / SIGTERM it saves the step it has finished and raises
  ``interrupts.Interrupted``."""
  config, total_steps = setup.config, setup.total_steps
  stop_after = config.train.stop_after_step
  window_start = time.perf_counter()
  # The health of the last step, checked once the next one is dispatched
  # (the device need not wait for the host), or before anything is logged,
  # evaluated or saved.
  pending = None
  bar = tqdm.tqdm(total=total_steps, initial=run.start_step, unit="step",
                  disable=not (config.train.progress_bar and setup.is_main))
  try:
    for step in range(run.start_step + 1, total_steps + 1):
      if run.stopping["stopped_early"]:  # Resumed from the stopping step.
        break
      batch = partitioning.global_batch(next(run.train_iter),
                                        setup.data_sharding)
      run.state, step_metrics, health = setup.train_step(
          run.state, batch, run.dropout_rng)
      if pending is not None:
        _check_step(setup, run, *pending)
      pending = (step, health)
      if (step % config.train.log_every_steps == 0 or step == total_steps
          or step % setup.eval_every == 0
          or step % config.train.checkpoint_every_steps == 0
          or (stop_after is not None and step >= stop_after)):
        _check_step(setup, run, *pending)
        pending = None
      run.sums = step_metrics if run.sums is None else jax.tree.map(
          jnp.add, run.sums, step_metrics)
      run.window += 1
      bar.update(1)
      if step % config.train.log_every_steps == 0 or step == total_steps:
        means = _train_means(setup, step, run.sums, run.window, window_start)
        run.writer.write(step, "train", means)
        bar.set_postfix({k: f"{means[k]:.4f}" for k in ("loss", "accuracy")
                         if k in means})
        run.sums, run.window, window_start = None, 0, time.perf_counter()

      stop = ((step % setup.eval_every == 0 or step == total_steps)
              and _evaluate_validation(setup, run, step))
      saved = True
      if stop:  # Early: the checkpoint records that the run has stopped.
        run.save(run.manager, step)
      elif stop_after is not None and step >= stop_after:
        logging.info("stopping after step %d (train.stop_after_step)", step)
        stop, saved = True, False
      elif (step % config.train.checkpoint_every_steps == 0
            or step == total_steps):
        run.save(run.manager, step)
      else:
        saved = False
      run.poll_checksums()
      for hook in hooks:  # The checkpoint of this step may still be writing.
        hook(step, run.state)
      if signals.received and not stop:
        if pending is not None:
          _check_step(setup, run, *pending)
          pending = None
        if not saved:  # With the unlogged steps' sums: exact resume.
          run.save(run.manager, step)
        logging.warning("%s: saved the checkpoint of step %d; rerun the same "
                        "command to resume", signals.name, step)
        raise interrupts.Interrupted(
            f"stopped by {signals.name} after step {step}; its checkpoint "
            "is saved: rerun the same command to resume", signals.received)
      if stop:
        break
    if pending is not None:
      _check_step(setup, run, *pending)
  finally:
    bar.close()
    run.finish_writes()


def _final_evaluation(setup: _Setup, run: _Run, workdir: str) -> dict:
  """The test metrics of the best checkpoint (else of ``run.state``), logged
  and written atomically to ``workdir/test_metrics.json``."""
  config = setup.config
  best_step = run.best_manager.best_step()
  test_state = run.state
  if best_step is not None:
    test_state = checkpoints.restore_verified(
        run.best_manager, best_step, ocp.args.Composite(
            state=ocp.args.StandardRestore(setup.abstract_state)))["state"]
  test_batches = pipeline.make_eval_iterable(
      setup.task, config.data, "test", source=setup.sources["test"])
  test = steps.evaluate(setup.eval_step, test_state, test_batches,
                        setup.data_sharding, seed=config.seed)
  # The step is the evaluated checkpoint's (the best validation one).
  test_step = int(jax.device_get(test_state.step))
  nonfinite.check_metrics(f"test of the step-{test_step} checkpoint", test)
  run.writer.write(test_step, "test", test)
  logging.info("test of the checkpoint of step %d%s: %s", test_step,
               " (best validation)" if best_step is not None else "",
               _summary(test))
  test["step"] = test_step
  if setup.is_main:  # Written atomically: a reader never sees half a file.
    path = os.path.join(workdir, "test_metrics.json")
    with open(path + ".tmp", "w") as f:
      json.dump(test, f, indent=2)
    os.replace(path + ".tmp", path)
  return test


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, devices=None,
                       hooks: Sequence[StepHook] = ()) -> dict[str, Any]:
  """Trains ``config``'s model on its task, evaluating and checkpointing.

  Args:
    config: a config as configs/default.py describes (validated here).
    workdir: the run directory; an existing checkpoint there is resumed.
    devices: devices for the mesh (default: all of ``jax.devices()``).
    hooks: ``hook(step, state)`` callables, called after every step once its
      checkpoint, if it has one, has started writing (tests kill a run there).
      ``state`` is that step's ``steps.TrainState``; the next step donates it.

  Returns:
    ``{"step", "validation": last validation metrics, "stopped_early",
    "test": test metrics (when the run has finished)}``.
  """
  if devices is None:
    devices = jax.devices()
  try:
    validate.validate_config(config, num_devices=len(devices),
                             process_count=jax.process_count())
  except ValueError as e:  # Every check names the field: no traceback.
    if isinstance(e, checks.ConfigError):
      raise
    raise checks.ConfigError(str(e)) from e
  # Before any data is built or anything compiles.
  run_config.check_and_record(config, workdir,
                              write=jax.process_index() == 0)
  setup = _setup(config, devices)
  with partitioning.mesh_context(setup.mesh, setup.rules):
    run = _create_or_restore(setup, workdir)
    with interrupts.Signals().installed() as signals:
      _train_loop(setup, run, hooks, signals)
    step = int(jax.device_get(run.state.step))
    result = {"step": step, "validation": run.validation,
              "stopped_early": run.stopping["stopped_early"]}
    finished = step >= setup.total_steps or run.stopping["stopped_early"]
    if finished and config.train.test_at_end:
      result["test"] = _final_evaluation(setup, run, workdir)
    run.close()
  return result


def restore_model(config: ml_collections.ConfigDict, workdir: str, *,
                  best: bool = True, info=None) -> tuple[nn.Module, dict, int]:
  """The model of a run and its trained variables, on one device.

  Args:
    config: the run's config.
    workdir: the run directory ``train_and_evaluate`` wrote.
    best: restore the best-by-validation checkpoint (else the latest one).
    info: the task's ``TaskInfo`` (default: from ``config.data``).

  Returns:
    ``(model, variables, step)``: ``model.apply(variables, inputs, mask)``
    evaluates the checkpoint of optimizer step ``step``.
  """
  validate.validate_config(config)  # Mesh unchecked: this is one device.
  if info is None:
    info = validate.find_task(config.data.task).info(config.data)
  model = models.build_model(config.model, info)
  tx, _, _ = optim_lib.make_optimizer(
      config.optim, max(config.optim.warmup_steps + 1, 2), steps_per_epoch=1,
      mixer_groups=steps.mixer_groups(config.model, info))
  args, kwargs = steps.model_args(steps.dummy_inputs(info), info)

  def create_state(rng):
    variables = steps.unbox_without_constraints(model.init(
        {"params": rng, "dropout": rng, "sample": rng}, *args, train=False,
        **kwargs))
    return steps.TrainState(step=jnp.zeros((), jnp.int32),
                      params=variables["params"],
                      batch_stats=variables.get("batch_stats", {}),
                      constants=variables.get("constants", {}),
                      opt_state=tx.init(variables["params"]))

  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(create_state, jax.random.key(0))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract)
  directory = os.path.join(workdir, "checkpoints_best" if best else "checkpoints")
  metric_name, metric_mode = steps.best_metric(config, info)
  manager = checkpoints.manager(directory, max_to_keep=1, best=best,
                                metric=metric_name, mode=metric_mode)
  step = manager.best_step() if best else manager.latest_step()
  if step is None:
    manager.close()
    raise FileNotFoundError(f"no checkpoint in {directory}")
  state = checkpoints.restore_verified(manager, step, ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))["state"]
  manager.close()
  return model, steps.variables_of(state), int(step)
