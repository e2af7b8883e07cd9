"""LRA ListOps: generator, evaluator, official TSV reader, TFDS builder, task."""
import collections
import os
import pathlib
import random

import ml_collections
import numpy as np
import pytest

import data
from configs import default
from data import listops
from data import listops_builder
from data import listops_gen

SMALL = listops_gen.GeneratorOptions(min_length=10, max_length=60)


def _oracle_value(source: str) -> int:
  """Independent evaluator: rewrites the prefix expression as Python calls."""
  calls = {"[MIN": "mn(", "[MAX": "mx(", "[MED": "md(", "[SM": "sm(", "]": "),"}
  code = "".join(calls.get(tok, tok + ",") for tok in source.split() if tok not in "()")
  env = {
      "mn": lambda *a: min(a),
      "mx": lambda *a: max(a),
      "md": lambda *a: int(np.median(a)),  # the official MED
      "sm": lambda *a: int(np.sum(a)) % 10,
  }
  return eval(code.rstrip(","), env)  # pylint: disable=eval-used


def _tree_stats(tree, depth=1):
  """(deepest operator depth, all argument counts) of a parsed tree."""
  if isinstance(tree, int):
    return 0, []
  _, args = tree
  deepest, counts = depth, [len(args)]
  for arg in args:
    d, c = _tree_stats(arg, depth + 1)
    deepest, counts = max(deepest, d), counts + c
  return deepest, counts


def _data_config(tmp_path, max_length=64, **overrides):
  """``config.data`` of the default config; ``max_length`` is data.listops's."""
  cfg = default.get_config().data
  cfg.update(dict(data_dir=str(tmp_path / "tfds"), manual_dir=None, num_train=40,
                  num_validation=8, num_test=8, generate_workers=1, generate_seed=0))
  cfg.listops.update(dict(max_length=max_length, generate_min_length=10,
                          generate_max_length=60))
  cfg.update(overrides)
  return cfg


# ---------------------------------------------------------------------------
# Format and evaluation.


def test_official_string_format_and_value():
  # MAX(2, MIN(9, 4)) as the official to_string writes it (left-nested pairs).
  tree = ("[MAX", (2, ("[MIN", (9, 4))))
  source = "( ( ( [MAX 2 ) ( ( ( [MIN 9 ) 4 ) ] ) ) ] )"
  assert listops_gen.tree_to_source(tree) == source
  assert listops_gen.parse_source(source) == tree
  assert listops_gen.evaluate_source(source) == 4 == _oracle_value(source)


@pytest.mark.parametrize("op,args,expected", [
    ("[MIN", (3, 1, 4), 1),
    ("[MAX", (3, 1, 4), 4),
    ("[MED", (3, 1, 4), 3),
    ("[MED", (1, 2, 3, 4), 2),  # int(np.median) truncates 2.5
    ("[MED", (9, 8), 8),
    ("[SM", (5, 6, 7), 8),
    ("[SM", (0, 0), 0),
])
def test_operator_values(op, args, expected):
  source = listops_gen.tree_to_source((op, args))
  assert listops_gen.evaluate_source(source) == expected == _oracle_value(source)


@pytest.mark.parametrize("bad", [
    "( ( [MAX 2 ) 9 ) ] )",  # wrong parenthesisation
    "( ( ( [MAX 2 ) 9 )",  # unclosed
    "( ( ( [FOO 2 ) 9 ) ] )",  # unknown operator
    "( ( ( [MAX 2 ) 9 ) ] ) 3",  # trailing value
    "",
])
def test_parse_rejects_malformed(bad):
  with pytest.raises(ValueError):
    listops_gen.parse_source(bad)


def test_median_matches_numpy_on_random_lists():
  rng = random.Random(0)
  for _ in range(200):
    args = tuple(rng.randrange(10) for _ in range(rng.randint(1, 10)))
    assert listops_gen.tree_value(("[MED", args)) == int(np.median(args))


# ---------------------------------------------------------------------------
# Generator.


