r"""Pathfinder generator: images per second, and image statistics vs the official one.

  python benchmarks/bench_pathfinder_gen.py [--num32 400] [--num128 100] [--workers 2] \
      [--official /tmp/official/B/pf32_cl14 ...] [--out benchmarks/results/pathfinder_gen.json]

Speed: ``data.pathfinder_write.generate_dataset`` end to end (PNG files and metadata) with
``--workers`` processes, for Pathfinder-32 and Path-X (128), hard (contour length 14)
unless ``--difficulties`` says otherwise; plus one process without file output.

Statistics per image: fraction of lit pixels (> 25 of 255), mean intensity, number of
paddles drawn (2 targets + distractors placed), distance between the two markers, label,
and target attempts per image (two-target restarts). ``--official DIR`` adds a run of the
official generator (github.com/drewlinsley/pathfinder, run by hand in a scratch dir; the
code is not part of this project): DIR holds its ``imgs/<batch>/sample_<i>.png`` and a
``stats_*.json`` written by the harness that ran it, ``{"seconds": s, "n": n, "stats":
[{"path", "label", "markers": [[y, x], [y, x]], "num_paddles", "attempts"}, ...]}``; the
resolution and contour length are read from the directory name ``pf<N>_cl<L>``.
"""
import argparse
import glob
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import pathfinder_params  # noqa: E402
from data import pathfinder_sample  # noqa: E402
from data import pathfinder_write  # noqa: E402

_LENGTH_TO_DIFFICULTY = {v[1]: k for k, v in pathfinder_params.DIFFICULTIES.items()}


def _pixel_stats(image):
  return dict(lit=float(np.mean(image > 25)), mean=float(image.mean() / 255))


def _our_chunk(job):
  resolution, difficulty, seed, count = job
  params = pathfinder_params.official_params(resolution, difficulty)
  sampler = pathfinder_sample.ImageSampler(params, np.random.default_rng([seed, 99]))
  rows = []
  for i in range(count):
    image, info = sampler(i % 2)
    (y0, x0), (y1, x1) = info["markers"]
    rows.append(dict(_pixel_stats(image), label=info["label"], paddles=info["num_paddles"],
                     marker_distance=float(np.hypot(y1 - y0, x1 - x0))))
  # Target attempts: the batched sampler's attempts per target pair it found.
  gen = sampler._gen  # pylint: disable=protected-access
  return rows, (gen._attempts, gen._found)  # pylint: disable=protected-access


def ours(resolution, difficulty, num, workers):
  jobs = [(resolution, difficulty, s, min(50, num - 50 * s)) for s in range(-(-num // 50))]
  with multiprocessing.get_context("fork").Pool(workers) as pool:
    chunks = pool.map(_our_chunk, jobs)
  rows = [r for chunk, _ in chunks for r in chunk]
  attempts = sum(a for _, (a, _) in chunks) / max(sum(f for _, (_, f) in chunks), 1)
  return rows, attempts


def official(directory):
  rows, seconds, count = [], 0.0, 0
  for path in sorted(glob.glob(os.path.join(directory, "stats_*.json"))):
    with open(path) as f:
      run = json.load(f)
    seconds += run["seconds"]
    count += run["n"]
    for s in run["stats"]:
      image = np.asarray(Image.open(s["path"]).convert("L"))
      (y0, x0), (y1, x1) = s["markers"][:2]
      rows.append(dict(_pixel_stats(image), label=s["label"], paddles=s["num_paddles"],
                       marker_distance=float(np.hypot(y1 - y0, x1 - x0)),
                       attempts=float(s["attempts"])))
  return rows, (count / seconds if seconds else float("nan"))


def summarize(rows):
  """Mean and standard error of each statistic; marker distance per label."""
  out = {"n": len(rows)}

  def mean_sem(values):
    values = np.asarray(values, float)
    return (float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))))

  for key in ("lit", "mean", "paddles", "label", "attempts"):
    if key in rows[0]:
      out[key] = mean_sem([r[key] for r in rows])
  for label in (0, 1):
    out[f"marker_distance_{label}"] = mean_sem(
        [r["marker_distance"] for r in rows if r["label"] == label])
  return out


