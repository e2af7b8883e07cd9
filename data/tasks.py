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
"""
import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence

import ml_collections


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


@dataclasses.dataclass(frozen=True)
class Task:
  """A dataset the trainer can use.

  Attributes:
    name: registry name (``config.data.task``).
    info: function ``config.data -> TaskInfo``.
    sources: function ``config.data -> {"train"|"validation"|"test": source}``;
      builds (or generates, per config) the TFDS dataset if it is missing.
    preprocess: function ``(raw element, config.data) -> element`` as documented
      in this module's docstring; run inside the grain pipeline.
  """
  name: str
  info: Callable[[ml_collections.ConfigDict], TaskInfo]
  sources: Callable[[ml_collections.ConfigDict], Mapping[str, RandomAccessSource]]
  preprocess: Callable[[Mapping[str, Any], ml_collections.ConfigDict], dict]
  splits: Sequence[str] = ("train", "validation", "test")


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


def _import_builtin_tasks() -> None:
  # Imported lazily so that `import data` stays cheap and free of cycles.
  import data.ett  # noqa: F401
  import data.listops  # noqa: F401
  import data.pathfinder  # noqa: F401
  import data.probes  # noqa: F401
