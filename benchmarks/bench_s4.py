"""Benchmark: S4 (DPLR) and S4D kernels and the S4 layer across lengths.

Times, at each length L (``--lengths``), in float32:
  * kernel generation ``K [d, L]``: S4D (``s4d_kernel``, blocked Vandermonde)
    and S4 (``dplr_kernel``, Cauchy + Woodbury + irfft), each against its
    reference (explicit powers / dense recurrence), forward only;
  * the S4 layer forward + backward (grads w.r.t. params and input) at batch
    ``--batch``, ``d_model = --d-model``, ``d_state = --d-state``, in both modes
    (dplr with ``l_max = L``; diag = S4D-Lin, zoh).
Each config runs jitted in a fresh subprocess (so ``ru_maxrss`` is its own peak
host memory), is warmed up, then timed ``--repeats`` times; the median is
reported, with ratios vs the first length and vs the reference form. The
compiled executable's ``memory_analysis()`` (arguments + outputs + temporaries)
is reported too. Prints a markdown table and writes JSON.

Usage:
  python benchmarks/bench_s4.py [--lengths 1024 4096 16384] [--repeats 5]
"""
import argparse
import json
import os
import platform
import sys

import harness

TARGETS = {
    # (config, length): seconds
    ("layer_diag", 1024): 0.1,
    ("layer_diag", 16384): 2.0,
    ("layer_dplr", 16384): 3.0,
}
MEMORY_TARGET_BYTES = 4 * 2**30  # at the longest length, layers
CONFIGS = ("s4d_kernel", "s4d_kernel_ref", "dplr_kernel", "dplr_kernel_ref",
           "layer_diag", "layer_diag_ref", "layer_dplr", "layer_dplr_ref",
           "layer_dplr_bidir")
REFERENCE_OF = {"s4d_kernel": "s4d_kernel_ref", "dplr_kernel": "dplr_kernel_ref",
                "layer_diag": "layer_diag_ref", "layer_dplr": "layer_dplr_ref"}


