"""Long-context probes: passkey and MQAR generators, TFDS builders, tasks."""
import ml_collections
import numpy as np
import pytest

import data
from configs import default
from data import mqar
from data import mqar_builder
from data import mqar_gen
from data import passkey
from data import passkey_builder
from data import passkey_gen
from data import probes

KEYS = ("inputs", "mask", "targets", "target_mask")

# The official prompt lines (epfml/landmark-attention llama/run_test.py).
OFFICIAL_INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
                  "Find it and memorize them. I will quiz you about the important "
                  "information there.")
OFFICIAL_QUESTION = "What is the pass key? The pass key is"


def _data_config(tmp_path, max_length=96, passkey=(), mqar=(), **overrides):
  """``config.data`` of the default config; ``max_length`` is both probes', and
  ``passkey``/``mqar`` override their namespaces."""
  cfg = default.get_config().data
  cfg.update(dict(data_dir=str(tmp_path / "tfds"), num_train=12, num_validation=3,
                  num_test=4, generate_seed=0))
  cfg.passkey.update(dict(max_length=max_length, key_length=5, depth=None))
  cfg.mqar.update(dict(max_length=max_length, num_kv_pairs=4, power_a=0.01,
                       vocab_size=128))
  cfg.passkey.update(dict(passkey))
  cfg.mqar.update(dict(mqar))
  cfg.update(overrides)
  return cfg


def _check_element(e, length):
  assert set(e) - {"loss_mask"} == set(KEYS)
  for k in KEYS:
    assert e[k].shape == (length,), k
  assert e["inputs"].dtype == np.int32 and e["targets"].dtype == np.int32
  assert e["mask"].dtype == bool and e["target_mask"].dtype == bool
  assert (e["targets"][~e["target_mask"]] == 0).all()


# ---------------------------------------------------------------------------
# Passkey.


def test_passkey_vocabulary_covers_the_official_prompt():
  assert passkey_gen.PASSKEY_VOCAB[0] == "<pad>" and probes.PAD_ID == 0
  assert passkey_gen.PASSKEY_VOCAB[1:11] == tuple("0123456789")
  assert len(set(passkey_gen.PASSKEY_VOCAB)) == passkey_gen.PASSKEY_VOCAB_SIZE == 55
  for text in (OFFICIAL_INTRO, OFFICIAL_QUESTION,
               "The grass is green. The sky is blue. The sun is yellow. Here we go. "
               "There and back again.",
               "The pass key is 31415. Remember it. 31415 is the pass key."):
    ids = passkey_gen.passkey_encode(text)
    assert ids.dtype == np.int32 and (ids > 0).all()
    assert passkey_gen.passkey_decode(ids) == text
  with pytest.raises(ValueError, match="outside the passkey vocabulary"):
    passkey_gen.passkey_encode("The pass key is 1, really")
  with pytest.raises(ValueError, match="unknown passkey token"):
    passkey_gen.passkey_encode("The cat")


def test_passkey_exact_layout():
  inputs, positions, ids = passkey_gen.passkey_sparse([3, 0, 9, 1, 7], num_prefix=7,
                                                 num_suffix=3)
  expected = "\n".join([
      OFFICIAL_INTRO,
      "The grass is green. The sky",  # 7 filler tokens ("." is one)
      "The pass key is 30917. Remember it. 30917 is the pass key.",
      "The grass is",  # the suffix restarts at the filler's beginning, as official
      OFFICIAL_QUESTION,
  ]) + " 30917"
  assert passkey_gen.passkey_decode(inputs) == expected
  digit_ids = np.array([4, 1, 10, 2, 8])  # digit d has id d + 1
  n = inputs.size
  np.testing.assert_array_equal(positions, np.arange(n - 6, n - 1))
  np.testing.assert_array_equal(ids, digit_ids)
  # Teacher forcing: the target at i is the input at i + 1.
  np.testing.assert_array_equal(inputs[positions + 1], ids)
  assert passkey_gen.passkey_decode(inputs[:positions[0] + 1]).endswith("The pass key is")
  # Minimal prompt: no filler at all, the empty official lines stay as newlines.
  inputs, _, _ = passkey_gen.passkey_sparse([5], 0, 0)
  assert inputs.size == passkey_gen.passkey_min_length(1)
  assert passkey_gen.passkey_decode(inputs) == "\n".join([
      OFFICIAL_INTRO, "", "The pass key is 5. Remember it. 5 is the pass key.", "",
      OFFICIAL_QUESTION]) + " 5"


