"""Task registry: what a dataset provides to the trainer and the model.

Every element a task's source yields (after the task's ``preprocess``) is a dict of
fixed-shape numpy arrays so that batches stack without further padding:

  ``inputs``:  int32 ``[t]`` token ids (``info.input_kind == "tokens"``) or
               float32 ``[t, c]`` continuous values (``"continuous"``);
  ``mask``:    bool ``[t]``, True where the position holds a real token;
  ``targets``: int32 scalar class id (``info.output_kind == "class"``), or
               int32 ``[t]``: the token the model must predict at each position
               (``"tokens"``: a causal language model has seen ``inputs[:i+1]``
               when it predicts ``targets[i]``);
  ``target_mask``: bool ``[t]``, only with ``"tokens"``: the positions whose
               targets count in the metrics (and in the loss, without ``loss_mask``);
  ``loss_mask``: bool ``[t]``, optional with ``"tokens"``: the positions in the
               training loss when they differ from ``target_mask`` (e.g. every
               next token of a language model whose accuracy is scored on an
               answer only).

A forecasting task (``"forecast"``) has float32 ``targets [pred_len, c_out]`` and
passes the keys named in ``info.extra_inputs`` to the model as keyword arguments.

Config. Fields every task shares (``task``, ``data_dir``, ``manual_dir``, the split
sizes, batch sizes, reader and generator settings) live in ``config.data``; a task's
own fields live in ``config.data.<task name>``, declared with their defaults and
meaning by the task's ``config()`` and checked by its ``validate(config.data)``.
``configs/default.py`` adds the namespace of every registered task, so adding a task
is its data module and one line of ``BUILTIN_TASK_MODULES``.
"""
import dataclasses
import importlib
from typing import Any, Callable, Mapping, Protocol, Sequence

import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What the model and trainer must know about a task's data."""
  num_classes: int
  max_length: int
  input_kind: str  # "tokens" or "continuous"
  vocab_size: int | None = None  # for tokens; includes padding id 0
  input_channels: int | None = None  # for continuous inputs
  pad_id: int = 0
  # "class": one label per sequence (``num_classes`` classes);
  # "pair": one label per pair of sequences (``inputs [2, t]``, LRA Retrieval);
  # "tokens": one target token per position (``num_classes`` = output vocab);
  # "forecast": real-valued ``targets [pred_len, output_channels]`` (a
  # regression: MSE loss, MSE/MAE metrics).
  output_kind: str = "class"
  # Forecasting: channels of the predicted series, of the time features, and
  # the lengths of the decoder's known start and of the horizon.
  output_channels: int | None = None
  time_channels: int | None = None
  label_len: int | None = None
  pred_len: int | None = None
  # Element keys, besides ``inputs`` and ``mask``, that the model takes as
  # keyword arguments (e.g. the Informer's time features and decoder start).
  extra_inputs: tuple[str, ...] = ()


class RandomAccessSource(Protocol):

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    ...


class View:
  """The examples ``index`` of ``source``, in that order."""

  def __init__(self, source: RandomAccessSource, index):
    self._source, self._index = source, np.asarray(index, np.int64)

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    return self._source[int(self._index[index])]


class Subset(View):
  """``size`` examples of ``source``, drawn once without replacement with
  ``seed`` (kept in the source's order): ``data.num_<split>`` for tasks whose
  data is read, not generated."""

  def __init__(self, source: RandomAccessSource, size: int, *, seed: int,
               field: str):
    if size > len(source):
      raise ValueError(f"{field}={size} is more than the {len(source)} "
                       "examples of the split")
    rng = np.random.default_rng(seed)
    super().__init__(source, np.sort(rng.choice(len(source), size,
                                                replace=False)))


@dataclasses.dataclass(frozen=True)
class Task:
  """A dataset the trainer can use.

  Every function takes the whole ``config.data`` and reads the task's own fields
  from ``config.data.<name>``.

  Attributes:
    name: registry name (``config.data.task``) and the name of the task's config
      namespace ``config.data.<name>``.
    info: function ``config.data -> TaskInfo``.
    sources: function ``config.data -> {"train"|"validation"|"test": source}``;
      builds (or generates, per config) the TFDS dataset if it is missing.
    preprocess: function ``(raw element, config.data) -> element`` as documented
      in this module's docstring; run inside the grain pipeline.
    config: function ``() -> ConfigDict`` of the task's own fields with their
      defaults (``config.data.<name>``); each field commented where it is set.
    validate: function ``config.data -> None`` that raises ``ValueError`` naming
      the first bad field by its full path (``data.<name>.<field>=value ...``);
      runs before anything is built or compiled.
  """
  name: str
  info: Callable[[ml_collections.ConfigDict], TaskInfo]
  sources: Callable[[ml_collections.ConfigDict], Mapping[str, RandomAccessSource]]
  preprocess: Callable[[Mapping[str, Any], ml_collections.ConfigDict], dict]
  splits: Sequence[str] = ("train", "validation", "test")
  config: Callable[[], ml_collections.ConfigDict] = ml_collections.ConfigDict
  validate: Callable[[ml_collections.ConfigDict], None] = lambda data_config: None


def config_field(cfg: Any, name: str, default: Any = None) -> Any:
  """``cfg.name`` of a data config (ConfigDict, dict or object), or
  ``default`` when it is missing or None."""
  if cfg is None:
    return default
  try:
    value = cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def task_fields(data_config: Any, task: "Task") -> ml_collections.ConfigDict:
  """``config.data.<task.name>``, or the task's defaults where the data config has
  no such namespace (a hand-made config in a test or a notebook)."""
  own = config_field(data_config, task.name)
  return task.config() if own is None else own


# Modules that register the built-in tasks. Adding a task: its module, one line here.
BUILTIN_TASK_MODULES = (
    "data.listops",
    "data.pathfinder",  # "pathfinder" and "pathx"
    "data.passkey",
    "data.mqar",
    "data.ett",
    "data.text",
    "data.image",
    "data.retrieval",
)

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
  if task.name in TASKS and TASKS[task.name] is not task:
    raise ValueError(f"task {task.name!r} is already registered")
  TASKS[task.name] = task
  return task


def get_task(name: str) -> Task:
  _import_builtin_tasks()
  if name not in TASKS:
    raise ValueError(f"unknown data.task {name!r}; known tasks: {sorted(TASKS)}")
  return TASKS[name]


def registered_tasks() -> dict[str, Task]:
  """Every registered task (the built-in ones imported first), by name."""
  _import_builtin_tasks()
  return dict(TASKS)


def _import_builtin_tasks() -> None:
  # Imported lazily so that `import data` stays cheap and free of cycles. The task
  # modules import no TFDS or grain (their builders are imported when data is
  # built), so that building a config stays cheap.
  for module in BUILTIN_TASK_MODULES:
    importlib.import_module(module)
