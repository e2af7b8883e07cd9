"""Benchmark: the SGConv layer across lengths.

Times, at each length L (``--lengths``), in float32, batch ``--batch``,
``d_model = --d-model``, ``kernel_dim = --kernel-dim``, ``l_max = L`` (so the
number of scales grows as ``1 + ceil(log2(L / kernel_dim))``):
  * ``layer``: causal layer, forward + backward (grads w.r.t. params and input);
  * ``layer_fwd``: causal layer, forward only;
  * ``layer_bidir``: bidirectional layer, forward + backward;
  * ``layer_ref``: forward + backward with the direct-sum (O(L^2))
    convolution, ``impl="reference"``, up to ``--ref-max``.
Each config runs jitted in a fresh subprocess (``ru_maxrss`` is its own peak
host memory), is warmed up, then timed ``--repeats`` times; the median is
reported, with ratios vs the first length (measured in the same run) and the
speedup vs the reference form. Prints a markdown table and writes JSON.

Usage:
  python benchmarks/bench_sgconv.py [--lengths 1024 4096 16384] [--repeats 5]
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = ("layer", "layer_fwd", "layer_bidir", "layer_ref")
REFERENCE_OF = {"layer": "layer_ref"}
# layer fwd+bwd at the longest length within this factor of the first length
# (the FFT convolution is O(L log L): 16x the length in ~16-20x the time).
RATIO_TARGET = ("layer", 20.0)


def _build(config, L, args):
  """Returns (jitted fn, example args) for one config."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from layers.sgconv import SGConv

  layer = SGConv(d_model=args.d_model, l_max=L, kernel_dim=args.kernel_dim,
                 bidirectional=config == "layer_bidir",
                 impl="reference" if config == "layer_ref" else args.impl)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(args.batch, L, args.d_model)), jnp.float32)
  ct = jnp.asarray(rng.normal(size=(args.batch, L, args.d_model)), jnp.float32)
  variables = nn.unbox(jax.jit(nn.Module.init, static_argnums=0)(
      layer, jax.random.key(0), x[:1, :8]))
  params, consts = variables["params"], variables["constants"]

  if config == "layer_fwd":
    fn = jax.jit(lambda params, consts, x: layer.apply(
        {"params": params, "constants": consts}, x))
    return fn, (params, consts, x)

  # The cotangent is an argument, not a closure: a captured array would be
  # baked into the program as a constant.
  def loss(params, consts, x, ct):
    y = layer.apply({"params": params, "constants": consts}, x)
    return jnp.sum(y * ct)

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))
  return fn, (params, consts, x, ct)


def run_single(config, L, args):
  """Times one config in this process; returns a dict."""
  import jax
  fn, fargs = _build(config, L, args)
  t0 = time.perf_counter()
  compiled = fn.lower(*fargs).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  mem_bytes = None
  if mem is not None:
    mem_bytes = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes +
                    mem.output_size_in_bytes)
  for _ in range(args.warmup):
    jax.block_until_ready(compiled(*fargs))
  times, cpu_times = [], []
  for _ in range(args.repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(*fargs))
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB
  return dict(config=config, L=L, median_s=statistics.median(times),
              times_s=times, median_cpu_s=statistics.median(cpu_times),
              compile_s=compile_s, xla_memory_bytes=mem_bytes,
              maxrss_bytes=maxrss, loadavg=os.getloadavg()[0],
              device=str(jax.devices()[0]))


def _skip_reason(config, L, args):
  if config == "layer_ref" and L > args.ref_max:
    return f"direct-sum convolution, L > {args.ref_max}"
  return None


