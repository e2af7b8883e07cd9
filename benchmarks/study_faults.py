"""Study: random faults during a small run, each followed by a restart.

1. Trains ``--config`` (default configs/lra_listops.py:test) uninterrupted for
   ``--steps`` steps in ``<workdir>/clean``.
2. Trains the same config in ``<workdir>/faulty`` through ``--kills`` random
   SIGKILLs (at a random time of a run process: during a step, a checkpoint's
   asynchronous write, an evaluation...) and ``--corruptions`` random
   corruptions of the newest checkpoint (16 bytes flipped in a data chunk, a
   chunk truncated, the array metadata emptied, the data iterator's JSON
   emptied, the checksums removed), in a random order, restarting the run
   after each, then lets it finish.
3. Prints a table of the faults injected, whether the next process recovered
   (it started, found the fault where there was one, and went on), the
   checkpoint each corruption forced a fallback to, and whether the final
   ``metrics.jsonl`` records and ``test_metrics.json`` equal the clean run's
   (they must: training is deterministic, a fallback retrains from an
   earlier checkpoint). Writes ``benchmarks/results/study_faults.json``.

Usage:
  python benchmarks/study_faults.py [--kills 10] [--corruptions 5]
      [--steps 120] [--seed 0] [--workdir runs/study_faults]
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from train import checkpoints  # pylint: disable=wrong-import-position
from train import metrics as metrics_lib  # pylint: disable=wrong-import-position

CORRUPTIONS = ("bit_flip", "truncated_chunk", "empty_array_metadata",
               "empty_data_json", "no_checksums")


def _command(args, workdir):
  return [sys.executable, "-m", "train", f"--config={args.config}",
          f"--workdir={workdir}", f"--config.data.data_dir={args.data_dir}",
          f"--config.train.num_steps={args.steps}",
          "--config.train.log_every_steps=5",
          "--config.train.checkpoint_every_steps=10",
          "--config.train.eval_every_steps=20",
          "--config.train.keep_checkpoints=3",
          "--config.train.progress_bar=False",
          "--config.optim.warmup_steps=5"]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  env.setdefault("JAX_COMPILATION_CACHE_DIR",
                 os.path.join(os.path.expanduser("~"), ".cache",
                              "longseq_jax"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  return env


def _logged_step(log):
  """The last train step in ``metrics.jsonl`` (0 if none)."""
  try:
    with open(log) as f:
      lines = f.read().splitlines()
  except OSError:
    return 0
  for line in reversed(lines):
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if record.get("split") == "train":
      return record["step"]
  return 0


def _run(args, workdir, kill_at_step=None, extra_delay=0.0):
  """Runs one process; SIGKILLs it ``extra_delay`` seconds after it has
  logged train step ``kill_at_step`` or later, if given (``"checkpoint"``:
  once a verified checkpoint exists). Returns ``(returncode, stderr,
  seconds)``."""
  start = time.perf_counter()
  log = os.path.join(workdir, "metrics.jsonl")
  err_path = os.path.join(args.workdir, "last_stderr.txt")
  reached = None
  with open(err_path, "w") as err:
    proc = subprocess.Popen(_command(args, workdir), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=err)
    while proc.poll() is None:
      time.sleep(0.02)
      if kill_at_step is None:
        continue
      if reached is None and (
          _has_verified_checkpoint(workdir) if kill_at_step == "checkpoint"
          else _logged_step(log) >= kill_at_step):
        reached = time.perf_counter()
      if reached is not None and time.perf_counter() - reached >= extra_delay:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
  with open(err_path) as f:
    stderr = f.read()
  return proc.returncode, stderr, time.perf_counter() - start


def _has_verified_checkpoint(workdir):
  root = os.path.join(workdir, "checkpoints")
  return os.path.isdir(root) and any(
      os.path.exists(os.path.join(root, s, checkpoints.MANIFEST))
      for s in os.listdir(root) if s.isdigit())


def _newest(workdir):
  root = os.path.join(workdir, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(root) if s.isdigit()) if (
      os.path.isdir(root)) else []
  return (steps[-1], os.path.join(root, str(steps[-1]))) if steps else (
      None, None)


def _corrupt(kind, step_dir, rng):
  """Applies ``kind`` to ``step_dir``; returns the file it changed."""
  chunks_dir = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  chunks = sorted((os.path.join(chunks_dir, n) for n in os.listdir(chunks_dir)),
                  key=os.path.getsize) if os.path.isdir(chunks_dir) else []
  if kind in ("bit_flip", "truncated_chunk") and chunks:
    path = rng.choice(chunks[len(chunks) // 2:])  # The larger half: arrays.
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      if kind == "bit_flip":
        at = rng.randrange(0, max(size - 16, 1))
        f.seek(at)
        data = f.read(16)
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in data))
      else:
        f.truncate(rng.randrange(0, size))
    return path
  rel = {"empty_array_metadata": "state/_METADATA",
         "empty_data_json": "data/process_0-of-1.json",
         "no_checksums": checkpoints.MANIFEST}.get(kind, "state/_METADATA")
  path = os.path.join(step_dir, rel)
  if kind == "no_checksums":
    os.remove(path)
  else:
    open(path, "w").close()
  return path


def _records(workdir):
  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  for r in records:
    for key in metrics_lib.TIMING_KEYS:
      r.pop(key, None)
  return records


def _test(workdir):
  with open(os.path.join(workdir, "test_metrics.json")) as f:
    return json.load(f)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/lra_listops.py:test")
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--corruptions", type=int, default=5)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=os.path.join(REPO, "runs",
                                                        "study_faults"))
  parser.add_argument("--out", default=os.path.join(
      REPO, "benchmarks", "results", "study_faults.json"))
  args = parser.parse_args()
  args.workdir = os.path.abspath(args.workdir)
  args.data_dir = os.path.join(args.workdir, "tfds")
  clean, faulty = (os.path.join(args.workdir, d) for d in ("clean", "faulty"))
  for d in (clean, faulty):
    shutil.rmtree(d, ignore_errors=True)
  os.makedirs(args.workdir, exist_ok=True)
  rng = random.Random(args.seed)

  rc, err, clean_s = _run(args, clean)
  if rc != 0:
    sys.exit(f"the clean run failed (exit {rc}):\n{err[-3000:]}")
  print(f"clean run: {args.steps} steps in {clean_s:.1f} s")
  # Kill k lands in the k-th of (kills + 1) equal stretches of the run, at a
  # random step (train records come every 5 steps) and a random fraction of a
  # second later: in a step, a checkpoint's asynchronous write, an
  # evaluation...
  stretch = args.steps / (args.kills + 1)
  kills_done = 0

  def next_target():
    low = int(kills_done * stretch) + 1
    high = max(int((kills_done + 1) * stretch), low)
    return rng.randint(low, high), rng.uniform(0.0, 0.5)
  faults = ["kill"] * args.kills + ["corrupt"] * args.corruptions
  rng.shuffle(faults)
  corruption_kinds = [CORRUPTIONS[i % len(CORRUPTIONS)]
                      for i in range(args.corruptions)]
  rng.shuffle(corruption_kinds)
  rows, waiting = [], []  # Faults whose restart has not been seen yet.

  def restart(kill_at=None):
    """One run process; judges the faults before it once it got past its
    restore (a process killed earlier leaves them to the next one)."""
    rc, err, took = _run(args, faulty, *(kill_at or (None, 0.0)))
    restored = ("resuming from" in err or "unusable" in err
                or "validation at step" in err or rc == 0)
    if restored or rc not in (-signal.SIGKILL,):
      clean_log = "Traceback" not in err and "FATAL" not in err
      for row in waiting:
        ok = clean_log
        if row["fault"] == "corrupt":
          ok = ok and f"checkpoint of step {row['step']} is unusable" in err
          fell = [line for line in err.splitlines() if "resuming from" in line]
          row["fell_back_to"] = (
              "step " + fell[0].rsplit(" ", 1)[-1] if fell else "step 0")
        row["recovered"] = ok
      waiting.clear()
    return rc, err, took

  for fault in faults:
    if fault == "corrupt":
      step, step_dir = _newest(faulty)
      if step is None:  # Nothing to corrupt yet: make progress first.
        restart(kill_at=("checkpoint", 0.0))
        step, step_dir = _newest(faulty)
      kind = corruption_kinds.pop()
      path = _corrupt(kind, step_dir, rng)
      row = dict(fault="corrupt", detail=f"{kind} of the newest checkpoint "
                 f"(step {step}): {os.path.relpath(path, step_dir)}",
                 step=step)
    else:
      before, _ = _newest(faulty)
      target, delay = next_target()
      kills_done += 1
      rc, _, took = restart(kill_at=(target, delay))
      after, _ = _newest(faulty)
      row = dict(fault="kill", detail=f"SIGKILL {delay:.2f} s after train "
                 f"step {target} was logged ({took:.1f} s into the process; "
                 f"newest checkpoint: step {before} -> {after})", step=after)
      if rc == 0:
        row["detail"] += "; the run had finished"
    rows.append(row)
    waiting.append(row)

  rc, err, _ = restart()
  if rc != 0:
    sys.exit(f"the final restart failed (exit {rc}):\n{err[-3000:]}")
  same_records = _records(clean) == _records(faulty)
  same_test = _test(clean) == _test(faulty)

  print("\n| # | fault | detail | recovered | fell back to |")
  print("|---|---|---|---|---|")
  for i, row in enumerate(rows, 1):
    print(f"| {i} | {row['fault']} | {row['detail']} | "
          f"{'yes' if row.get('recovered') else 'NO'} | "
          f"{row.get('fell_back_to', '-')} |")
  kills = sum(r["fault"] == "kill" for r in rows)
  corrupt = len(rows) - kills
  recovered = sum(bool(r.get("recovered")) for r in rows)
  print(f"\nfaults injected: {kills} SIGKILLs, {corrupt} corruptions; "
        f"recovered: {recovered} of {len(rows)}")
  print(f"final metrics.jsonl equal to the clean run's: {same_records}; "
        f"test_metrics.json equal: {same_test}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"config": args.config, "steps": args.steps, "seed": args.seed,
               "faults": rows, "recovered": recovered,
               "same_records": same_records, "same_test": same_test}, f,
              indent=1)
  print(f"wrote {args.out}")
  if not (same_records and same_test and recovered == len(rows)):
    sys.exit(1)


if __name__ == "__main__":
  main()