def _key_line_start(inputs):
  """Index of the first 'The pass key is' (the key line)."""
  pattern = passkey_gen.passkey_encode("The pass key is")
  for i in range(inputs.size - pattern.size):
    if (inputs[i:i + pattern.size] == pattern).all():
      return i
  raise AssertionError("no key line")


@pytest.mark.parametrize("key_length", [1, 5, 8])
@pytest.mark.parametrize("extra", [0, 1, 57, 400])
def test_passkey_example_lengths_and_targets(key_length, extra):
  length = passkey_gen.passkey_min_length(key_length) + extra
  e = passkey_gen.make_passkey_example(probes.example_rng(3, extra), length,
                                  key_length=key_length)
  _check_element(e, length)
  assert e["mask"].all()
  assert e["target_mask"].sum() == key_length
  where = np.flatnonzero(e["target_mask"])
  np.testing.assert_array_equal(where, np.arange(length - key_length - 1, length - 1))
  key = e["targets"][where]
  np.testing.assert_array_equal(e["inputs"][where + 1], key)
  assert ((key >= 1) & (key <= 10)).all()
  # The key appears twice in the key line, after "The pass key is" and before "is".
  start = _key_line_start(e["inputs"]) + 4
  np.testing.assert_array_equal(e["inputs"][start:start + key_length], key)
  text = passkey_gen.passkey_decode(e["inputs"])
  digits = passkey_gen.passkey_decode(key)
  assert f"The pass key is {digits}. Remember it. {digits} is the pass key." in text
  assert text.endswith(f"What is the pass key? The pass key is {digits}")
  assert text.count(digits) == 3


def test_passkey_below_minimum_raises():
  minimal = passkey_gen.passkey_min_length(5)
  with pytest.raises(ValueError, match=f"length={minimal - 1}.*{minimal}"):
    passkey_gen.make_passkey_example(probes.example_rng(0, 0), minimal - 1)
  with pytest.raises(ValueError, match="depth=1.5"):
    passkey_gen.make_passkey_example(probes.example_rng(0, 0), 200, depth=1.5)


def _num_prefix(inputs):
  return _key_line_start(inputs) - (passkey_gen.passkey_encode(OFFICIAL_INTRO).size + 2)


def test_passkey_depth_control():
  length = 500
  num_filler = length - passkey_gen.passkey_min_length(5)
  assert num_filler == 429
  # Rounded half up: 214.5 -> 215, 107.25 -> 107.
  for depth, expected in [(0.0, 0), (1.0, 429), (0.5, 215), (0.25, 107)]:
    for i in range(3):
      e = passkey_gen.make_passkey_example(probes.example_rng(0, i), length, depth=depth)
      assert _num_prefix(e["inputs"]) == expected, depth
  # depth 1: the key line, a newline, the filler-free suffix line, the question.
  e = passkey_gen.make_passkey_example(probes.example_rng(0, 0), length, depth=1.0)
  assert "pass key.\n\nWhat is" in passkey_gen.passkey_decode(e["inputs"])
  # Uniform depth (the official randint(0, n)): covers the range, mean ~ n / 2.
  batch = passkey_gen.passkey_batch(1, 400, 120)
  prefixes = np.array([_num_prefix(x) for x in batch["inputs"]])
  n = 120 - passkey_gen.passkey_min_length(5)
  assert prefixes.min() == 0 and prefixes.max() == n
  assert abs(prefixes.mean() - n / 2) < 0.1 * n
  assert len(np.unique(batch["targets"][batch["target_mask"]])) == 10


