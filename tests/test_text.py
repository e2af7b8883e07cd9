"""LRA Text: the aclImdb reader, byte ids as LRA's pipeline makes them, the
splits, the errors that name the file, and a run of the test preset."""
import importlib
import json
import os

import numpy as np
import pytest

from configs import default
from data import provenance
from data import text
from train import trainer

# A review with non-ASCII UTF-8, HTML breaks (kept, as LRA keeps them) and
# surrounding whitespace (stripped, as TFDS reads the files).
SAMPLE = "  Caf\u00e9 <br /><br />great\tfilm!\n\n".encode("utf-8")


def _write_imdb(root, per_class=10, seed=0):
  """A small aclImdb folder in the official layout; returns {path: bytes}."""
  rng = np.random.default_rng(seed)
  written = {}
  for split in ("train", "test"):
    for label in ("neg", "pos"):
      folder = root / "aclImdb" / split / label
      folder.mkdir(parents=True)
      for i in range(per_class):
        rating = int(rng.integers(1, 5) if label == "neg" else rng.integers(7, 11))
        words = rng.choice([b"good", b"bad", b"plot", b"\xc3\xa9t\xc3\xa9"],
                           size=int(rng.integers(3, 30)))
        data = b" ".join(words) if i else SAMPLE
        path = folder / f"{i}_{rating}.txt"
        path.write_bytes(data)
        written[path] = data
  (root / "aclImdb" / "train" / "urls_pos.txt").write_text("x\n")  # Ignored.
  return written


def _data_config(tmp_path, **overrides):
  cfg = default.get_config().data
  cfg.update(dict(task="text", data_dir=str(tmp_path / "tfds"),
                  manual_dir=str(tmp_path)))
  cfg.update(overrides)
  cfg.text.max_length = 16
  return cfg


def test_encoding_is_lra_byte_encoder_ids():
  # tfds ByteTextEncoder: id = byte + 1 (0 pads), over the UTF-8 bytes.
  np.testing.assert_array_equal(text.encode("a\u00e9".encode()),
                                [ord("a") + 1, 0xC3 + 1, 0xA9 + 1])
  assert text.VOCAB_SIZE == 257


def test_reader_reads_the_official_layout(tmp_path):
  written = _write_imdb(tmp_path)
  sources = text.TASK.sources(_data_config(tmp_path))
  assert {s: len(v) for s, v in sources.items()} == {
      "train": 40 // 2, "validation": 20, "test": 20}
  expected = {}
  for path, data in written.items():
    split = path.parent.parent.name
    label = ("neg", "pos").index(path.parent.name)
    expected.setdefault(split, []).append(
        (tuple(text.encode(data.strip()).tolist()), label))
  for split, source in (("train", "train"), ("validation", "test"),
                        ("test", "test")):
    got = sorted((tuple(np.asarray(ex["inputs"]).tolist()), int(ex["targets"]))
                 for ex in (sources[split][i] for i in range(len(sources[split]))))
    assert got == sorted(expected[source])
  sample = text.encode(SAMPLE.strip())
  assert sample[0] == ord("C") + 1 and len(sample) == len(SAMPLE.strip())


def test_preprocess_truncates_pads_and_masks(tmp_path):
  cfg = _data_config(tmp_path)
  out = text.preprocess({"inputs": text.encode(b"x" * 40), "targets": 1}, cfg)
  assert out["inputs"].shape == (16,) and out["mask"].all()
  out = text.preprocess({"inputs": text.encode(b"hi"), "targets": 0}, cfg)
  np.testing.assert_array_equal(out["inputs"][:3], [ord("h") + 1, ord("i") + 1, 0])
  assert out["mask"].sum() == 2 and out["targets"] == 0


def test_subsets_are_fixed_and_checked(tmp_path):
  _write_imdb(tmp_path)
  cfg = _data_config(tmp_path, num_train=6, num_validation=4, num_test=4)
  a = text.TASK.sources(cfg)
  b = text.TASK.sources(cfg)
  assert [len(a[s]) for s in ("train", "validation", "test")] == [6, 4, 4]
  assert [a["train"][i]["inputs"].tolist() for i in range(6)] == [
      b["train"][i]["inputs"].tolist() for i in range(6)]
  with pytest.raises(ValueError, match="data.num_train=99 is more than the 20"):
    text.TASK.sources(_data_config(tmp_path, num_train=99))


@pytest.mark.parametrize("corrupt,message", [
    (lambda r: (r / "aclImdb/train/pos/3_8.txt").write_bytes(b" \n "),
     r"train/pos/3_8.txt:1: empty review"),
    (lambda r: (r / "aclImdb/test/neg/0_3.txt").rename(
        r / "aclImdb/test/neg/0_9.txt"),
     r"test/neg/0_9.txt: rating 9 does not belong under neg/"),
    (lambda r: (r / "aclImdb/train/neg/notes.md").write_text("x"),
     r"train/neg/notes.md: not an IMDB review file name"),
])
def test_bad_files_are_named(tmp_path, corrupt, message):
  _write_imdb(tmp_path)
  # Make the names the cases refer to exist with known ratings.
  for split, label, name in (("train", "pos", "3_8.txt"),
                             ("test", "neg", "0_3.txt")):
    folder = tmp_path / "aclImdb" / split / label
    for old in folder.glob(name.split("_")[0] + "_*.txt"):
      old.rename(folder / name)
  corrupt(tmp_path)
  with pytest.raises(ValueError, match=message):
    text.TASK.sources(_data_config(tmp_path))


def test_missing_folder_says_what_is_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"holds no IMDB folder with "
                     r"\{train,test\}/\{pos,neg\}/.*aclImdb_v1.tar.gz"):
    text.TASK.sources(_data_config(tmp_path))


def test_cached_data_refuses_another_folder(tmp_path):
  _write_imdb(tmp_path / "a")
  _write_imdb(tmp_path / "b", seed=1)
  text.TASK.sources(_data_config(tmp_path, manual_dir=str(tmp_path / "a")))
  with pytest.raises(provenance.StaleDataError, match="Delete that folder"):
    text.TASK.sources(_data_config(tmp_path, manual_dir=str(tmp_path / "b")))


def test_test_preset_trains(tmp_path):
  _write_imdb(tmp_path / "imdb")
  config = importlib.import_module("configs.lra_text").get_config("test")
  config.data.manual_dir = str(tmp_path / "imdb")
  config.data.data_dir = str(tmp_path / "tfds")
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  # 16 reviews in batches of 8, 2 epochs.
  assert result["step"] == 4 and "test" in result
  test = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
  assert test["num_examples"] == 8 and 0.0 <= test["accuracy"] <= 1.0
  assert os.path.exists(tmp_path / "run" / "config.json")
