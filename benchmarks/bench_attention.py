"""Benchmark: attention-family sequence mixers across lengths, and Informer.

Times every registered attention mixer as a layer (``Mixer(d_model=d,
**kwargs)(x, mask=None, deterministic=True)``: its projections, kernel and
output projection, nothing else) at each length ``t`` (``--lengths``), in
float32 with batch ``--batch`` (8), width ``--width`` (256) and
``--heads`` (4) heads of width ``width / heads`` (64):
  * ``attention_dense`` / ``attention_blocked``: the ``attention`` mixer with
    the XLA form forced to the dense ``[b, h, t, t]`` scores or to the blocked
    (flash) kernel (``kernels.attention.DENSE_MAX_BYTES`` set in the
    config's subprocess);
  * ``linear_attention_causal`` / ``linear_attention``: ``linear_attention``
    with ``causal=True`` / ``False`` (chunked kernel);
  * ``linformer`` (``k=256``, ``max_length=t``), ``lowrank`` (class default
    rank), ``longformer`` (one-sided window 256), ``bigbird`` (block 64,
    3 random blocks), ``probsparse`` (factor 5; rng ``"sample"``);
each forward only (``fwd``) and forward + backward (``fwdbwd``: gradients of
``sum(y * ct)`` w.r.t. the parameters and ``x``). ``attention_kernel`` times
the softmax-attention op alone (``kernels.attention.attention`` on
``q, k, v [b, t, h, p]``, gradients w.r.t. ``q, k, v``): the same work as
PyTorch's ``scaled_dot_product_attention``, which the issue's full-attention
target names.

``--baselines`` also times, in the same run and on the same shapes, the
PyTorch references the targets were set against, where they are installed
(they are not dependencies of this project): ``torch_sdpa`` (``torch.nn.
functional.scaled_dot_product_attention`` on ``[b, h, t, p]``, against
``attention_kernel``) and ``pypi_linformer`` (the PyPI ``linformer``
package's ``LinformerSelfAttention(dim, seq_len=t, heads, k=256)``, against
``linformer``), with ``torch.get_num_threads()`` threads. The table then
gives each row's speed-up over its baseline. A mixer that is not
registered (its module has not landed) is skipped with that reason, as is a
config whose XLA memory estimate (``compiled.memory_analysis()``: arguments
+ outputs + temporaries) exceeds ``--max-gib`` or that runs past
``--timeout``.

``--informer``: the Informer model (``models.informer.Informer``) at the
ETTh1 shapes of the paper (batch 32, seq 96 / label 48 / pred 24, d_model
512, 7 channels, 4 time features, the class defaults otherwise), training
mode (dropout, batch statistics), forward + backward of the MSE loss.

Each config runs jitted in a fresh subprocess (its own ``ru_maxrss``; the
malloc settings of ``python -m train``, see ``train/host.py``), is warmed
up, then timed at least ``--repeats`` times and until the timed runs add up
to ``--min-time`` seconds (this host has slow spells of a second or two; a
median over a longer window is steadier). The median wall time is reported
with the median CPU time (all threads), the ratio to the first length,
XLA's memory estimate and the process's max RSS. Prints a markdown table
and writes JSON (every run's time included).

Usage:
  python benchmarks/bench_attention.py [--lengths 1024 4096 16384]
      [--mixers attention_blocked linformer ...] [--modes fwd fwdbwd]
  python benchmarks/bench_attention.py --informer
"""
import argparse
import json
import os
import platform
import sys
import time

import harness