def _fmt_s(x):
  if x is None:
    return "skipped"
  return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _fmt_b(x):
  return "-" if x is None else f"{x / 2**30:.2f} GiB" if x >= 2**30 else (
      f"{x / 2**20:.0f} MiB")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", type=int, nargs="+",
                      default=[1024, 4096, 16384])
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS),
                      choices=CONFIGS)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--d-model", type=int, default=256)
  parser.add_argument("--kernel-dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--impl", default="auto")
  parser.add_argument("--ref-max", type=int, default=1024,
                      help="skip the O(L^2) reference layer above this length")
  parser.add_argument("--timeout", type=float, default=300,
                      help="seconds per config and try")
  parser.add_argument("--retries", type=int, default=1)
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      "bench_sgconv.json"))
  parser.add_argument("--single", nargs=2, metavar=("CONFIG", "L"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.single:
    print("RESULT " + json.dumps(run_single(args.single[0],
                                             int(args.single[1]), args)))
    return

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  passthrough = ["--batch", str(args.batch), "--d-model", str(args.d_model),
                 "--kernel-dim", str(args.kernel_dim), "--repeats",
                 str(args.repeats), "--warmup", str(args.warmup), "--impl",
                 args.impl]
  results = []
  for L in args.lengths:
    for config in args.configs:
      reason = _skip_reason(config, L, args)
      row = dict(config=config, L=L, median_s=None, skipped=reason)
      if reason is None:
        cmd = [sys.executable, os.path.abspath(__file__), "--single", config,
               str(L)] + passthrough
        for attempt in range(1 + args.retries):
          try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env=env, timeout=args.timeout, check=False)
          except subprocess.TimeoutExpired:
            row["skipped"] = f"timeout > {args.timeout:.0f} s"
            row["attempts"] = attempt + 1
            continue
          lines = [l for l in proc.stdout.splitlines()
                   if l.startswith("RESULT ")]
          if lines:
            row = json.loads(lines[-1][len("RESULT "):])
            row["attempts"] = attempt + 1
          else:
            row["skipped"] = "failed: " + proc.stderr.strip()[-300:]
          break
      results.append(row)
      print(f"{config:12s} L={L:6d} {_fmt_s(row['median_s']):>10s} "
            f"{row.get('skipped') or ''}", file=sys.stderr, flush=True)

  by = {(r["config"], r["L"]): r for r in results}
  L0 = args.lengths[0]
  for r in results:
    base = by.get((r["config"], L0))
    r["ratio_vs_first_length"] = (
        r["median_s"] / base["median_s"]
        if r["median_s"] and base and base["median_s"] else None)
    ref = by.get((REFERENCE_OF.get(r["config"]), r["L"]))
    r["speedup_vs_reference"] = (
        ref["median_s"] / r["median_s"]
        if ref and ref["median_s"] and r["median_s"] else None)

  targets = []
  config, limit = RATIO_TARGET
  r = by.get((config, max(args.lengths)))
  if r is not None and len(args.lengths) > 1:
    ratio = r.get("ratio_vs_first_length")
    targets.append(dict(config=config, L=r["L"], L0=L0, limit_ratio=limit,
                        ratio=ratio, met=None if ratio is None else
                        ratio <= limit))

  device = next((r["device"] for r in results if r.get("device")), "?")
  print(f"\nSGConv benchmark: batch={args.batch} d_model={args.d_model} "
        f"kernel_dim={args.kernel_dim} l_max=L float32, median of "
        f"{args.repeats} ({device}; "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus)\n")
  print(f"| config | L | median wall | median CPU (all threads) | "
        f"x vs L={L0} | speedup vs ref | XLA mem (arg+out+temp) | max RSS | "
        f"compile | load avg |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    comp = r.get("compile_s")
    ratio = r.get("ratio_vs_first_length")
    spd = r.get("speedup_vs_reference")
    note = "" if r["median_s"] is not None else f" ({r['skipped']})"
    load = r.get("loadavg")
    print(f"| {r['config']} | {r['L']} | {_fmt_s(r['median_s'])}{note} | "
          f"{_fmt_s(r.get('median_cpu_s')) if r['median_s'] else '-'} | "
          f"{'-' if ratio is None else f'{ratio:.1f}x'} | "
          f"{'-' if spd is None else f'{spd:.1f}x'} | "
          f"{_fmt_b(r.get('xla_memory_bytes'))} | "
          f"{_fmt_b(r.get('maxrss_bytes'))} | "
          f"{'-' if comp is None else f'{comp:.1f} s'} | "
          f"{'-' if load is None else f'{load:.1f}'} |")
  print("\nTargets:")
  for t in targets:
    status = {True: "MET", False: "MISSED", None: "not measured"}[t["met"]]
    ratio = "-" if t["ratio"] is None else f"{t['ratio']:.1f}x"
    print(f"  {t['config']} fwd+bwd at L={t['L']} vs L={t['L0']}: {ratio} "
          f"<= {t['limit_ratio']:.0f}x: {status}")

  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(settings=dict(vars(args), cpu_count=os.cpu_count(),
                                 loadavg=os.getloadavg()),
                   results=results, targets=targets), f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