def test_passkey_determinism_and_batches():
  a = passkey_gen.passkey_batch(7, 5, 150)
  b = passkey_gen.passkey_batch(7, 5, 150)
  for k in KEYS:
    assert a[k].shape == (5, 150)
    np.testing.assert_array_equal(a[k], b[k])
  # Any example can be made alone.
  one = passkey_gen.make_passkey_example(probes.example_rng(7, 3), 150)
  for k in KEYS:
    np.testing.assert_array_equal(one[k], a[k][3])
  tail = passkey_gen.passkey_batch(7, 2, 150, start=3)
  np.testing.assert_array_equal(tail["inputs"], a["inputs"][3:5])
  for other in (passkey_gen.passkey_batch(8, 5, 150),
                passkey_gen.passkey_batch(7, 5, 150, stream=1)):
    assert not np.array_equal(other["inputs"], a["inputs"])
  with pytest.raises(ValueError, match="seed=-1"):
    probes.example_rng(-1, 0)


# ---------------------------------------------------------------------------
# MQAR.


def _check_mqar_layout(inputs, targets, target_mask, k, v, random_non_queries=True):
  """Zoology's rules (zoology/data/multiquery_ar.py), checked on one example."""
  t = inputs.size
  half = v // 2
  keys, values = inputs[0:2 * k:2], inputs[1:2 * k:2]
  assert ((keys >= 1) & (keys < half)).all() and len(set(keys.tolist())) == k
  assert ((values >= half) & (values < v)).all() and len(set(values.tolist())) == k
  bound = dict(zip(keys.tolist(), values.tolist()))
  queries = np.flatnonzero(target_mask)
  assert queries.size == k
  space = (t - 2 * k) // 2
  slots = (queries - 2 * k) / 2
  assert (slots == np.floor(slots)).all() and slots.min() >= 0 and slots.max() < space
  # Each key is queried exactly once; the target is the value bound to it earlier.
  assert sorted(inputs[queries].tolist()) == sorted(keys.tolist())
  for q in queries:
    assert targets[q] == bound[int(inputs[q])]
  rest = np.ones(t, bool)
  rest[:2 * k] = False
  rest[queries] = False
  if random_non_queries:
    assert ((inputs[rest] >= 0) & (inputs[rest] < v)).all()
  else:
    assert (inputs[rest] == 0).all()
  return slots.astype(int)


@pytest.mark.parametrize("length,k,v", [(16, 2, 12), (64, 4, 128), (65, 4, 128),
                                        (256, 16, 8192), (32, 8, 64)])
@pytest.mark.parametrize("random_non_queries", [False, True])
def test_mqar_layout(length, k, v, random_non_queries):
  for i in range(20):
    e = mqar_gen.make_mqar_example(probes.example_rng(0, i), length, num_kv_pairs=k,
                                 vocab_size=v, random_non_queries=random_non_queries)
    _check_element(e, length)
    assert e["mask"].all()
    _check_mqar_layout(e["inputs"], e["targets"], e["target_mask"], k, v,
                       random_non_queries)


def test_mqar_zoology_docstring_example():
  # zoology: multiquery_ar(vocab_size=12, num_kv_pairs=2, input_seq_len=16,
  # random_non_queries=False) -> "2 8 4 7 0 0 4 0 0 0 0 0 2 0 0 (0)": slots 0 and 3.
  inputs, positions, ids = mqar_gen.mqar_sparse(probes.example_rng(0, 0), 16,
                                              num_kv_pairs=2, vocab_size=12,
                                              random_non_queries=False)
  keys, values = inputs[0:4:2], inputs[1:4:2]
  assert set(keys.tolist()) <= set(range(1, 6))
  assert set(values.tolist()) <= set(range(6, 12))
  np.testing.assert_array_equal(inputs[positions], keys)  # key i at slot g_i
  np.testing.assert_array_equal(ids, values)
  assert ((positions - 4) % 2 == 0).all() and (positions < 16).all()