def test_generated_examples_parse_evaluate_and_are_in_range():
  examples = listops_gen.generate_examples(300, seed=0, options=SMALL)
  sources = [s for s, _ in examples]
  assert len(examples) == 300
  assert len(set(sources)) == 300  # deduplicated
  for source, target in examples:
    tree = listops_gen.parse_source(source)  # exact official format
    assert listops_gen.tree_value(tree) == target == _oracle_value(source)
    assert 10 < len(listops_gen.tokenize(source)) < 60  # strict, as LRA
    deepest, counts = _tree_stats(tree)
    assert deepest <= SMALL.max_depth - 1
    assert all(2 <= c <= SMALL.max_args for c in counts)
  labels = collections.Counter(t for _, t in examples)
  assert set(labels) == set(range(10)), labels
  assert max(labels.values()) < 0.3 * len(examples), labels


def test_official_options_lengths_depth_and_args():
  examples = listops_gen.generate_examples(30, seed=1)
  all_counts = []
  for source, target in examples:
    assert 500 < len(listops_gen.encode(source)) < 2000
    tree = listops_gen.parse_source(source)
    assert listops_gen.tree_value(tree) == target
    deepest, counts = _tree_stats(tree)
    assert deepest <= 9  # root depth 1, nodes at depth 10 are leaves
    all_counts += counts
  assert min(all_counts) == 2 and max(all_counts) == 10  # randint(2, 10) inclusive


def test_operator_probability_is_value_p():
  # LRA: above max_depth a node is an operator iff random() <= VALUE_P (0.25).
  options = listops_gen.GeneratorOptions()
  rng = random.Random(0)
  above, operators = 0, 0

  def count(tree, depth):
    nonlocal above, operators
    if depth < options.max_depth:
      above += 1
      operators += not isinstance(tree, int)
    if not isinstance(tree, int):
      for arg in tree[1]:
        count(arg, depth + 1)

  for _ in range(3000):
    count(listops_gen.sample_tree(rng, options)[0], 1)
  assert abs(operators / above - 0.25) < 0.01, (operators, above)


def test_generation_is_deterministic_and_worker_independent():
  a = listops_gen.generate_examples(100, seed=5, options=SMALL)
  assert a == listops_gen.generate_examples(100, seed=5, options=SMALL)
  assert a == listops_gen.generate_examples(100, seed=5, options=SMALL, workers=2)
  assert a != listops_gen.generate_examples(100, seed=6, options=SMALL)
  # A larger request extends the same stream.
  assert listops_gen.generate_examples(150, seed=5, options=SMALL)[:100] == a


def test_impossible_range_raises():
  # Lengths are 1 or >= 4, and (4, 6) holds 4 * 10**3 strings of length 5 only.
  options = listops_gen.GeneratorOptions(min_length=4, max_length=6, max_depth=2)
  with pytest.raises(ValueError, match="distinct"):
    listops_gen.generate_examples(5000, seed=0, options=options)
  with pytest.raises(ValueError, match="min_length"):
    listops_gen.GeneratorOptions(min_length=10, max_length=11)


# ---------------------------------------------------------------------------
# Tokenisation and the reader.


def test_vocabulary_and_known_ids():
  assert listops_gen.VOCAB_SIZE == 17 and listops_gen.PAD_ID == 0
  assert listops_gen.tokenize("( ( ( [MAX 2 ) 9 ) ] )") == ["[MAX", "2", "9", "X"]
  ids = listops_gen.encode("( ( ( [MAX 2 ) ( ( ( [MIN 9 ) 0 ) ] ) ) ] )")
  np.testing.assert_array_equal(ids, [12, 3, 11, 10, 1, 15, 15])
  assert ids.dtype == np.int32
  ids = listops_gen.encode("( ( ( [MED 7 ) ( ( [SM 8 ) ] ) ) ] )")
  np.testing.assert_array_equal(ids, [13, 8, 14, 9, 15, 15])
  assert sorted(listops_gen.TOKEN_TO_ID.values()) == list(range(1, 16))
  with pytest.raises(ValueError, match="unknown token"):
    listops_gen.encode("( [FIRST 1 ] )")