def _build(config, L, args):
  """Returns (jitted fn, example args) for one config."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from kernels import Impl, dplr, hippo
  from kernels.vandermonde import s4d_kernel
  from layers.s4 import S4

  d, N = args.d_model, args.d_state
  rng = np.random.default_rng(0)
  log_dt = jnp.asarray(rng.uniform(np.log(1e-3), np.log(1e-1), d), jnp.float32)
  cnormal = lambda *s: jnp.asarray(
      rng.normal(size=s) + 1j * rng.normal(size=s), jnp.complex64) / np.sqrt(2)
  if config.startswith("s4d_kernel"):
    Lam = jnp.broadcast_to(jnp.asarray(hippo.s4d_lin(N)), (d, N // 2))
    B = jnp.ones((d, N // 2), jnp.complex64)
    C = cnormal(d, N // 2)
    impl = Impl.REFERENCE if config.endswith("_ref") else Impl.XLA
    fn = jax.jit(lambda A, B, C, log_dt: s4d_kernel(A, B, C, log_dt, L,
                                                    impl=impl))
    return fn, (Lam, B, C, log_dt)
  if config.startswith("dplr_kernel"):
    nplr = hippo.legs_nplr(N, 1)
    Lam = jnp.broadcast_to(jnp.asarray(nplr.Lambda), (d, N // 2))
    P = jnp.broadcast_to(jnp.asarray(nplr.P)[:, None], (1, d, N // 2))
    B = jnp.broadcast_to(jnp.asarray(nplr.B), (d, N // 2))
    C = cnormal(d, N // 2)
    impl = Impl.REFERENCE if config.endswith("_ref") else args.impl
    fn = jax.jit(lambda Lam, P, B, C, log_dt: dplr.dplr_kernel(
        Lam, P, B, C, log_dt, L, impl=impl))
    return fn, (Lam, P, B, C, log_dt)
  # layer_<mode>[_ref|_bidir]: "_ref" runs the reference forms (explicit
  # kernel and direct-sum convolution); "_bidir" is the bidirectional layer the
  # LRA configs use.
  mode = config.split("_")[1]
  layer = S4(d_model=d, d_state=N, mode=mode,
             ssm_init="legs" if mode == "dplr" else "lin",
             l_max=L if mode == "dplr" else None,
             bidirectional=config.endswith("_bidir"),
             impl="reference" if config.endswith("_ref") else args.impl)
  x = jnp.asarray(rng.normal(size=(args.batch, L, d)), jnp.float32)
  ct = jnp.asarray(rng.normal(size=(args.batch, L, d)), jnp.float32)
  params = jax.jit(nn.Module.init, static_argnums=0)(
      layer, jax.random.key(0), x[:1, :8])["params"]
  params = nn.unbox(params)

  # The cotangent is an argument, not a closure: a captured array would be
  # baked into the program as a constant (slow compiles, odd fusions).
  def loss(params, x, ct):
    return jnp.sum(layer.apply({"params": params}, x) * ct)

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  return fn, (params, x, ct)


def run_single(config, L, args):
  """Times one config in this process; returns a dict."""
  fn, fargs = _build(config, L, args)
  return dict(config=config, L=L, **harness.time_compiled(
      fn, fargs, repeats=args.repeats, warmup=args.warmup))


def _skip_reason(config, L, args):
  if config == "dplr_kernel_ref" and L > args.dplr_ref_max:
    return f"dense recurrence, L > {args.dplr_ref_max}"
  if config == "s4d_kernel_ref" and L > args.s4d_ref_max:
    return f"sequential scan, L > {args.s4d_ref_max}"
  if config.startswith("layer_") and config.endswith("_ref") and (
      L > args.layer_ref_max):
    return f"direct-sum convolution, L > {args.layer_ref_max}"
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", type=int, nargs="+",
                      default=[1024, 4096, 16384])
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS),
                      choices=CONFIGS)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--d-model", type=int, default=256)
  parser.add_argument("--d-state", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--impl", default="auto")
  parser.add_argument("--dplr-ref-max", type=int, default=4096,
                      help="skip the dense DPLR reference above this length")
  parser.add_argument("--s4d-ref-max", type=int, default=16384)
  parser.add_argument("--layer-ref-max", type=int, default=1024,
                      help="skip the reference S4 layer (O(L^2) convolution) "
                      "above this length")
  parser.add_argument("--timeout", type=float, default=300,
                      help="seconds per config and try")
  parser.add_argument("--retries", type=int, default=1)
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "bench_s4.json"))
  parser.add_argument("--single", nargs=2, metavar=("CONFIG", "L"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.single:
    harness.setup_single()  # before jax starts
    harness.print_result(run_single(args.single[0], int(args.single[1]),
                                    args))
    return

  passthrough = ["--batch", str(args.batch), "--d-model", str(args.d_model),
                 "--d-state", str(args.d_state), "--repeats",
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
      print(f"{config:16s} L={L:6d} {harness.fmt_seconds(row['median_s']):>10s} "
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
  for (config, L), limit in TARGETS.items():
    r = by.get((config, L))
    if r is None:
      continue
    met = None if r["median_s"] is None else r["median_s"] <= limit
    targets.append(dict(config=config, L=L, limit_s=limit,
                        median_s=r["median_s"], met=met))
  L_max = max(args.lengths)
  for config in ("layer_diag", "layer_dplr"):
    r = by.get((config, L_max))
    if r is None or r["median_s"] is None:
      continue
    peak = max(x for x in (r.get("xla_memory_bytes"), r.get("maxrss_bytes"))
               if x is not None)
    targets.append(dict(config=config, L=L_max, limit_bytes=MEMORY_TARGET_BYTES,
                        peak_bytes=peak, met=peak <= MEMORY_TARGET_BYTES))

  print(f"\nS4 benchmark: batch={args.batch} d_model={args.d_model} "
        f"d_state={args.d_state} float32, median of {args.repeats} "
        f"({platform.processor() or platform.machine()}, "
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
    if "limit_s" in t:
      print(f"  {t['config']} fwd+bwd at L={t['L']}: "
            f"{harness.fmt_seconds(t['median_s'])} <= {harness.fmt_seconds(t['limit_s'])}: {status}")
    else:
      print(f"  {t['config']} peak memory at L={t['L']}: "
            f"{harness.fmt_bytes(t['peak_bytes'])} <= {harness.fmt_bytes(t['limit_bytes'])}: {status}")

  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(settings=dict(vars(args), cpu_count=os.cpu_count(),
                                 loadavg=os.getloadavg()),
                   results=results, targets=targets), f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
