"""What the benchmark scripts share: timing one jitted config in this process,
running each config in a fresh subprocess, and formatting.

A script times a config with :func:`time_compiled` under a hidden ``--single``
flag and prints ``RESULT <json>``; its driver runs every config through
:func:`run_isolated`, so each config's ``ru_maxrss`` is its own peak memory and a
run that hangs is killed and retried. The ``--single`` process calls
:func:`setup_single` before it imports jax: the host's malloc settings are those
of ``python -m train`` (``train/host.py``; ``LONGSEQ_MALLOC=0`` times glibc's
defaults), and each result row says which (``malloc_tuned``).
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_PREFIX = "RESULT "
MAX_REPEATS = 200
_MALLOC_TUNED = None


def setup_single() -> None:
  """First thing in a ``--single`` process, before jax starts: the malloc
  settings ``python -m train`` applies (``train.host.configure_malloc``)."""
  global _MALLOC_TUNED
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  from train import host  # pylint: disable=g-import-not-at-top
  _MALLOC_TUNED = host.configure_malloc()


def time_calls(call, *, repeats: int, warmup: int,
               min_time_s: float = 0.0) -> dict:
  """Runs ``call()`` ``warmup`` times, then times it at least ``repeats``
  times and, with ``min_time_s``, until the timed calls add up to that many
  seconds (at most ``MAX_REPEATS``): the median then spans the host's
  short slow spells instead of landing in one. Returns the median and
  minimum wall time, every time, and the median process CPU time."""
  for _ in range(warmup):
    call()
  times, cpu_times = [], []
  while len(times) < repeats or (sum(times) < min_time_s and
                                 len(times) < MAX_REPEATS):
    t0, c0 = time.perf_counter(), time.process_time()
    call()
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  return dict(median_s=statistics.median(times), min_s=min(times),
              times_s=times, median_cpu_s=statistics.median(cpu_times),
              malloc_tuned=_MALLOC_TUNED)


def time_compiled(fn, fargs, *, repeats: int, warmup: int,
                  min_time_s: float = 0.0) -> dict:
  """Compiles the jitted ``fn`` for ``fargs`` and times it (``time_calls``).
  Adds the compile time, XLA's memory analysis (arguments + outputs +
  temporaries), the process's peak RSS and the load average."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  compiled = fn.lower(*fargs).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  mem_bytes = None
  if mem is not None:
    mem_bytes = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes +
                    mem.output_size_in_bytes)
  timing = time_calls(lambda: jax.block_until_ready(compiled(*fargs)),
                      repeats=repeats, warmup=warmup, min_time_s=min_time_s)
  maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB
  return dict(timing, compile_s=compile_s, xla_memory_bytes=mem_bytes,
              maxrss_bytes=maxrss, loadavg=os.getloadavg()[0],
              device=str(jax.devices()[0]))


def print_result(row: dict) -> None:
  print(RESULT_PREFIX + json.dumps(row))


def run_isolated(script: str, single_args, passthrough, row: dict, *,
                 timeout: float, retries: int) -> dict:
  """Runs ``script --single <single_args> <passthrough>`` in a fresh process
  and returns its result row (``row`` updated with the reason if it failed or
  timed out). A timed-out run is retried ``retries`` times: we have seen rare
  XLA:CPU runs that block forever with idle threads (jaxlib 0.10.2)."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  cmd = [sys.executable, os.path.abspath(script), "--single",
         *map(str, single_args), *map(str, passthrough)]
  for attempt in range(1 + retries):
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                            timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
      row["skipped"] = f"timeout > {timeout:.0f} s"
      row["attempts"] = attempt + 1
      continue
    lines = [l for l in proc.stdout.splitlines()
             if l.startswith(RESULT_PREFIX)]
    if lines:
      row = json.loads(lines[-1][len(RESULT_PREFIX):])
      row["attempts"] = attempt + 1
    else:
      row["skipped"] = "failed: " + proc.stderr.strip()[-300:]
    break
  return row


def fmt_seconds(x) -> str:
  if x is None:
    return "skipped"
  return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def fmt_bytes(x) -> str:
  return "-" if x is None else f"{x / 2**30:.2f} GiB" if x >= 2**30 else (
      f"{x / 2**20:.0f} MiB")
