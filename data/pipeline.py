"""grain input pipelines: deterministic, sharded by process, checkpointable.

Training order. Epoch ``e`` visits the training split in the order of a
permutation drawn from ``seed + e`` (grain's index shuffle, which re-seeds per
epoch for indices past the end of the split). Epoch ``e`` has
``steps_per_epoch = num_train // global_batch_size`` global batches (the
remainder of each epoch is dropped) and global batch ``s`` of the epoch holds
the shuffled positions ``[s * G, (s + 1) * G)``. Process ``p`` of ``P`` loads
the contiguous block ``[p * G / P, (p + 1) * G / P)`` of every global batch, the
order in which ``jax.make_array_from_process_local_data`` concatenates
processes' rows. So the global batches, and hence a run's metrics, do not
depend on how many processes read them, and every process yields the same
number of batches.

Evaluation order. The split is read once, in order, in global batches of
``eval_batch_size``; the last one is padded with copies of element 0 whose
``weight`` is 0, so that weighted means count each example exactly once.

Every element carries ``weight`` (float32: 1 for real examples, 0 for padding).

Iterator state is grain's ``get_state()`` (a small JSON-able dict), saved with
each checkpoint through ``grain.checkpoint.CheckpointSave``.
"""
import functools
import os
import sys
import threading
import time
from typing import Any, Callable, Mapping

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from data.tasks import Task


def _process_index_and_count(process_index, process_count):
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"{process_index=} is not in [0, {process_count=})")
  return process_index, process_count


def _per_process_batch_size(batch_size: int, process_count: int, field: str):
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(
        f"{field}={batch_size} must be a positive multiple of the number of "
        f"processes ({process_count=})")
  return batch_size // process_count


class _TrainOrder(grain.MapDataset):
  """Element ``i`` of this process's (infinite) training stream.

  ``i = step * b + j`` (``b`` rows per process) reads the shuffled element at
  global position ``epoch * n + s * G + p * b + j`` where ``step = epoch * S + s``.
  """

  def __init__(self, parent: grain.MapDataset, *, num_examples: int,
               global_batch: int, process_index: int, process_count: int):
    super().__init__(parent)
    self._n = num_examples
    self._global_batch = global_batch
    self._rows = global_batch // process_count
    self._offset = process_index * self._rows
    self._steps_per_epoch = num_examples // global_batch

  def __len__(self) -> int:
    return sys.maxsize

  def _position(self, index: int) -> int:
    step, row = divmod(index, self._rows)
    epoch, s = divmod(step, self._steps_per_epoch)
    return epoch * self._n + s * self._global_batch + self._offset + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._position(index)]

  def _getitems(self, indices):
    return self._parent._getitems([self._position(i) for i in indices])  # pylint: disable=protected-access

  def __str__(self) -> str:
    return (f"_TrainOrder(global_batch={self._global_batch}, rows={self._rows}, "
            f"offset={self._offset})")


class _EvalOrder(grain.MapDataset):
  """This process's rows of the in-order, padded evaluation batches."""

  def __init__(self, parent: grain.MapDataset, *, global_batch: int,
               process_index: int, process_count: int):
    super().__init__(parent)
    self._n = len(parent)
    self._global_batch = global_batch
    self._rows = global_batch // process_count
    self._offset = process_index * self._rows
    self._num_batches = -(-self._n // global_batch)

  def __len__(self) -> int:
    return self._num_batches * self._rows

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, row = divmod(index % len(self), self._rows)
    position = step * self._global_batch + self._offset + row
    if position < self._n:
      return (self._parent[position], np.float32(1.0))
    return (self._parent[0], np.float32(0.0))

  def __str__(self) -> str:
    return f"_EvalOrder(global_batch={self._global_batch}, rows={self._rows})"


def _preprocess_train(raw, *, preprocess: Callable, data_config):
  element = dict(preprocess(raw, data_config))
  element["weight"] = np.float32(1.0)
  return element


def _preprocess_eval(raw_and_weight, *, preprocess: Callable, data_config):
  raw, weight = raw_and_weight
  element = dict(preprocess(raw, data_config))
  element["weight"] = weight
  return element


def _finish(ds: grain.MapDataset, data_config, rows: int, drop_remainder: bool,
            worker_count: int | None) -> grain.IterDataset:
  ds = ds.batch(rows, drop_remainder=drop_remainder)
  ids = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=data_config.get("read_threads", 4) or 1,
      prefetch_buffer_size=data_config.get("prefetch_buffer_size", 8) or 1))
  if worker_count is None:
    worker_count = data_config.worker_count
  if worker_count:
    # grain's worker processes read absl flags; outside an absl app (tests,
    # notebooks) nothing has parsed them, so their defaults stand.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ids = ids.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=worker_count),
        worker_init_fn=_end_with_parent)
  return ids


