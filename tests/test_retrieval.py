"""LRA Retrieval: the AAN TSV reader (quotes are text, file:line errors), the
pair inputs, the two-tower model against a hand-written reference, and a run
of the test preset."""
import dataclasses
import importlib
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import checks
from configs import default
from data import retrieval
from data import retrieval_builder
from data import text
from models import classifier
from train import trainer

DOCS = [b'He said "hi" and left.', b"caf\xc3\xa9 \xe2\x80\x94 dash", b"x" * 60,
        b"short", b"another 'quoted' text", b"plain words here"]


def _write_tsv(root, n=(16, 8, 8), seed=0):
  """The three TSVs under <root>/lra_release/tsv_data; returns the rows."""
  rng = np.random.default_rng(seed)
  folder = root / "lra_release" / "tsv_data"
  folder.mkdir(parents=True)
  rows = {}
  for (split, name), count in zip(retrieval_builder.SPLIT_FILES.items(), n):
    lines, rows[split] = [], []
    for i in range(count):
      label = int(rng.integers(0, 2))
      a, b = (DOCS[int(j)] for j in rng.integers(0, len(DOCS), 2))
      lines.append(b"\t".join([f"{label}.0".encode(), f"id{i}a".encode(),
                               f"id{i}b".encode(), a, b]))
      rows[split].append((label, a, b))
    (folder / name).write_bytes(b"\n".join(lines) + b"\n")
  return rows


def _data_config(tmp_path, **overrides):
  cfg = default.get_config().data
  cfg.update(dict(task="retrieval", data_dir=str(tmp_path / "tfds"),
                  manual_dir=str(tmp_path)))
  cfg.update(overrides)
  cfg.retrieval.max_length = 24
  return cfg


def test_reader_keeps_quotes_and_pairs(tmp_path):
  rows = _write_tsv(tmp_path)
  sources = retrieval.TASK.sources(_data_config(tmp_path))
  assert {s: len(v) for s, v in sources.items()} == {
      "train": 16, "validation": 8, "test": 8}
  for split, source in sources.items():
    got = sorted((int(ex["targets"]), tuple(np.asarray(ex["inputs1"]).tolist()),
                  tuple(np.asarray(ex["inputs2"]).tolist()))
                 for ex in (source[i] for i in range(len(source))))
    want = sorted((label, tuple(text.encode(a).tolist()),
                   tuple(text.encode(b).tolist()))
                  for label, a, b in rows[split])
    assert got == want
  # The quote characters are bytes of the text.
  assert ord('"') + 1 in text.encode(DOCS[0])


def test_preprocess_stacks_cut_and_masked_documents(tmp_path):
  cfg = _data_config(tmp_path)
  out = retrieval.preprocess({"inputs1": text.encode(b"x" * 40),
                              "inputs2": text.encode(b"ab"), "targets": 1},
                             cfg)
  assert out["inputs"].shape == (2, 24) and out["mask"].shape == (2, 24)
  assert out["mask"][0].all() and out["mask"][1].sum() == 2
  np.testing.assert_array_equal(out["inputs"][1, :3],
                                [ord("a") + 1, ord("b") + 1, 0])


@pytest.mark.parametrize("line,message", [
    (b"1.0\tid1\tid2\tonly four", "expected 5 tab-separated fields"),
    (b"0.5\tid1\tid2\ta\tb", "label b'0.5' is not 0 or 1"),
    (b"yes\tid1\tid2\ta\tb", "label b'yes' is not 0 or 1"),
])
def test_malformed_lines_are_named_by_file_and_line(tmp_path, line, message):
  _write_tsv(tmp_path)
  path = tmp_path / "lra_release/tsv_data/new_aan_pairs.eval.tsv"
  lines = path.read_bytes().splitlines()
  lines[2] = line
  path.write_bytes(b"\n".join(lines) + b"\n")
  with pytest.raises(ValueError, match=f"new_aan_pairs.eval.tsv:3: {message}"):
    retrieval.TASK.sources(_data_config(tmp_path))


def test_empty_file_is_named(tmp_path):
  _write_tsv(tmp_path)
  (tmp_path / "lra_release/tsv_data/new_aan_pairs.test.tsv").write_bytes(b"")
  with pytest.raises(ValueError, match="new_aan_pairs.test.tsv:1: no pairs"):
    retrieval.TASK.sources(_data_config(tmp_path))


def test_manual_dir_is_required_before_anything_is_built(tmp_path):
  with pytest.raises(checks.ConfigError, match="data.manual_dir=None cannot "
                     "be None for data.task='retrieval'"):
    retrieval.validate(_data_config(tmp_path, manual_dir=None))


def test_two_tower_model_matches_a_hand_written_reference():
  """One shared encoder for both documents, then LRA's NLI dual head."""
  info = retrieval.TASK.info(_data_config(pathlib.Path("/nonexistent")))
  cfg = default.get_config().model
  cfg.update(dict(mixer="s4", d_model=8, n_layers=1, pair_mlp_dim=12,
                  norm="layer"))
  model = classifier.build_model(cfg, info)
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(1, 257, (3, 2, 24)), jnp.int32)
  mask = jnp.asarray(np.arange(24)[None, None] < rng.integers(
      5, 25, (3, 2, 1)))
  variables = nn.unbox(model.init(jax.random.key(0), inputs, mask))
  logits = model.apply(variables, inputs, mask)
  assert logits.shape == (3, 2)
  params = variables["params"]
  # The pooled encoding of each document alone, through the same parameters.
  single = classifier.build_model(
      cfg, dataclasses.replace(info, output_kind="class"))
  tower = {"params": {k: v for k, v in params.items()
                      if not k.startswith("pair_") and k != "head"}}
  pooled = [_pooled(single, tower, inputs[:, d], mask[:, d]) for d in range(2)]
  x1, x2 = pooled
  h = jnp.concatenate([x1, x2, x1 * x2, x1 - x2], axis=-1)
  dense = lambda p, x: x @ p["kernel"] + p["bias"][None]
  h = jax.nn.relu(dense(params["pair_mlp"], h))
  h = jax.nn.relu(dense(params["pair_mlp2"], h))
  np.testing.assert_allclose(logits, dense(params["head"], h), rtol=2e-5,
                             atol=2e-6)


def _pooled(model, variables, inputs, mask):
  """The mean-pooled backbone output of ``model`` (a single-sequence
  classifier) for ``inputs``."""
  def grab(mdl, method_name):
    return mdl.name == "backbone" and method_name == "__call__"

  _, state = model.apply(
      {"params": {**variables["params"],
                  "head": {"kernel": jnp.zeros((model.d_model, 2)),
                           "bias": jnp.zeros((2,))}}},
      inputs, mask, capture_intermediates=grab, mutable=["intermediates"])
  out = state["intermediates"]["backbone"]["__call__"][0]
  return classifier.pool(out, mask, "mean")


def test_test_preset_trains(tmp_path):
  _write_tsv(tmp_path / "release")
  config = importlib.import_module("configs.lra_retrieval").get_config("test")
  config.data.manual_dir = str(tmp_path / "release")
  config.data.data_dir = str(tmp_path / "tfds")
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 4 and result["test"]["num_examples"] == 8
  _, variables, _ = trainer.restore_model(config, str(tmp_path / "run"))
  assert "pair_mlp" in variables["params"]