# name -> (registered mixer, layer kwargs; "{t}" means the length).
MIXERS = {
    "attention_kernel": ("attention", {}),
    "attention_dense": ("attention", {}),
    "attention_blocked": ("attention", {}),
    "linear_attention_causal": ("linear_attention", dict(causal=True)),
    "linear_attention": ("linear_attention", dict(causal=False)),
    "linformer": ("linformer", dict(k=256, max_length="{t}")),
    "lowrank": ("lowrank", {}),
    "longformer": ("longformer", dict(window=256)),
    "bigbird": ("bigbird", dict(block_size=64, num_rand_blocks=3)),
    "probsparse": ("probsparse", dict(factor=5)),
}
MODES = ("fwd", "fwdbwd")
# Our config -> the PyTorch reference timed beside it with --baselines.
BASELINES = {"attention_kernel": "torch_sdpa", "linformer": "pypi_linformer"}
TARGETS = {
    # (config, mode, length): seconds (issue 4 spec: torch SDPA and the PyPI
    # linformer package measured on this machine, the official Informer
    # PyTorch code 1.75 s).
    ("attention_kernel", "fwdbwd", 1024): 0.345,
    ("attention_kernel", "fwdbwd", 4096): 5.7,
    ("linformer", "fwdbwd", 1024): 0.160,
    ("linformer", "fwdbwd", 16384): 3.3,
    ("informer", "fwdbwd", 96): 0.9,
}
INFORMER = dict(batch=32, seq_len=96, label_len=48, pred_len=24, d_model=512,
                channels=7, time_features=4)


def _mixer_kwargs(name, t, args):
  registered, kw = MIXERS[name]
  kw = {k: (t if v == "{t}" else v) for k, v in kw.items()}
  if name == "attention_blocked":
    kw.update({k: v for k, v in (("block_q", args.block_q),
                                 ("block_k", args.block_k)) if v})
  return registered, dict(n_heads=args.heads, **kw)


def _build_mixer(name, mode, t, args):
  """Returns (jitted fn, example args) for one mixer config."""
  import jax
  import jax.numpy as jnp

  import layers
  from kernels import attention as attention_ops

  if name == "attention_kernel":
    return _build_kernel(mode, t, args)
  if name == "attention_dense":
    attention_ops.DENSE_MAX_BYTES = float("inf")
  elif name == "attention_blocked":
    attention_ops.DENSE_MAX_BYTES = 0
  registered, kw = _mixer_kwargs(name, t, args)
  layer = layers.get_mixer(registered)(d_model=args.width, **kw)
  key = jax.random.key(0)
  x = jax.random.normal(jax.random.fold_in(key, 1),
                        (args.batch, t, args.width), jnp.float32)
  ct = jax.random.normal(jax.random.fold_in(key, 2), x.shape, jnp.float32)
  rngs = {"params": key, "sample": jax.random.fold_in(key, 3),
          "dropout": jax.random.fold_in(key, 4)}
  # Params do not depend on the length (Linformer's depend on max_length):
  # a short input keeps init cheap.
  params = jax.jit(lambda x: layer.init(rngs, x[:, :min(t, 1024)]))(x)
  sample = jax.random.fold_in(key, 5)

  def forward(params, x):
    return layer.apply(params, x, rngs={"sample": sample})

  if mode == "fwd":
    return jax.jit(forward), (params, x)

  def loss(params, x, ct):
    return jnp.sum(forward(params, x) * ct)

  return jax.jit(jax.grad(loss, argnums=(0, 1))), (params, x, ct)


