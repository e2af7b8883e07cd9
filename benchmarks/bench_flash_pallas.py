"""Native check and benchmark: full attention's Pallas kernels against the XLA form.

Meant for a GPU or TPU (``--interpret`` runs the kernels in interpret mode, for a
dry run of the script on CPU). In one process, on the default backend:

1. **Check.** At a small shape (causal, key masks, segments, a length that does
   not divide the blocks) the Pallas kernels' output and q/k/v gradients are
   compared with the dense reference; the relative errors are printed and the
   exit status is 1 if one exceeds ``--tol``.
2. **Timing.** Forward and forward + backward of the kernel alone
   (``kernels.attention.attention`` with ``impl="pallas"`` and with
   ``impl="xla"``) at each length: medians (``harness.time_calls``), the ratio
   to the first length and the Pallas / XLA speed-up, as a markdown table, and
   JSON in ``benchmarks/results/bench_flash_pallas.json``.

Usage:
  python benchmarks/bench_flash_pallas.py [--lengths 1024 4096 16384] [--causal]
  python benchmarks/bench_flash_pallas.py --interpret --lengths 256 --batch 1
"""
import argparse
import json
import os
import sys

import harness

if harness.REPO not in sys.path:
  sys.path.insert(0, harness.REPO)


def check(args) -> dict:
  """Relative errors of the Pallas form against the reference."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from kernels import attention as attention_ops

  rng = np.random.default_rng(0)
  b, t, h, p = 2, 200, 2, args.head_dim
  q, k, v, ct = (jnp.asarray(rng.normal(size=(b, t, h, p)), jnp.float32)
                 for _ in range(4))
  kw = dict(causal=True, kv_mask=jnp.asarray(rng.random((b, t)) < 0.9),
            q_segment_ids=jnp.asarray(np.sort(rng.integers(0, 3, (b, t)),
                                              axis=1), jnp.int32))
  kw["kv_segment_ids"] = kw["q_segment_ids"]

  def run(impl):
    fn = jax.jit(
        lambda q, k, v: attention_ops.attention(q, k, v, impl=impl, **kw)[0])
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(ct))

  got, want = run(_pallas_impl(args)), run("reference")
  return {name: float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w)))
          for name, g, w in zip(("out", "dq", "dk", "dv"), got, want)}


def _pallas_impl(args):
  return "pallas_interpret" if args.interpret else "pallas"


def time_form(impl, mode, t, args) -> dict:
  import jax
  import jax.numpy as jnp

  from kernels import attention as attention_ops

  dtype = jnp.dtype(args.dtype)
  key = jax.random.key(0)
  shape = (args.batch, t, args.heads, args.head_dim)
  q, k, v, ct = (jax.random.normal(jax.random.fold_in(key, i), shape, dtype)
                 for i in range(4))
  forward = lambda q, k, v: attention_ops.attention(q, k, v, impl=impl,
                                                    causal=args.causal)[0]
  if mode == "fwd":
    fn = jax.jit(forward)
  else:
    fn = jax.jit(jax.grad(
        lambda q, k, v: jnp.sum((forward(q, k, v) * ct).astype(jnp.float32)),
        argnums=(0, 1, 2)))
  return harness.time_compiled(fn, (q, k, v), repeats=args.repeats,
                               warmup=args.warmup, min_time_s=args.min_time)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", type=int, nargs="+",
                      default=[1024, 4096, 16384])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--dtype", default="float32",
                      choices=["float32", "bfloat16"])
  parser.add_argument("--causal", action="store_true")
  parser.add_argument("--interpret", action="store_true",
                      help="Pallas in interpret mode (a CPU dry run)")
  parser.add_argument("--tol", type=float, default=1e-4,
                      help="largest relative error the check accepts")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--min-time", type=float, default=1.0)
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      "bench_flash_pallas.json"))
  args = parser.parse_args()

  import jax
  print(f"device: {jax.devices()[0]}")
  errors = check(args)
  ok = max(errors.values()) <= args.tol
  print("check against the reference (relative errors): " +
        ", ".join(f"{n} {e:.2e}" for n, e in errors.items()) +
        (" OK" if ok else f" FAILED (> {args.tol:g})"))

  rows = []
  for t in args.lengths:
    for mode in ("fwd", "fwdbwd"):
      for form, impl in (("pallas", _pallas_impl(args)), ("xla", "xla")):
        row = dict(form=form, mode=mode, t=t)
        try:
          row.update(time_form(impl, mode, t, args))
        except Exception as e:  # pylint: disable=broad-except
          row["skipped"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
        print(f"{form:7s} {mode:6s} t={t:6d} "
              f"{harness.fmt_seconds(row.get('median_s'))}", flush=True)

  med = {(r["form"], r["mode"], r["t"]): r.get("median_s") for r in rows}
  print("\n| form | mode | t | median | x vs first t | Pallas speed-up "
        "vs XLA | XLA mem |\n|---|---|---|---|---|---|---|")
  for r in rows:
    m, t0 = r.get("median_s"), med[(r["form"], r["mode"], args.lengths[0])]
    xla = med[("xla", r["mode"], r["t"])]
    ratio = f"{m / t0:.1f}x" if m and t0 else "-"
    speed = (f"{xla / m:.2f}x" if r["form"] == "pallas" and m and xla
             else "-")
    print(f"| {r['form']} | {r['mode']} | {r['t']} | "
          f"{harness.fmt_seconds(m)} | {ratio} | {speed} | "
          f"{harness.fmt_bytes(r.get('xla_memory_bytes'))} |")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(args=vars(args), check=errors, rows=rows), f, indent=1)
  print(f"\nwrote {args.out}")
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