def test_written_files_match_the_official_format(tmp_path):
  splits = listops_gen.generate_splits({"train": 6, "validation": 2, "test": 2}, seed=0,
                                   options=SMALL)
  listops_gen.write_splits(tmp_path, splits)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "basic_test.tsv", "basic_train.tsv", "basic_val.tsv"]
  raw = (tmp_path / "basic_train.tsv").read_bytes()
  lines = raw.split(b"\r\n")  # csv.writer's excel dialect, as the official files
  assert lines[0] == b"Source\tTarget" and lines[-1] == b"" and len(lines) == 8
  source, target = lines[1].decode().split("\t")
  assert source.startswith("( ") and source.endswith(" ] )")
  assert (source, int(target)) == splits["train"][0]
  read = list(listops_gen.read_tsv(tmp_path / "basic_train.tsv"))
  assert [r[0] for r in read] == list(range(2, 8))
  for (_, ids, tgt), (src, expected) in zip(read, splits["train"]):
    np.testing.assert_array_equal(ids, listops_gen.encode(src))
    assert tgt == expected
  all_sources = [s for split in splits.values() for s, _ in split]
  assert len(set(all_sources)) == 10  # splits are disjoint


def _write(path, text, newline="\n"):
  path.write_text(text.replace("\n", newline), newline="")
  return path


GOOD = "( ( ( [MAX 2 ) 9 ) ] )"


@pytest.mark.parametrize("bad_line,message", [
    (GOOD, "expected 2 tab-separated fields"),
    (f"{GOOD}\t9\t1", "expected 2 tab-separated fields"),
    (f"{GOOD}\tnine", "is not an integer"),
    (f"{GOOD}\t9.0", "is not an integer"),
    (f"{GOOD}\t10", "outside 0..9"),
    (f"{GOOD}\t-1", "outside 0..9"),
    ("( ( ( [FIRST 2 ) 9 ) ] )\t2", "unknown token"),
    ("\t3", "empty Source"),
    ("", "expected 2 tab-separated fields"),
])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_reader_names_file_and_line_of_a_malformed_line(tmp_path, bad_line, message,
                                                        newline):
  path = _write(tmp_path / "basic_val.tsv",
                f"Source\tTarget\n{GOOD}\t9\n{GOOD}\t9\n{bad_line}\n{GOOD}\t9\n",
                newline)
  with pytest.raises(ValueError, match=message) as info:
    list(listops_gen.read_tsv(path))
  assert f"{path}:4:" in str(info.value)


def test_reader_rejects_a_bad_header(tmp_path):
  path = _write(tmp_path / "basic_test.tsv", f"Target\tSource\n{GOOD}\t9\n")
  with pytest.raises(ValueError, match="header") as info:
    list(listops_gen.read_tsv(path))
  assert f"{path}:1:" in str(info.value)
  empty = _write(tmp_path / "basic_train.tsv", "")
  with pytest.raises(ValueError, match="header"):
    list(listops_gen.read_tsv(empty))


@pytest.mark.parametrize("layout", [".", "listops-1000", "lra_release/listops-1000",
                                    "lra_release/lra_release/listops-1000"])
def test_find_split_files_accepts_release_layouts(tmp_path, layout):
  folder = tmp_path / layout
  folder.mkdir(parents=True, exist_ok=True)
  for name in listops_gen.SPLIT_FILES.values():
    _write(folder / name, f"Source\tTarget\n{GOOD}\t9\n")
  files = listops_builder.find_split_files(tmp_path)
  assert files["validation"] == folder / "basic_val.tsv"


def test_find_split_files_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="basic_train.tsv"):
    listops_builder.find_split_files(tmp_path)
  # A folder with two of the three files is not the release folder.
  folder = tmp_path / "lra_release" / "listops-1000"
  folder.mkdir(parents=True)
  for name in ("basic_train.tsv", "basic_val.tsv"):
    _write(folder / name, f"Source\tTarget\n{GOOD}\t9\n")
  with pytest.raises(FileNotFoundError, match="lra_release") as info:
    listops_builder.find_split_files(tmp_path)
  assert "holds ['lra_release']" in str(info.value)