def _build_kernel(mode, t, args):
  """``kernels.attention.attention`` alone (the dispatcher's choice of
  dense or blocked form), gradients w.r.t. ``q, k, v``."""
  import jax
  import jax.numpy as jnp

  from kernels import attention as attention_ops

  key = jax.random.key(0)
  shape = (args.batch, t, args.heads, args.width // args.heads)
  q, k, v, ct = (jax.random.normal(jax.random.fold_in(key, i), shape,
                                   jnp.float32) for i in range(4))
  blocks = {name: size for name, size in (("block_q", args.block_q),
                                          ("block_k", args.block_k)) if size}
  forward = lambda q, k, v: attention_ops.attention(q, k, v, **blocks)[0]
  if mode == "fwd":
    return jax.jit(forward), (q, k, v)
  return jax.jit(jax.grad(lambda q, k, v: jnp.sum(forward(q, k, v) * ct),
                          argnums=(0, 1, 2))), (q, k, v)


def run_baseline(name, mode, t, args):
  """Times a PyTorch reference (``BASELINES``) in this process."""
  import resource

  import torch

  torch.manual_seed(0)
  b, d, h = args.batch, args.width, args.heads
  if name == "torch_sdpa":
    sdpa = torch.nn.functional.scaled_dot_product_attention
    q, k, v = (torch.randn(b, h, t, d // h, requires_grad=mode == "fwdbwd")
               for _ in range(3))
    ct = torch.randn(b, h, t, d // h)
    forward = lambda: sdpa(q, k, v)
  else:
    from linformer import LinformerSelfAttention
    layer = LinformerSelfAttention(dim=d, seq_len=t, heads=h, k=256)
    x = torch.randn(b, t, d, requires_grad=mode == "fwdbwd")
    ct = torch.randn(b, t, d)
    forward = lambda: layer(x)

  def step():
    if mode == "fwd":
      with torch.no_grad():
        forward()
    else:
      (forward() * ct).sum().backward()

  timing = harness.time_calls(step, repeats=args.repeats, warmup=args.warmup,
                              min_time_s=args.min_time)
  return dict(config=name, mode=mode, t=t, **timing,
              maxrss_bytes=resource.getrusage(
                  resource.RUSAGE_SELF).ru_maxrss * 1024,
              loadavg=os.getloadavg()[0],
              device=f"torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")


def _build_informer(args):
  """Informer forward + backward of the MSE loss at the ETTh1 shapes."""
  import jax
  import jax.numpy as jnp

  from models.informer import Informer

  s = INFORMER
  b, c, nt = s["batch"], s["channels"], s["time_features"]
  model = Informer(enc_in=c, dec_in=c, c_out=c, seq_len=s["seq_len"],
                   label_len=s["label_len"], pred_len=s["pred_len"],
                   d_model=s["d_model"])
  key = jax.random.key(0)
  nrm = lambda i, shape: jax.random.normal(jax.random.fold_in(key, i), shape,
                                           jnp.float32)
  batch = dict(
      inputs=nrm(1, (b, s["seq_len"], c)),
      inputs_time=nrm(2, (b, s["seq_len"], nt)),
      decoder_inputs=nrm(3, (b, s["label_len"], c)),
      decoder_time=nrm(4, (b, s["label_len"] + s["pred_len"], nt)),
      targets=nrm(5, (b, s["pred_len"], c)))
  rngs = {"params": key, "sample": jax.random.fold_in(key, 6),
          "dropout": jax.random.fold_in(key, 7)}
  extra = {k: batch[k] for k in ("inputs_time", "decoder_inputs",
                                 "decoder_time")}
  variables = jax.jit(lambda b: model.init(rngs, b["inputs"], **extra))(batch)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}

  def loss(params, state, batch, rng):
    pred, new_state = model.apply(
        {"params": params, **state}, batch["inputs"],
        inputs_time=batch["inputs_time"],
        decoder_inputs=batch["decoder_inputs"],
        decoder_time=batch["decoder_time"], train=True,
        rngs={"dropout": jax.random.fold_in(rng, 0),
              "sample": jax.random.fold_in(rng, 1)},
        mutable=list(state))
    return jnp.mean((pred - batch["targets"]) ** 2), new_state

  fn = jax.jit(jax.grad(loss, has_aux=True))
  return fn, (params, state, batch, jax.random.key(1))


def run_single(name, mode, t, args):
  """Times one config in this process; returns a dict (``skipped`` set if
  XLA's memory estimate is over the limit)."""
  if name in BASELINES.values():
    return run_baseline(name, mode, t, args)
  if name == "informer":
    fn, fargs = _build_informer(args)
  else:
    fn, fargs = _build_mixer(name, mode, t, args)
  row = dict(config=name, mode=mode, t=t)
  t_start = time.perf_counter()
  mem = fn.lower(*fargs).compile().memory_analysis()
  compile_s = time.perf_counter() - t_start  # the timing below hits the cache
  if mem is not None:
    need = (mem.temp_size_in_bytes + mem.argument_size_in_bytes +
            mem.output_size_in_bytes)
    if need > args.max_gib * 2**30:
      return dict(row, median_s=None, xla_memory_bytes=int(need),
                  skipped=f"XLA memory estimate {need / 2**30:.1f} GiB > "
                  f"{args.max_gib:g} GiB")
  return dict(row, **dict(harness.time_compiled(
      fn, fargs, repeats=args.repeats, warmup=args.warmup,
      min_time_s=args.min_time),
                          compile_s=compile_s))


def _skip_reason(name, mode, t, args):
  """Reasons known before starting a subprocess."""
  if name == "informer":
    return None
  if name in BASELINES.values():
    import importlib.util  # pylint: disable=g-import-not-at-top
    for module in ("torch",) + (("linformer",) if name == "pypi_linformer"
                                else ()):
      if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (baseline only)"
    return None
  if harness.REPO not in sys.path:
    sys.path.insert(0, harness.REPO)
  import layers  # pylint: disable=g-import-not-at-top
  registered = MIXERS[name][0]
  if registered not in layers.MIXERS:
    return f"mixer {registered!r} is not registered (module not landed)"
  if name == "attention_dense":
    # Scores, probabilities and their cotangent: about 3 [b, h, t, t] arrays.
    gib = 3 * args.batch * args.heads * t * t * 4 / 2**30
    if gib > args.max_gib:
      return (f"dense scores: ~3 [b, h, t, t] float32 arrays = {gib:.0f} GiB "
              f"> {args.max_gib:g} GiB")
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", type=int, nargs="+",
                      default=[1024, 4096, 16384])
  parser.add_argument("--mixers", nargs="+", default=list(MIXERS),
                      choices=list(MIXERS))
  parser.add_argument("--modes", nargs="+", default=list(MODES),
                      choices=MODES)
  parser.add_argument("--informer", action="store_true",
                      help="time only the Informer model (ETTh1 shapes)")
  parser.add_argument("--baselines", action="store_true",
                      help="also time the PyTorch references (torch SDPA, "
                      "the PyPI linformer package) where installed")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--block-q", type=int, default=0,
                      help="attention_blocked block_q (0: the layer default)")
  parser.add_argument("--block-k", type=int, default=0,
                      help="attention_blocked block_k (0: the layer default)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--min-time", type=float, default=3.0,
                      help="time each config at least this many seconds")
  parser.add_argument("--max-gib", type=float, default=20.0,
                      help="skip configs whose XLA memory estimate is larger")
  parser.add_argument("--timeout", type=float, default=600,
                      help="seconds per config and try")
  parser.add_argument("--retries", type=int, default=1)
  parser.add_argument("--out", default=None,
                      help="JSON path (default benchmarks/results/"
                      "bench_attention.json, or bench_informer.json)")
  parser.add_argument("--single", nargs=3, metavar=("CONFIG", "MODE", "T"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.single:
    harness.setup_single()  # before jax starts
    name, mode, t = args.single
    harness.print_result(run_single(name, mode, int(t), args))
    return

  results_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "results")
  if args.out is None:
    args.out = os.path.join(results_dir, "bench_informer.json"
                            if args.informer else "bench_attention.json")
  passthrough = ["--batch", args.batch, "--width", args.width, "--heads",
                 args.heads, "--block-q", args.block_q, "--block-k",
                 args.block_k, "--repeats", args.repeats, "--warmup",
                 args.warmup, "--min-time", args.min_time, "--max-gib",
                 args.max_gib]
  if args.informer:
    configs = [("informer", "fwdbwd", INFORMER["seq_len"])]
  else:
    names = list(args.mixers)
    if args.baselines:
      names += [BASELINES[n] for n in args.mixers if n in BASELINES]
    configs = [(name, mode, t) for t in args.lengths for name in names
               for mode in args.modes]
  results = []
  for name, mode, t in configs:
    reason = _skip_reason(name, mode, t, args)
    row = dict(config=name, mode=mode, t=t, median_s=None, skipped=reason)
    if reason is None:
      row = harness.run_isolated(__file__, (name, mode, t), passthrough, row,
                                 timeout=args.timeout, retries=args.retries)
    results.append(row)
    print(f"{name:24s} {mode:6s} t={t:6d} "
          f"{harness.fmt_seconds(row['median_s']):>10s} "
          f"{row.get('skipped') or ''}", file=sys.stderr, flush=True)

  by = {(r["config"], r["mode"], r["t"]): r for r in results}
  lengths = sorted({r["t"] for r in results})
  t0, t_last = lengths[0], lengths[-1]
  for r in results:
    base = by.get((r["config"], r["mode"], t0))
    r["ratio_vs_first_length"] = (
        r["median_s"] / base["median_s"]
        if r["median_s"] and base and base["median_s"] else None)
    ref = by.get((BASELINES.get(r["config"]), r["mode"], r["t"]))
    r["speedup_vs_baseline"] = (
        ref["median_s"] / r["median_s"]
        if r["median_s"] and ref and ref["median_s"] else None)

  targets = []
  for (name, mode, t), limit in TARGETS.items():
    r = by.get((name, mode, t))
    if r is None:
      continue
    met = None if r["median_s"] is None else r["median_s"] <= limit
    targets.append(dict(config=name, mode=mode, t=t, limit_s=limit,
                        median_s=r["median_s"], met=met))

  tuned = any(r.get("malloc_tuned") for r in results)
  where = (f"{platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cpus, malloc: "
           f"{'train/host.py settings' if tuned else 'glibc defaults'}")
  if args.informer:
    print(f"\nInformer benchmark: {INFORMER}, float32, forward + backward "
          f"of the MSE loss (train mode), median of >= {args.repeats} runs and "
          f">= {args.min_time:g} s ({where})\n")
  else:
    print(f"\nAttention mixers: b={args.batch} d={args.width} "
          f"h={args.heads} p={args.width // args.heads} float32, layer "
          f"only, median of >= {args.repeats} runs and >= "
          f"{args.min_time:g} s ({where})\n")
  print(f"| config | mode | t | median wall | median CPU (all threads) | "
        f"x vs t={t0} | speed-up vs baseline | XLA mem (arg+out+temp) | "
        "max RSS | compile | load avg |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    comp, ratio, load, up = (r.get(k) for k in (
        "compile_s", "ratio_vs_first_length", "loadavg",
        "speedup_vs_baseline"))
    note = "" if r["median_s"] is not None else f" ({r['skipped']})"
    print(f"| {r['config']} | {r['mode']} | {r['t']} | "
          f"{harness.fmt_seconds(r['median_s'])}{note} | "
          f"{harness.fmt_seconds(r.get('median_cpu_s')) if r['median_s'] else '-'} | "
          f"{'-' if ratio is None else f'{ratio:.1f}x'} | "
          f"{'-' if up is None else f'{up:.2f}x'} | "
          f"{harness.fmt_bytes(r.get('xla_memory_bytes'))} | "
          f"{harness.fmt_bytes(r.get('maxrss_bytes'))} | "
          f"{'-' if comp is None else f'{comp:.1f} s'} | "
          f"{'-' if load is None else f'{load:.1f}'} |")
  if not args.informer and len(lengths) > 1:
    print(f"\nCost ratio t={t_last} / t={t0} (linear in t would be "
          f"{t_last / t0:.0f}x, quadratic {(t_last / t0) ** 2:.0f}x):")
    for name in args.mixers:
      for mode in args.modes:
        r = by.get((name, mode, t_last))
        ratio = None if r is None else r.get("ratio_vs_first_length")
        print(f"  {name} {mode}: "
              f"{'-' if ratio is None else f'{ratio:.1f}x'}")
  if targets:
    print("\nTargets:")
  for tg in targets:
    status = {True: "MET", False: "MISSED", None: "not measured"}[tg["met"]]
    print(f"  {tg['config']} {tg['mode']} at t={tg['t']}: "
          f"{harness.fmt_seconds(tg['median_s'])} <= "
          f"{harness.fmt_seconds(tg['limit_s'])}: {status}")

  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(settings=dict(vars(args), cpu_count=os.cpu_count(),
                                 loadavg=os.getloadavg()),
                   results=results, targets=targets), f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