def test_mqar_slots_follow_the_power_law():
  length, k = 64, 4
  space = (length - 2 * k) // 2
  n = 3000
  for a in (0.01, 1.0):
    p = mqar_gen.mqar_gap_probabilities(space, a)
    first = np.empty(n, int)
    for i in range(n):
      inputs, positions, _ = mqar_gen.mqar_sparse(probes.example_rng(5, i), length,
                                                num_kv_pairs=k, vocab_size=128,
                                                power_a=a)
      first[i] = (positions[0] - 2 * k) // 2  # the first key takes the first draw
    freq = np.bincount(first, minlength=space) / n
    assert 0.5 * np.abs(freq - p).sum() < 0.06, a  # total variation
  p = mqar_gen.mqar_gap_probabilities(10, 0.01)
  law = np.arange(1, 11) ** -0.99
  np.testing.assert_allclose(p, law / law.sum())
  np.testing.assert_allclose(mqar_gen.mqar_gap_probabilities(7, 1.0), np.full(7, 1 / 7))


def test_mqar_determinism_batches_and_errors():
  a = mqar_gen.mqar_batch(2, 4, 96, num_kv_pairs=4, vocab_size=64)
  one = mqar_gen.make_mqar_example(probes.example_rng(2, 1), 96, num_kv_pairs=4,
                                 vocab_size=64)
  for k in KEYS:
    assert a[k].shape == (4, 96)
    np.testing.assert_array_equal(a[k][1], one[k])
    np.testing.assert_array_equal(
        a[k], mqar_gen.mqar_batch(2, 4, 96, num_kv_pairs=4, vocab_size=64)[k])
  other = mqar_gen.mqar_batch(3, 4, 96, num_kv_pairs=4, vocab_size=64)
  assert not np.array_equal(a["inputs"], other["inputs"])
  with pytest.raises(ValueError, match="length=31.*num_kv_pairs=8"):
    mqar_gen.make_mqar_example(probes.example_rng(0, 0), 31, num_kv_pairs=8)
  with pytest.raises(ValueError, match="vocab_size=16"):
    mqar_gen.make_mqar_example(probes.example_rng(0, 0), 64, num_kv_pairs=8, vocab_size=16)
  with pytest.raises(ValueError, match="power_a"):
    mqar_gen.make_mqar_example(probes.example_rng(0, 0), 64, num_kv_pairs=2, power_a=0.0)


# ---------------------------------------------------------------------------
# TFDS builders and tasks.


@pytest.mark.parametrize("name", ["passkey", "mqar"])
def test_builder_round_trip(tmp_path, name):
  cfg = _data_config(tmp_path)
  task = data.get_task(name)
  sources = task.sources(cfg)
  assert {s: len(v) for s, v in sources.items()} == {"train": 12, "validation": 3,
                                                     "test": 4}
  for stream, split in enumerate(probes.SPLITS):
    n = len(sources[split])
    if name == "passkey":
      expected = passkey_gen.passkey_batch(0, n, 96, stream=stream)
    else:
      expected = mqar_gen.mqar_batch(0, n, 96, num_kv_pairs=4, vocab_size=128,
                                   stream=stream)
    for i in range(n):
      element = task.preprocess(sources[split][i], cfg)
      _check_element(element, 96)
      for k in KEYS:
        np.testing.assert_array_equal(element[k], expected[k][i])
  # Splits are different streams.
  assert not np.array_equal(sources["train"][0]["inputs"], sources["test"][0]["inputs"])
  # preprocess pads a stored example to a longer max_length and rejects a shorter one.
  padded = task.preprocess(sources["train"][0], _data_config(tmp_path, max_length=100))
  _check_element(padded, 100)
  assert padded["mask"].sum() == 96 and (padded["inputs"][96:] == probes.PAD_ID).all()
  with pytest.raises(ValueError, match="max_length=90"):
    task.preprocess(sources["train"][0], _data_config(tmp_path, max_length=90))


