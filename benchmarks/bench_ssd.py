"""Benchmark: Mamba-2 SSD forms (chunked, quadratic, sequential) across lengths.

Times, at each length ``t`` (``--lengths``), in float32 with ``b, h, p, n``
(``--batch --heads --head-dim --d-state``, default 4, 8, 64, 64), ``g = 1``
and chunk size ``--chunk`` (64):
  * ``chunked``: ``ssd_chunked`` (the XLA form, ``impl="auto"`` on CPU);
  * ``chunked_window``: the same with ``window=--window`` (state difference);
  * ``quadratic``: ``ssd_quadratic`` (masked attention form, O(t^2) memory);
  * ``sequential``: ``ssd_reference`` (``lax.scan`` over t);
each forward only (``fwd``) and forward + backward (``fwdbwd``: gradients of
``sum(y * ct) + sum(final_state)`` w.r.t. x, dt, A, B, C). Each config runs
jitted in a fresh subprocess (its own ``ru_maxrss``), is warmed up, then timed
``--repeats`` times; the median wall time is reported with the median CPU
time of the process (all threads), ratios vs the first length and the
speedup vs the sequential form. Prints a markdown table and writes JSON.

Usage:
  python benchmarks/bench_ssd.py [--lengths 1024 4096 16384] [--repeats 5]
"""
import argparse
import json
import os
import platform
import sys

import harness

FORMS = ("chunked", "chunked_window", "quadratic", "sequential")
MODES = ("fwd", "fwdbwd")
TARGETS = {
    # (form, mode, length): seconds (issue 3 spec; official PyTorch
    # ssd_minimal measured on this machine: 123 ms and 6.1 s).
    ("chunked", "fwdbwd", 1024): 0.060,
    ("chunked", "fwdbwd", 16384): 3.0,
}