def test_official_release_layout_builds(tmp_path):
  """The tarball's doubly nested lra_release/lra_release/listops-1000, with the
  files the official generator writes, is found from the folder above it."""
  folder = tmp_path / "lra_release" / "lra_release" / "listops-1000"
  splits = listops_gen.generate_splits({"train": 6, "validation": 2, "test": 3}, seed=1,
                                       options=SMALL)
  listops_gen.write_splits(folder, splits)
  cfg = _data_config(tmp_path, manual_dir=str(tmp_path))
  sources = listops.TASK.sources(cfg)
  assert {s: len(v) for s, v in sources.items()} == {"train": 6, "validation": 2,
                                                    "test": 3}


# ---------------------------------------------------------------------------
# TFDS builder and task.


def _as_set(source):
  return collections.Counter(
      (tuple(int(i) for i in source[k]["inputs"]), int(source[k]["targets"]))
      for k in range(len(source)))


def _check_preprocess(source, cfg):
  max_length = cfg.listops.max_length
  for k in range(len(source)):
    raw = source[k]
    out = listops.preprocess(raw, cfg)
    n = min(len(raw["inputs"]), max_length)
    assert out["inputs"].shape == (max_length,) and out["inputs"].dtype == np.int32
    assert out["mask"].shape == (max_length,) and out["mask"].dtype == bool
    assert out["targets"].shape == () and out["targets"].dtype == np.int32
    assert out["mask"].sum() == n and out["mask"][:n].all()
    np.testing.assert_array_equal(out["inputs"][:n], raw["inputs"][:n])
    assert (out["inputs"][n:] == listops_gen.PAD_ID).all()
    assert out["targets"] == raw["targets"]


def test_builder_from_manual_dir(tmp_path):
  release = tmp_path / "lra_release" / "listops-1000"
  splits = listops_gen.generate_splits({"train": 12, "validation": 4, "test": 5}, seed=2,
                                   options=SMALL)
  listops_gen.write_splits(release, splits)
  cfg = _data_config(tmp_path, manual_dir=str(tmp_path), max_length=16)
  assert listops_builder.builder_config(cfg).name == "official"
  sources = listops.TASK.sources(cfg)
  for split in listops_gen.SPLITS:
    assert len(sources[split]) == len(splits[split])
    expected = collections.Counter(
        (tuple(listops_gen.encode(s).tolist()), t) for s, t in splits[split])
    assert _as_set(sources[split]) == expected
  _check_preprocess(sources["train"], cfg)  # max_length 16 truncates some
  assert any(len(sources["train"][k]["inputs"]) > 16 for k in range(12))


def test_cached_data_set_refuses_another_manual_dir(tmp_path):
  """A data set built from one manual_dir is not reused for another one, a
  changed one or a missing one: the error says what it was built from."""
  from data import provenance  # pylint: disable=g-import-not-at-top
  for name, seed in (("a", 2), ("b", 3)):
    splits = listops_gen.generate_splits(
        {"train": 12, "validation": 4, "test": 5}, seed=seed, options=SMALL)
    listops_gen.write_splits(tmp_path / name / "listops-1000", splits)
  cfg = lambda d: _data_config(tmp_path, manual_dir=str(tmp_path / d),
                               max_length=16)
  first = _as_set(listops.TASK.sources(cfg("a"))["train"])
  assert _as_set(listops.TASK.sources(cfg("a"))["train"]) == first  # Reused.
  with pytest.raises(provenance.StaleDataError,
                     match=r"was built from data.manual_dir=.*/a'.*this run's "
                     r"source is data.manual_dir=.*/b'.*Delete that folder"):
    listops.TASK.sources(cfg("b"))
  with pytest.raises(FileNotFoundError):  # Missing: the finder says so.
    listops.TASK.sources(cfg("missing"))
  # The same folder with a changed file (another size) is another source.
  train = tmp_path / "a" / "listops-1000" / listops_gen.SPLIT_FILES["train"]
  train.write_text(train.read_text() + "( [MAX 2 3 ] )\t3\n")
  with pytest.raises(provenance.StaleDataError, match="fingerprint"):
    listops.TASK.sources(cfg("a"))


