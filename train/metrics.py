"""Metric sinks: TensorBoard event files (no TensorFlow) and a JSON-lines log.

``workdir/metrics.jsonl`` holds one record per log or evaluation:
``{"step": 100, "split": "train", "loss": ..., "accuracy": ..., ...}``.
TensorBoard runs live in ``workdir/tensorboard/<split>`` so that curves of the
same metric on different splits share one chart. A resumed run keeps the
records up to the step it resumes from and writes the event files anew from
them: every step appears once in both.
"""
import json
import math
import os
import shutil
import time
from typing import Mapping

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

# Record keys that measure the machine, not the model (differ between runs).
TIMING_KEYS = ("steps_per_second", "wall_time")


class MetricWriter:
  """Writes scalars to TensorBoard and to ``metrics.jsonl``.

  Args:
    workdir: the run directory.
    resume_step: the step a resumed run restarts from: records after it (from
      the interrupted run) are dropped so that the log reads as one run. None
      for a fresh run, which starts a new log.
    enabled: False on processes other than 0 (they write nothing).
  """

  def __init__(self, workdir: str, *, resume_step: int | None,
               enabled: bool = True):
    self._enabled = enabled
    self._tb: dict[str, EventFileWriter] = {}
    self._tb_dir = os.path.join(workdir, "tensorboard")
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    kept = []
    if resume_step is not None and os.path.exists(self.jsonl_path):
      with open(self.jsonl_path) as f:
        for line in f:
          line = line.strip()
          if not line:
            continue
          try:
            record = json.loads(line)
          except json.JSONDecodeError:
            break  # A line cut short by the kill ends the usable log.
          if record.get("step", 0) <= resume_step and record.get(
              "split") != "test":
            kept.append(line)
    # Rewritten atomically: a kill during the rewrite leaves the old log.
    tmp_path = self.jsonl_path + ".tmp"
    with open(tmp_path, "w") as f:
      f.writelines(line + "\n" for line in kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, self.jsonl_path)
    self._jsonl = open(self.jsonl_path, "a")
    if resume_step is not None:
      # The event files may hold steps after resume_step: written anew from
      # the records kept, so that each step appears once.
      shutil.rmtree(self._tb_dir, ignore_errors=True)
      for line in kept:
        record = json.loads(line)
        step, split = record.pop("step"), record.pop("split")
        self._add_event(step, split, record)

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    record = {"step": int(step), "split": split}
    record.update({k: float(v) for k, v in metrics.items()})
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:  # JSON has no NaN or infinity: refuse rather than write them.
      raise ValueError(f"{split} metrics of step {step} are not finite: {bad}")
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    self._jsonl.flush()
    self._add_event(step, split, metrics)

  def _add_event(self, step: int, split: str,
                 metrics: Mapping[str, float]) -> None:
    if split not in self._tb:
      self._tb[split] = EventFileWriter(os.path.join(self._tb_dir, split))
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in metrics.items()])
    self._tb[split].add_event(event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    if not self._enabled:
      return
    self._jsonl.flush()
    for writer in self._tb.values():
      writer.flush()

  def close(self) -> None:
    if not self._enabled:
      return
    self._jsonl.close()
    for writer in self._tb.values():
      writer.close()
    self._tb = {}


def read_jsonl(path: str) -> list[dict]:
  """The records of a ``metrics.jsonl`` file."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