def _build(form, mode, t, args):
  """Returns (jitted fn, example args) for one config."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from kernels.ssd import ssd_quadratic, ssd_reference
  from kernels.ssd_chunked import ssd_chunked

  b, h, p, n = args.batch, args.heads, args.head_dim, args.d_state
  rng = np.random.default_rng(0)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  x = f32(rng.normal(size=(b, t, h, p)))
  dt = f32(np.log1p(np.exp(rng.normal(size=(b, t, h)) - 4.0)))
  A = f32(-np.exp(rng.uniform(0.0, 1.0, size=h)))
  B = f32(rng.normal(size=(b, t, 1, n)))
  C = f32(rng.normal(size=(b, t, 1, n)))
  ct = f32(rng.normal(size=(b, t, h, p)))
  kw = dict(chunk_size=args.chunk)
  f = {"chunked": ssd_chunked, "chunked_window": ssd_chunked,
       "quadratic": ssd_quadratic, "sequential": ssd_reference}[form]
  if form == "chunked_window":
    kw["window"] = args.window

  def forward(x, dt, A, B, C):
    return f(x, dt, A, B, C, **kw)

  if mode == "fwd":
    return jax.jit(forward), (x, dt, A, B, C)

  # The cotangent is an argument, not a closure: a captured array would be
  # baked into the program as a constant.
  def loss(x, dt, A, B, C, ct):
    y, state = forward(x, dt, A, B, C)
    return jnp.sum(y * ct) + jnp.sum(state)

  return (jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4))),
          (x, dt, A, B, C, ct))


def run_single(form, mode, t, args):
  """Times one config in this process; returns a dict."""
  fn, fargs = _build(form, mode, t, args)
  return dict(form=form, mode=mode, t=t, **harness.time_compiled(
      fn, fargs, repeats=args.repeats, warmup=args.warmup))


def _skip_reason(form, mode, t, args):
  if form == "quadratic" and t > args.quadratic_max:
    gib = args.batch * args.heads * t * t * 4 / 2**30
    return (f"O(t^2) form: one [b, h, t, t] array is {gib:.0f} GiB "
            f"(t > {args.quadratic_max})")
  if form == "sequential" and t > args.sequential_max:
    return f"sequential scan, t > {args.sequential_max}"
  if form == "sequential" and mode == "fwdbwd" and t > args.sequential_bwd_max:
    gib = t * args.batch * args.heads * args.head_dim * args.d_state * 4 / 2**30
    return (f"the scan's backward stores all t states, {gib:.1f} GiB "
            f"(t > {args.sequential_bwd_max})")
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", type=int, nargs="+",
                      default=[1024, 4096, 16384])
  parser.add_argument("--forms", nargs="+", default=list(FORMS),
                      choices=FORMS)
  parser.add_argument("--modes", nargs="+", default=list(MODES),
                      choices=MODES)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--d-state", type=int, default=64)
  parser.add_argument("--chunk", type=int, default=64)
  parser.add_argument("--window", type=int, default=1000,
                      help="window r of chunked_window (not a multiple of "
                      "the chunk on purpose)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--quadratic-max", type=int, default=2048)
  parser.add_argument("--sequential-max", type=int, default=16384)
  parser.add_argument("--sequential-bwd-max", type=int, default=2048,
                      help="skip the sequential backward above this length "
                      "(its scan stores every state)")
  parser.add_argument("--timeout", type=float, default=300,
                      help="seconds per config and try")
  parser.add_argument("--retries", type=int, default=1)
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "bench_ssd.json"))
  parser.add_argument("--single", nargs=3, metavar=("FORM", "MODE", "T"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.single:
    harness.setup_single()  # before jax starts
    form, mode, t = args.single
    harness.print_result(run_single(form, mode, int(t), args))
    return

  passthrough = ["--batch", str(args.batch), "--heads", str(args.heads),
                 "--head-dim", str(args.head_dim), "--d-state",
                 str(args.d_state), "--chunk", str(args.chunk), "--window",
                 str(args.window), "--repeats", str(args.repeats),
                 "--warmup", str(args.warmup)]
  results = []
  for t in args.lengths:
    for form in args.forms:
      for mode in args.modes:
        reason = _skip_reason(form, mode, t, args)
        row = dict(form=form, mode=mode, t=t, median_s=None, skipped=reason)
        if reason is None:
          row = harness.run_isolated(__file__, (form, mode, t), passthrough,
                                     row, timeout=args.timeout,
                                     retries=args.retries)
        results.append(row)
        print(f"{form:15s} {mode:6s} t={t:6d} {harness.fmt_seconds(row['median_s']):>10s} "
              f"{row.get('skipped') or ''}", file=sys.stderr, flush=True)

  by = {(r["form"], r["mode"], r["t"]): r for r in results}
  t0 = args.lengths[0]
  for r in results:
    base = by.get((r["form"], r["mode"], t0))
    r["ratio_vs_first_length"] = (
        r["median_s"] / base["median_s"]
        if r["median_s"] and base and base["median_s"] else None)
    seq = by.get(("sequential", r["mode"], r["t"]))
    r["speedup_vs_sequential"] = (
        seq["median_s"] / r["median_s"]
        if seq and seq["median_s"] and r["median_s"] else None)

  targets = []
  for (form, mode, t), limit in TARGETS.items():
    r = by.get((form, mode, t))
    if r is None:
      continue
    met = None if r["median_s"] is None else r["median_s"] <= limit
    targets.append(dict(form=form, mode=mode, t=t, limit_s=limit,
                        median_s=r["median_s"], met=met))

  print(f"\nSSD benchmark: b={args.batch} h={args.heads} p={args.head_dim} "
        f"n={args.d_state} g=1 chunk={args.chunk} window={args.window} "
        f"float32, median of {args.repeats} "
        f"({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus)\n")
  print("| form | mode | t | median wall | median CPU (all threads) | "
        f"x vs t={t0} | speedup vs sequential | XLA mem (arg+out+temp) | "
        "max RSS | compile | load avg |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    comp = r.get("compile_s")
    ratio = r.get("ratio_vs_first_length")
    spd = r.get("speedup_vs_sequential")
    note = "" if r["median_s"] is not None else f" ({r['skipped']})"
    load = r.get("loadavg")
    print(f"| {r['form']} | {r['mode']} | {r['t']} | "
          f"{harness.fmt_seconds(r['median_s'])}{note} | "
          f"{harness.fmt_seconds(r.get('median_cpu_s')) if r['median_s'] else '-'} | "
          f"{'-' if ratio is None else f'{ratio:.1f}x'} | "
          f"{'-' if spd is None else f'{spd:.1f}x'} | "
          f"{harness.fmt_bytes(r.get('xla_memory_bytes'))} | "
          f"{harness.fmt_bytes(r.get('maxrss_bytes'))} | "
          f"{'-' if comp is None else f'{comp:.1f} s'} | "
          f"{'-' if load is None else f'{load:.1f}'} |")
  print("\nTargets:")
  for tg in targets:
    status = {True: "MET", False: "MISSED", None: "not measured"}[tg["met"]]
    print(f"  {tg['form']} {tg['mode']} at t={tg['t']}: "
          f"{harness.fmt_seconds(tg['median_s'])} <= {harness.fmt_seconds(tg['limit_s'])}: {status}")

  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(settings=dict(vars(args), cpu_count=os.cpu_count(),
                                 loadavg=os.getloadavg()),
                   results=results, targets=targets), f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