def test_cached_generated_data_set_refuses_changed_parameters(tmp_path):
  """The generator's parameters are recorded too (here edited behind the
  builder's name, as a code change would)."""
  import json  # pylint: disable=g-import-not-at-top
  from data import provenance  # pylint: disable=g-import-not-at-top
  cfg = _data_config(tmp_path)
  listops.TASK.sources(cfg)
  builder = listops_builder.make_builder(cfg)
  record = os.path.join(builder.data_dir, provenance.FILENAME)
  with open(record) as f:
    saved = json.load(f)
  assert saved["generated"]["sizes"] == {"train": 40, "validation": 8,
                                         "test": 8}
  saved["generated"]["options"]["max_depth"] += 1
  with open(record, "w") as f:
    json.dump(saved, f)
  with pytest.raises(provenance.StaleDataError, match="generated with"):
    listops.TASK.sources(cfg)


def test_builder_from_generator_and_size_configs(tmp_path):
  cfg = _data_config(tmp_path)
  sources = listops.TASK.sources(cfg)
  assert {s: len(v) for s, v in sources.items()} == {
      "train": 40, "validation": 8, "test": 8}
  name = listops_builder.builder_config(cfg).name
  tsv_dir = tmp_path / "tfds" / "downloads" / "lra_listops_generated" / name
  for split in listops_gen.SPLITS:
    path = tsv_dir / listops_gen.SPLIT_FILES[split]
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    for source, target in rows:
      assert listops_gen.evaluate_source(source) == int(target)
    expected = collections.Counter(
        (tuple(listops_gen.encode(s).tolist()), int(t)) for s, t in rows)
    assert _as_set(sources[split]) == expected
  _check_preprocess(sources["validation"], cfg)

  # Another size (or seed) is another config: no collision, same stream prefix.
  cfg2 = _data_config(tmp_path, num_train=20)
  assert listops_builder.builder_config(cfg2).name != name
  sources2 = listops.TASK.sources(cfg2)
  assert len(sources2["train"]) == 20
  assert listops_builder.builder_config(_data_config(tmp_path, generate_seed=1)).name != name
  # The same config in a fresh data dir gives byte-identical files (determinism).
  cfg3 = _data_config(tmp_path, data_dir=str(tmp_path / "tfds_again"))
  listops_builder.prepare(cfg3)
  again = tmp_path / "tfds_again" / "downloads" / "lra_listops_generated" / name
  for file in listops_gen.SPLIT_FILES.values():
    assert (again / file).read_bytes() == (tsv_dir / file).read_bytes()


def test_official_defaults_name_the_class_config():
  cfg = ml_collections.ConfigDict(dict(data_dir=None, manual_dir=None, num_train=None,
                                       num_validation=None, num_test=None))
  config = listops_builder.builder_config(cfg)
  assert config is listops_builder.LraListops.builder_configs[config.name]
  assert (config.num_train, config.num_validation, config.num_test) == (96000, 2000, 2000)
  assert config.options == listops_gen.GeneratorOptions(500, 2000, 10, 10, 0.25)


def test_task_is_registered():
  # data.TASKS rather than get_task, which also imports the other tasks' modules.
  task = data.TASKS["listops"]
  assert task is listops.TASK
  info = task.info(ml_collections.ConfigDict(dict(listops=dict(max_length=2000))))
  assert info == data.TaskInfo(num_classes=10, max_length=2000, input_kind="tokens",
                               vocab_size=17, pad_id=0)


def test_task_config_namespace_defaults_and_errors(tmp_path):
  cfg = default.get_config().data
  assert cfg.listops.to_dict() == listops.config().to_dict()
  assert listops_builder.generator_options(cfg) == listops_gen.GeneratorOptions()
  listops.validate(cfg)
  for field, value, message in [
      ("max_length", 0, "data.listops.max_length=0 must be >= 1"),
      ("generate_max_length", 11, "data.listops.generate_max_length=11 leaves no"),
      ("generate_max_args", 1, "data.listops.generate_max_args=1 must be >= 2"),
      ("generate_value_p", 0.0, "data.listops.generate_value_p=0.0 must be > 0.0")]:
    bad = _data_config(tmp_path)
    bad.listops[field] = value
    with pytest.raises(ValueError, match=message):
      listops.validate(bad)
