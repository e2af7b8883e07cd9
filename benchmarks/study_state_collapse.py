"""Study: state collapse of a Mamba-2 language model beyond its training length,
and the training-free mitigations of Chen et al., "Stuffed Mamba" (arXiv
2410.07145).

1. Trains the probe model of ``--config`` (default configs/probe_passkey.py:cpu,
   trained at ``data.<task>.max_length`` = T tokens) in ``--workdir``, or resumes /
   reuses the run there.
2. Evaluates its best checkpoint on fresh passkey (or MQAR) sequences of
   ``m * T`` tokens for every multiple ``m`` in ``--multiples`` (1x to 16x), the
   same sequences for every setting, under each setting of the Mamba-2 layer's
   switches (no retraining):
     none                      the trained model as it is;
     decay_scale=L             alpha_t -> alpha_t ** L (forget more);
     insert_scale=G            B_t -> G * B_t (remember less);
     state_norm=auto           the state rescaled after every update so its
                               norm stays below the largest norm the model
                               reaches on training-length sequences before the
                               question (measured here: the mean over examples,
                               the largest over layers, heads and chunk ends);
     window=R                  only the last R tokens kept in the state, by
                               state difference (R in tokens; "T" = T).
3. Records exact-match accuracy (all key digits right; teacher forcing, which
   for greedy decoding is the same answer), per-token accuracy, passkey
   accuracy by where the key sits (quartiles of depth: a model that only
   forgets fails on early keys; a collapsed one fails wherever the key is), and
   the norm of the SSM state at the end of every chunk (mean over examples; the
   largest over heads and layers) against position; ``state_norm_max`` is the
   largest before the last chunk (which holds the question and the answer).
Writes JSON and a plot (accuracy vs evaluation length; state norm vs position)
and prints a markdown table.

Usage:
  python benchmarks/study_state_collapse.py [--config configs/probe_passkey.py:cpu]
      [--workdir runs/state_collapse] [--multiples 1 2 4 8 16]
      [--num-examples 128] [--settings none decay_scale=1.5 ...]
"""
import argparse
import importlib.util
import json
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

DEFAULT_SETTINGS = (
    "none",
    "decay_scale=1.25",
    "decay_scale=1.5",
    "decay_scale=2",
    "insert_scale=0.5",
    "decay_scale=1.5,insert_scale=0.5",
    "state_norm=auto",
    "window=T",
    "window=T/2",
)