def _end_with_parent(worker_index: int, worker_count: int) -> None:
  """In each grain worker: exit when the process that started it is gone
  (a SIGKILLed run must not leave its workers running as orphans)."""
  del worker_index, worker_count
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(0)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Global training steps in one epoch (the remainder is dropped)."""
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(
        f"data.batch_size={batch_size} is larger than the training split "
        f"({num_examples=}): an epoch would have no step")
  return steps


def make_train_dataset(task: Task, data_config: ml_collections.ConfigDict, *,
                       source=None, seed: int, batch_size: int | None = None,
                       process_index: int | None = None,
                       process_count: int | None = None,
                       worker_count: int | None = None) -> grain.IterDataset:
  """The infinite, per-process training stream of batches (an IterDataset).

  Args:
    task: the task whose ``preprocess`` turns raw elements into model inputs.
    data_config: ``config.data``.
    source: the training source; default ``task.sources(data_config)["train"]``.
    seed: shuffling seed (epoch ``e`` uses ``seed + e``).
    batch_size: global batch size; default ``data_config.batch_size``.
    process_index, process_count: this process's shard; default from jax.
    worker_count: grain worker processes (0 = in-process); default
      ``data_config.worker_count``.

  Returns:
    batches of ``batch_size // process_count`` rows: dicts of numpy arrays.
  """
  process_index, process_count = _process_index_and_count(
      process_index, process_count)
  if batch_size is None:
    batch_size = data_config.batch_size
  rows = _per_process_batch_size(batch_size, process_count, "data.batch_size")
  if source is None:
    source = task.sources(data_config)["train"]
  num_examples = len(source)
  steps_per_epoch(num_examples, batch_size)  # Validates the batch size.
  ds = grain.MapDataset.source(source).shuffle(seed=seed % 2**32)
  ds = _TrainOrder(ds, num_examples=num_examples, global_batch=batch_size,
                   process_index=process_index, process_count=process_count)
  ds = ds.map(functools.partial(
      _preprocess_train, preprocess=task.preprocess, data_config=data_config))
  return _finish(ds, data_config, rows, True, worker_count)


def make_train_iterator(task: Task, data_config: ml_collections.ConfigDict,
                        split: str = "train", *, seed: int, source=None,
                        **kwargs) -> grain.DatasetIterator:
  """An iterator over :func:`make_train_dataset`; see there for arguments.

  Its ``get_state()`` / ``set_state()`` (or ``grain.checkpoint``) save and
  restore the position exactly.
  """
  if source is None:
    source = task.sources(data_config)[split]
  return iter(make_train_dataset(task, data_config, source=source, seed=seed,
                                 **kwargs))


def make_eval_iterable(task: Task, data_config: ml_collections.ConfigDict,
                       split: str, *, source=None,
                       batch_size: int | None = None,
                       process_index: int | None = None,
                       process_count: int | None = None,
                       worker_count: int | None = None) -> grain.IterDataset:
  """One in-order pass over ``split``; iterate it again for another pass.

  Batches have ``batch_size // process_count`` rows (global ``batch_size``,
  default ``data_config.eval_batch_size``); padding rows have ``weight == 0``.
  """
  process_index, process_count = _process_index_and_count(
      process_index, process_count)
  if batch_size is None:
    batch_size = data_config.eval_batch_size
  rows = _per_process_batch_size(batch_size, process_count,
                                 "data.eval_batch_size")
  if source is None:
    source = task.sources(data_config)[split]
  if len(source) == 0:
    raise ValueError(f"the {split!r} split of data.task="
                     f"{data_config.task!r} is empty")
  ds = _EvalOrder(grain.MapDataset.source(source), global_batch=batch_size,
                  process_index=process_index, process_count=process_count)
  ds = ds.map(functools.partial(
      _preprocess_eval, preprocess=task.preprocess, data_config=data_config))
  return _finish(ds, data_config, rows, False, worker_count)


def num_eval_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


def element_spec(task: Task, data_config: ml_collections.ConfigDict,
                 source) -> Mapping[str, Any]:
  """Shapes and dtypes of one preprocessed element (``weight`` included)."""
  element = _preprocess_train(source[0], preprocess=task.preprocess,
                              data_config=data_config)
  return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)
          for k, v in element.items()}