def test_builder_configs_are_named_by_their_parameters(tmp_path):
  base = _data_config(tmp_path)
  passkey = passkey_builder.builder_config(base).name
  assert passkey == "len96_key5_depthuniform_n12-3-4_seed0"
  half = passkey_builder.builder_config(_data_config(tmp_path, passkey=dict(depth=0.5)))
  assert half.name == "len96_key5_depth0.5_n12-3-4_seed0"
  mqar = mqar_builder.builder_config(base).name
  assert mqar == "len96_kv4_vocab128_a0.01_noise1_n12-3-4_seed0"
  for change in (dict(max_length=128), dict(num_train=20), dict(generate_seed=1),
                 dict(passkey=dict(key_length=6))):
    assert passkey_builder.builder_config(_data_config(tmp_path, **change)).name != passkey
  for change in (dict(max_length=128), dict(mqar=dict(num_kv_pairs=8)), dict(mqar=dict(power_a=1.0)),
                 dict(mqar=dict(vocab_size=256)), dict(num_test=5)):
    assert mqar_builder.builder_config(_data_config(tmp_path, **change)).name != mqar
  # Missing fields take the defaults; the default names the class's own config.
  defaults = ml_collections.ConfigDict()  # No namespaces: the tasks' defaults.
  config = mqar_builder.builder_config(defaults)
  assert config is mqar_builder.ProbeMqar.builder_configs[config.name]
  assert (config.num_kv_pairs, config.vocab_size, config.power_a) == (8, 8192, 0.01)
  config = passkey_builder.builder_config(defaults)
  assert config is passkey_builder.ProbePasskey.builder_configs[config.name]
  assert (config.key_length, config.depth, config.num_train) == (5, None, 100_000)
  with pytest.raises(ValueError, match="length=20"):
    passkey_builder.builder_config(_data_config(tmp_path, max_length=20))


def test_tasks_are_registered():
  cfg = ml_collections.ConfigDict(dict(passkey=dict(max_length=512),
                                       mqar=dict(max_length=512, vocab_size=1024)))
  assert data.TASKS["passkey"] is passkey.TASK
  assert data.TASKS["mqar"] is mqar.TASK
  assert passkey.TASK.info(cfg) == data.TaskInfo(
      num_classes=55, max_length=512, input_kind="tokens", vocab_size=55, pad_id=0,
      output_kind="tokens")
  assert mqar.TASK.info(cfg) == data.TaskInfo(
      num_classes=1024, max_length=512, input_kind="tokens", vocab_size=1024, pad_id=0,
      output_kind="tokens")


def test_lm_loss_trains_on_every_next_token_and_scores_the_answer(tmp_path):
  cfg = _data_config(tmp_path)
  task = data.get_task("passkey")
  raw = task.sources(cfg)["train"][0]
  answer_only = task.preprocess(raw, cfg)
  np.testing.assert_array_equal(answer_only["loss_mask"], answer_only["target_mask"])
  cfg_lm = _data_config(tmp_path, max_length=100)
  cfg_lm.passkey.lm_loss = True
  lm = task.preprocess(raw, cfg_lm)
  n = int(lm["mask"].sum())
  assert n == 96 and lm["loss_mask"].sum() == n - 1 and not lm["loss_mask"][n - 1:].any()
  np.testing.assert_array_equal(lm["targets"][:n - 1], lm["inputs"][1:n])
  # The scored answer is unchanged: the key digits, at the same positions.
  np.testing.assert_array_equal(lm["target_mask"][:96], answer_only["target_mask"])
  np.testing.assert_array_equal(lm["targets"][lm["target_mask"]],
                                answer_only["targets"][answer_only["target_mask"]])


@pytest.mark.parametrize("task,field,value,message", [
    ("passkey", "max_length", 70, "data.passkey.max_length=70 must be >= 71"),
    ("passkey", "depth", 1.5, "data.passkey.depth=1.5 must be <= 1.0"),
    ("mqar", "num_kv_pairs", 0, "data.mqar.num_kv_pairs=0 must be >= 1"),
    ("mqar", "max_length", 15, "data.mqar.max_length=15 must be >= 16"),
    ("mqar", "vocab_size", 9, "data.mqar.vocab_size=9 must be >= 10"),
    ("mqar", "power_a", 0.0, "data.mqar.power_a=0.0 must be > 0.0"),
])
def test_task_fields_are_validated_by_full_name(tmp_path, task, field, value, message):
  cfg = _data_config(tmp_path)
  data.get_task(task).validate(cfg)
  with cfg.unlocked():
    cfg[task][field] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    data.get_task(task).validate(cfg)