def load_config(spec: str):
  """``path/to/config.py[:preset]`` -> the ConfigDict its get_config returns."""
  path, _, preset = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("study_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def parse_setting(text: str, train_length: int, auto_norm: float | None):
  """``"decay_scale=1.5,window=T"`` -> mixer field overrides."""
  if text == "none":
    return {}
  fields = {}
  for item in text.split(","):
    key, _, value = item.partition("=")
    if key == "window":
      value = value.replace("T", str(train_length))
      num, _, den = value.partition("/")
      fields[key] = int(num) // int(den or 1)
    elif key == "state_norm" and value == "auto":
      if auto_norm is None:
        raise ValueError("state_norm=auto needs the calibration run")
      fields[key] = float(auto_norm)
    elif key in ("decay_scale", "insert_scale", "state_norm"):
      fields[key] = float(value)
    else:
      raise ValueError(f"unknown setting field {key!r} in {text!r}")
  return fields


def make_eval_data(config, length: int, num_examples: int, seed: int):
  data = config.data
  if data.task == "passkey":
    from data import passkey_gen  # pylint: disable=g-import-not-at-top
    return passkey_gen.passkey_batch(seed, num_examples, length,
                                     key_length=data.passkey.key_length, depth=None)
  if data.task == "mqar":
    from data import mqar_gen  # pylint: disable=g-import-not-at-top
    mqar = data.mqar
    # The trained model's vocabulary and noise (data.mqar), at another length.
    return mqar_gen.mqar_batch(seed, num_examples, length,
                               num_kv_pairs=mqar.num_kv_pairs,
                               vocab_size=mqar.vocab_size, power_a=mqar.power_a,
                               random_non_queries=mqar.random_non_queries)
  raise ValueError(f"data.task={data.task!r} is not a probe (passkey, mqar)")


def state_norm_curves(intermediates) -> np.ndarray:
  """``[layers, chunks]``: per layer, the largest over heads of the mean over
  examples of the state norm at the end of every chunk."""
  import jax  # pylint: disable=g-import-not-at-top
  curves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    if any(getattr(k, "key", None) == "state_norm" for k in path):
      curves.append(np.asarray(leaf).mean(axis=0).max(axis=-1))
  return np.stack(curves)


def key_depth(batch: dict, task: str) -> np.ndarray | None:
  """Passkey: where the key sits, as a fraction of the length (0 = start)."""
  if task != "passkey":
    return None
  from data import passkey_gen  # pylint: disable=g-import-not-at-top
  is_digit = np.isin(batch["inputs"], passkey_gen.DIGIT_IDS)
  return is_digit.argmax(axis=1) / batch["inputs"].shape[1]


def evaluate(model, variables, fields: dict, batch: dict, batch_size: int):
  """Accuracy, per-token accuracy and state-norm curves of ``model`` with the
  mixer fields ``fields`` overridden, on the stacked examples ``batch``; the
  per-example exact match is returned too (``correct``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  variant = model.clone(mixer_kwargs={**model.mixer_kwargs, **fields})

  @jax.jit
  def run(inputs, mask):
    logits, state = variant.apply(variables, inputs, mask, train=False,
                                  mutable=["intermediates"])
    return jnp.argmax(logits, axis=-1), state["intermediates"]

  n = batch["inputs"].shape[0]
  exact, tokens, token_hits, curves, correct = 0.0, 0.0, 0.0, [], []
  for start in range(0, n, batch_size):
    sl = slice(start, start + batch_size)
    pred, inter = run(batch["inputs"][sl], batch["mask"][sl])
    pred = np.asarray(pred)
    tm = batch["target_mask"][sl]
    hit = (pred == batch["targets"][sl]) | ~tm
    exact += float(hit.all(axis=1).sum())
    correct.append(hit.all(axis=1))
    token_hits += float(((pred == batch["targets"][sl]) & tm).sum())
    tokens += float(tm.sum())
    curves.append(state_norm_curves(inter) * len(pred))
  curve = np.sum(curves, axis=0) / n
  return {"accuracy": exact / n, "token_accuracy": token_hits / tokens,
          "state_norm": curve, "correct": np.concatenate(correct)}


def context_max(curve: np.ndarray) -> float:
  """The largest state norm before the last chunk, which holds the question
  and the answer (the state there reflects the read-out, not the context)."""
  return float(curve[:, :-1].max()) if curve.shape[1] > 1 else float(
      curve.max())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/probe_passkey.py:cpu")
  parser.add_argument("--workdir", default="runs/state_collapse")
  parser.add_argument("--data-dir", default=None,
                      help="TFDS directory (config.data.data_dir)")
  parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                      help="config overrides, e.g. data.passkey.lm_loss=true "
                           "data.passkey.max_length=1024")
  parser.add_argument("--multiples", type=int, nargs="+",
                      default=[1, 2, 4, 8, 16])
  parser.add_argument("--num-examples", type=int, default=128)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--eval-seed", type=int, default=12345)
  parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS))
  parser.add_argument("--out", default=os.path.join(
      REPO, "benchmarks", "results", "state_collapse.json"))
  parser.add_argument("--no-train", action="store_true",
                      help="use the checkpoint in --workdir as it is")
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  from train import trainer  # pylint: disable=g-import-not-at-top

  config = load_config(args.config)
  if args.data_dir is not None:
    config.data.data_dir = args.data_dir
  for item in args.set:
    field, _, value = item.partition("=")
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
      node = node[name]
    old = node[leaf]
    if isinstance(old, bool):
      value = value.lower() in ("1", "true", "yes")
    elif old is not None:
      value = type(old)(value)
    node[leaf] = value
  t0 = time.perf_counter()
  train_result = None
  if not args.no_train:
    train_result = trainer.train_and_evaluate(config, args.workdir)
  train_seconds = time.perf_counter() - t0
  model, variables, step = trainer.restore_model(config, args.workdir)
  T = config.data[config.data.task].max_length
  print(f"model of step {step}, trained at T={T} tokens "
        f"({train_seconds:.0f} s training in this call)", flush=True)

  # Calibrate the state-norm bound on training-length sequences.
  calib = make_eval_data(config, T, args.num_examples, args.eval_seed + 1)
  base = evaluate(model, variables, {}, calib, args.batch_size)
  auto_norm = context_max(base["state_norm"])
  print(f"largest state norm at the training length (before the question): "
        f"{auto_norm:.3f}")

  results = []
  datasets = {m: make_eval_data(config, m * T, args.num_examples,
                                args.eval_seed) for m in args.multiples}
  depths = {m: key_depth(d, config.data.task) for m, d in datasets.items()}
  depth_bins = np.linspace(0.0, 1.0, 5)
  for text in args.settings:
    fields = parse_setting(text, T, auto_norm)
    for m in args.multiples:
      t1 = time.perf_counter()
      r = evaluate(model, variables, fields, datasets[m], args.batch_size)
      chunk = model.mixer_kwargs.get("chunk_size", 1)
      by_depth = None
      if depths[m] is not None:  # Accuracy by where the key is (quartiles).
        which = np.clip(np.digitize(depths[m], depth_bins) - 1, 0, 3)
        by_depth = [float(r["correct"][which == q].mean())
                    if (which == q).any() else None for q in range(4)]
      results.append({
          "setting": text, "fields": fields, "multiple": m, "length": m * T,
          "accuracy": r["accuracy"], "token_accuracy": r["token_accuracy"],
          "accuracy_by_key_depth": by_depth,
          "state_norm_max": context_max(r["state_norm"]),
          "state_norm_last": float(r["state_norm"][:, -1].max()),
          "state_norm_curve": r["state_norm"].tolist(),
          "curve_positions": [min((i + 1) * chunk, m * T) for i in
                              range(r["state_norm"].shape[1])],
          "seconds": time.perf_counter() - t1})
      print(f"{text:36s} {m:3d}x L={m * T:6d} acc={r['accuracy']:.3f} "
            f"token_acc={r['token_accuracy']:.3f} "
            f"max|h|={results[-1]['state_norm_max']:.2f} by key depth "
            f"{by_depth}", flush=True)

  report = {
      "config": args.config, "train_length": T, "step": step,
      "num_examples": args.num_examples, "eval_seed": args.eval_seed,
      "auto_state_norm": auto_norm,
      "train_result": train_result and {
          "validation": train_result.get("validation"),
          "test": train_result.get("test")},
      "machine": platform.platform(), "jax": jax.__version__,
      "results": results,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out + ".tmp", "w") as f:
    json.dump(report, f, indent=1)
  os.replace(args.out + ".tmp", args.out)

  # Table: accuracy by setting (rows) and multiple (columns).
  print("\n| setting | " + " | ".join(f"{m}x ({m * T})" for m in args.multiples)
        + f" | max state norm, {max(args.multiples)}x / 1x |")
  print("|---" * (len(args.multiples) + 2) + "|")
  for text in args.settings:
    rows = [r for r in results if r["setting"] == text]
    accs = " | ".join(f"{r['accuracy']:.3f}" for r in rows)
    ratio = rows[-1]["state_norm_max"] / max(rows[0]["state_norm_max"], 1e-12)
    print(f"| {text} | {accs} | {ratio:.2f} |")

  if results[0]["accuracy_by_key_depth"] is not None:
    print("\nAccuracy by key depth (quartiles of the position of the key, "
          "0 = start of the sequence):")
    print("| setting | length | 0-25% | 25-50% | 50-75% | 75-100% |")
    print("|---|---|---|---|---|---|")
    for r in results:
      if r["multiple"] in (min(args.multiples), max(args.multiples)) or (
          r["setting"] == "none"):
        cells = " | ".join("-" if a is None else f"{a:.2f}"
                           for a in r["accuracy_by_key_depth"])
        print(f"| {r['setting']} | {r['length']} | {cells} |")

  plot_path = os.path.splitext(args.out)[0] + ".png"
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("matplotlib is not installed: no plot")
    return
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
  longest = max(args.multiples)
  for text in args.settings:
    rows = [r for r in results if r["setting"] == text]
    ax1.plot([r["length"] for r in rows], [r["accuracy"] for r in rows],
             marker="o", label=text)
    last = [r for r in rows if r["multiple"] == longest][0]
    ax2.plot(last["curve_positions"], np.max(last["state_norm_curve"], axis=0),
             label=text)
  ax1.axvline(T, color="gray", linestyle=":", label="training length")
  ax1.set_xscale("log", base=2)
  ax1.set_xlabel("evaluation length (tokens)")
  ax1.set_ylabel("passkey exact-match accuracy")
  ax1.legend(fontsize=7)
  ax2.axvline(T, color="gray", linestyle=":")
  ax2.set_xlabel("position (tokens)")
  ax2.set_ylabel("SSM state norm (max over layers, heads)")
  ax2.set_yscale("log")
  fig.tight_layout()
  fig.savefig(plot_path, dpi=120)
  print(f"wrote {args.out} and {plot_path}")


if __name__ == "__main__":
  main()