def _cpu_seconds():
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def speed(resolution, difficulty, num, workers):
  """Images per wall second and per CPU second (this process and its workers).

  On a shared machine the wall rate depends on the load; CPU seconds do not, and
  ``workers * images per CPU second`` is what ``workers`` idle cores would give.
  """
  with tempfile.TemporaryDirectory() as tmp:
    start, cpu = time.perf_counter(), _cpu_seconds()
    pathfinder_write.generate_dataset(tmp, resolution=resolution, difficulty=difficulty,
                                    num_images=num, workers=workers, progress=False)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  params = pathfinder_params.official_params(resolution, difficulty)
  sampler = pathfinder_sample.ImageSampler(params, np.random.default_rng(123))
  sampler(0)  # stamps
  count = max(4, num // (2 * workers))
  start = time.process_time()
  for i in range(count):
    sampler(i % 2)
  return dict(wall=num / wall, per_cpu_second=num / cpu,
              single_process_per_cpu_second=count / (time.process_time() - start))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num32", type=int, default=400)
  parser.add_argument("--num128", type=int, default=100)
  parser.add_argument("--difficulties", nargs="+", default=["hard"])
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  parser.add_argument("--official", nargs="*", default=[])
  parser.add_argument("--skip_speed", action="store_true")
  parser.add_argument("--out", default="benchmarks/results/pathfinder_gen.json")
  args = parser.parse_args()
  results = {"workers": args.workers, "cpu_count": os.cpu_count(),
             "load_average": os.getloadavg(), "speed": {}, "stats": {}}
  print(f"workers={args.workers} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
  cases = [(32, d, args.num32) for d in args.difficulties]
  cases += [(128, d, args.num128) for d in args.difficulties]
  if not args.skip_speed:
    print(f"{'dataset':<20}{'img/s wall':>12}{'img/cpu-s':>11}{'x workers':>11}"
          f"{'1 proc img/cpu-s':>18}")
    for resolution, difficulty, num in cases:
      r = speed(resolution, difficulty, num, args.workers)
      name = f"pathfinder{resolution} {difficulty}"
      results["speed"][name] = r
      print(f"{name:<20}{r['wall']:>12.1f}{r['per_cpu_second']:>11.1f}"
            f"{r['per_cpu_second'] * args.workers:>11.1f}"
            f"{r['single_process_per_cpu_second']:>18.1f}")
  table = []
  wanted = {(c[0], c[1]) for c in cases}
  for directory in args.official:
    m = re.search(r"pf(\d+)_cl(\d+)", directory)
    resolution, difficulty = int(m.group(1)), _LENGTH_TO_DIFFICULTY[int(m.group(2))]
    rows, rate = official(directory)
    table.append((f"official {resolution} {difficulty}", summarize(rows), rate))
    wanted.add((resolution, difficulty))
  for resolution, difficulty in sorted(wanted):
    num = args.num32 if resolution == 32 else args.num128
    rows, attempts = ours(resolution, difficulty, num, args.workers)
    summary = summarize(rows)
    summary["attempts"] = (attempts, float("nan"))  # a ratio over all images
    table.append((f"ours     {resolution} {difficulty}", summary, None))
  table.sort(key=lambda t: (int(t[0].split()[1]), t[0].split()[2], t[0]))
  header = (f"{'generator':<26}{'n':>5}{'lit frac':>16}{'mean int':>16}{'paddles':>14}"
            f"{'mark dist 0':>14}{'mark dist 1':>14}{'label=1':>9}{'attempts':>14}"
            f"{'img/s 1proc':>12}")
  print(header)
  for name, s, rate in table:
    cells = "".join(f"{s[k][0]:>{w - 7}.3f} ±{s[k][1]:<5.3f}" for k, w in
                    (("lit", 16), ("mean", 16)))
    cells += "".join(f"{s[k][0]:>{w - 6}.1f} ±{s[k][1]:<4.1f}" for k, w in
                     (("paddles", 14), ("marker_distance_0", 14), ("marker_distance_1", 14)))
    err = f" ±{s['attempts'][1]:<4.0f}" if np.isfinite(s["attempts"][1]) else " " * 6
    cells += f"{s['label'][0]:>9.2f}{s['attempts'][0]:>8.0f}{err}"
    cells += f"{rate:>12.2f}" if rate is not None else f"{'':>12}"
    print(f"{name:<26}{s['n']:>5}{cells}")
    results["stats"][name] = dict(s, images_per_cpu_second=rate)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
