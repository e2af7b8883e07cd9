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
import sys

import harness

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
  fn, fargs = _build(config, L, args)
  return dict(config=config, L=L, **harness.time_compiled(
      fn, fargs, repeats=args.repeats, warmup=args.warmup))


def _skip_reason(config, L, args):
  if config == "layer_ref" and L > args.ref_max:
    return f"direct-sum convolution, L > {args.ref_max}"
  return None


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
    harness.setup_single()  # before jax starts
    harness.print_result(run_single(args.single[0], int(args.single[1]),
                                    args))
    return

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
        row = harness.run_isolated(__file__, (config, L), passthrough, row,
                                   timeout=args.timeout, retries=args.retries)
      results.append(row)
      print(f"{config:12s} L={L:6d} {harness.fmt_seconds(row['median_s']):>10s} "
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
    print(f"| {r['config']} | {r['L']} | {harness.fmt_seconds(r['median_s'])}{note} | "
          f"{harness.fmt_seconds(r.get('median_cpu_s')) if r['median_s'] else '-'} | "
          f"{'-' if ratio is None else f'{ratio:.1f}x'} | "
          f"{'-' if spd is None else f'{spd:.1f}x'} | "
          f"{harness.fmt_bytes(r.get('xla_memory_bytes'))} | "
          f"{harness.fmt_bytes(r.get('maxrss_bytes'))} | "
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
