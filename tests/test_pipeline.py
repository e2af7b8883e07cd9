"""data.pipeline: deterministic order, epochs, process sharding, state, padding."""
import json

import ml_collections
import numpy as np
import pytest

from data import pipeline
from data import tasks


class _IndexSource:
  """Element i is {"x": i}: batches reveal exactly which elements were read."""

  def __init__(self, n: int):
    self._n = n

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    if not 0 <= i < self._n:
      raise IndexError(i)
    return {"x": np.int32(i)}


def _preprocess(raw, data_config):
  x = np.int32(raw["x"])
  inputs = np.full((data_config.index.max_length,), x, np.int32)
  return {"inputs": inputs, "mask": np.ones_like(inputs, bool),
          "targets": np.int32(x % 3)}


def _task(sizes):
  return tasks.Task(
      name="index", info=lambda c: None,
      sources=lambda c: {s: _IndexSource(n) for s, n in sizes.items()},
      preprocess=_preprocess,
      config=lambda: ml_collections.ConfigDict(dict(max_length=3)))


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      task="index", batch_size=4, eval_batch_size=4, worker_count=0,
      read_threads=2, prefetch_buffer_size=2, index=dict(max_length=3)))
  config.update(overrides)
  return config


def _ids(batch):
  return batch["inputs"][:, 0].tolist()


def _take(iterator, n):
  return [_ids(next(iterator)) for _ in range(n)]


def test_train_order_is_deterministic_and_covers_each_epoch():
  task, config = _task({"train": 10}), _config()
  first = _take(pipeline.make_train_iterator(
      task, config, seed=5, process_index=0, process_count=1), 6)
  again = _take(pipeline.make_train_iterator(
      task, config, seed=5, process_index=0, process_count=1), 6)
  other = _take(pipeline.make_train_iterator(
      task, config, seed=6, process_index=0, process_count=1), 6)
  assert first == again
  assert first != other
  # 10 examples, batches of 4: 2 steps per epoch, 2 examples dropped per epoch.
  assert pipeline.steps_per_epoch(10, 4) == 2
  epochs = [sum(first[2 * e:2 * e + 2], []) for e in range(3)]
  for epoch in epochs:
    assert len(set(epoch)) == 8 and set(epoch) <= set(range(10))
  assert epochs[0] != epochs[1]  # Reshuffled each epoch.
  batch = next(pipeline.make_train_iterator(
      task, config, seed=5, process_index=0, process_count=1))
  assert batch["inputs"].shape == (4, 3) and batch["inputs"].dtype == np.int32
  assert batch["mask"].dtype == bool
  np.testing.assert_array_equal(batch["weight"], np.ones(4, np.float32))
  np.testing.assert_array_equal(batch["targets"], batch["inputs"][:, 0] % 3)


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_split_the_same_global_batches(process_count):
  task, config = _task({"train": 37}), _config(batch_size=8)
  single = _take(pipeline.make_train_iterator(
      task, config, seed=1, process_index=0, process_count=1), 10)
  shards = [_take(pipeline.make_train_iterator(
      task, config, seed=1, process_index=p, process_count=process_count), 10)
            for p in range(process_count)]
  for step in range(10):
    rows = [shards[p][step] for p in range(process_count)]
    assert all(len(r) == 8 // process_count for r in rows)
    # Process p holds block p of the global batch, in order.
    assert sum(rows, []) == single[step]


def test_state_restore_gives_the_same_next_batches():
  task, config = _task({"train": 23}), _config()
  iterator = pipeline.make_train_iterator(
      task, config, seed=3, process_index=0, process_count=1)
  _take(iterator, 7)  # Into the second epoch (5 steps per epoch).
  state = json.loads(json.dumps(iterator.get_state()))  # As saved on disk.
  expected = _take(iterator, 6)
  fresh = pipeline.make_train_iterator(
      task, config, seed=3, process_index=0, process_count=1)
  fresh.set_state(state)
  assert _take(fresh, 6) == expected


def test_worker_processes_give_the_same_batches():
  task, config = _task({"train": 12}), _config()
  in_process = _take(pipeline.make_train_iterator(
      task, config, seed=2, process_index=0, process_count=1), 4)
  iterator = pipeline.make_train_iterator(
      task, config, seed=2, process_index=0, process_count=1, worker_count=2)
  try:
    assert _take(iterator, 4) == in_process
  finally:
    iterator.close()


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_padding_counts_each_example_once(process_count):
  n = 11
  task, config = _task({"validation": n}), _config(eval_batch_size=4)
  seen = []
  for p in range(process_count):
    batches = list(pipeline.make_eval_iterable(
        task, config, "validation", process_index=p,
        process_count=process_count))
    assert len(batches) == pipeline.num_eval_batches(n, 4) == 3
    for b in batches:
      assert b["inputs"].shape == (4 // process_count, 3)
      seen += [x for x, w in zip(_ids(b), b["weight"]) if w == 1.0]
      assert set(b["weight"].tolist()) <= {0.0, 1.0}
  assert sorted(seen) == list(range(n))
  # A second pass reads the same batches.
  iterable = pipeline.make_eval_iterable(
      task, config, "validation", process_index=0, process_count=1)
  assert [_ids(b) for b in iterable] == [_ids(b) for b in iterable]


def test_bad_batch_sizes_name_the_field():
  task = _task({"train": 10, "validation": 3})
  with pytest.raises(ValueError, match="data.batch_size=6"):
    pipeline.make_train_iterator(task, _config(batch_size=6), seed=0,
                                 process_index=0, process_count=4)
  with pytest.raises(ValueError, match="data.batch_size=16"):
    pipeline.make_train_iterator(task, _config(batch_size=16), seed=0,
                                 process_index=0, process_count=1)
  with pytest.raises(ValueError, match="data.eval_batch_size=3"):
    pipeline.make_eval_iterable(task, _config(eval_batch_size=3), "validation",
                                process_index=0, process_count=2)
