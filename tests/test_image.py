"""LRA Image: the CIFAR-10 python batches, both grayscale conventions against
their libraries' formulas, the splits, errors that name the file, and a run of
the test preset."""
import importlib
import pickle

import numpy as np
import PIL.Image
import pytest

from configs import default
from data import image
from data import image_builder
from train import trainer

PER_BATCH = 6  # 30 training images, 6 test images.


def _write_cifar(root, seed=0):
  """Small batches in the official format; returns {file: (images, labels)}."""
  rng = np.random.default_rng(seed)
  folder = root / image_builder.FOLDER
  folder.mkdir(parents=True)
  written = {}
  for name in image_builder.BATCHES["train"] + image_builder.BATCHES["test"]:
    images = rng.integers(0, 256, size=(PER_BATCH, 32, 32, 3), dtype=np.uint8)
    images[0] = 255  # White and black pixels: the ends of both conventions.
    images[1] = 0
    labels = rng.integers(0, 10, size=PER_BATCH).tolist()
    data = images.transpose(0, 3, 1, 2).reshape(PER_BATCH, 3072)
    with open(folder / name, "wb") as f:
      pickle.dump({b"data": data, b"labels": labels,
                   b"batch_label": name.encode()}, f)
    written[name] = (images, labels)
  return written


def _data_config(tmp_path, convention="s4", **overrides):
  cfg = default.get_config().data
  cfg.update(dict(task="image", data_dir=str(tmp_path / "tfds"),
                  manual_dir=str(tmp_path)))
  cfg.update(overrides)
  cfg.image.convention = convention
  return cfg


def test_pil_luma_matches_pil():
  rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  expected = np.asarray(PIL.Image.fromarray(rgb).convert("L"))
  np.testing.assert_array_equal(image.gray_pil(rgb), expected)


def test_lra_grayscale_is_tf_rgb_to_grayscale_then_uint8():
  # tf.image.rgb_to_grayscale weights on [0, 1], then x 255.5 truncated.
  rgb = np.asarray([[[255, 255, 255], [0, 0, 0], [10, 200, 30],
                     [1, 1, 1]]], np.uint8)
  x = rgb.astype(np.float64) / 255
  gray = x @ np.asarray([0.2989, 0.5870, 0.1140])
  np.testing.assert_array_equal(image.gray_lra(rgb),
                                np.floor(gray * 255.5).astype(np.uint8))
  assert image.gray_lra(rgb)[0, 0] == 255 and image.gray_lra(rgb)[0, 1] == 0


def test_images_are_read_as_written_and_in_tfds_order(tmp_path):
  written = _write_cifar(tmp_path)
  builder = image_builder.prepare(_data_config(tmp_path))
  train = builder.as_data_source(split="train")
  all_train = [(img, lab) for n in image_builder.BATCHES["train"]
               for img, lab in zip(*written[n])]
  # TFDS stores the examples in the order of its key hash (salt: the split
  # name), as for TFDS's cifar10: keys are the file-order indices.
  from tensorflow_datasets.core import hashing  # pylint: disable=g-import-not-at-top
  hasher = hashing.Hasher("train")
  order = sorted(range(len(all_train)), key=hasher.hash_key)
  assert len(train) == len(all_train)
  for i, key in enumerate(order):
    np.testing.assert_array_equal(train[i]["image"], all_train[key][0])
    assert train[i]["label"] == all_train[key][1]


@pytest.mark.parametrize("convention", ["lra", "s4"])
def test_splits_and_inputs_per_convention(tmp_path, convention):
  _write_cifar(tmp_path)
  cfg = _data_config(tmp_path, convention)
  sources = image.TASK.sources(cfg)
  assert {s: len(v) for s, v in sources.items()} == {
      "train": 27, "validation": 3, "test": PER_BATCH}
  train = image_builder.make_builder(cfg).as_data_source("train")
  parts = image.split_indices(convention, len(train))
  if convention == "lra":  # train[:90%], train[90%:].
    np.testing.assert_array_equal(parts["validation"], [27, 28, 29])
  assert sorted(np.concatenate([parts["train"], parts["validation"]])) == list(
      range(30))
  info = image.TASK.info(cfg)
  out = image.preprocess(sources["test"][0], cfg)
  rgb = np.asarray(sources["test"][0]["image"])
  if convention == "lra":
    assert info.input_kind == "tokens" and info.vocab_size == 256
    assert out["inputs"].shape == (1024,) and out["inputs"].dtype == np.int32
    np.testing.assert_array_equal(out["inputs"], image.gray_lra(rgb).ravel())
  else:
    assert info.input_kind == "continuous" and info.input_channels == 1
    luma = np.asarray(PIL.Image.fromarray(rgb).convert("L"), np.float64)
    np.testing.assert_allclose(out["inputs"][:, 0],
                               ((luma - 122.6) / 61.0).ravel(), atol=1e-5)
  assert out["mask"].all()


def test_s4_validation_split_is_fixed_random():
  a, b = image.split_indices("s4"), image.split_indices("s4")
  np.testing.assert_array_equal(a["validation"], b["validation"])
  assert len(a["validation"]) == 5000 and len(a["train"]) == 45000
  assert not np.array_equal(a["validation"], np.arange(45000, 50000))


def test_bad_batch_files_are_named(tmp_path):
  _write_cifar(tmp_path)
  (tmp_path / image_builder.FOLDER / "data_batch_3").write_bytes(b"")
  with pytest.raises(ValueError, match="data_batch_3: not a CIFAR-10 python "
                     "batch"):
    image.TASK.sources(_data_config(tmp_path))


def test_missing_folder_says_what_is_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match="holds no CIFAR-10 python "
                     "batches.*cifar-10-python.tar.gz"):
    image.TASK.sources(_data_config(tmp_path))


def test_test_preset_trains(tmp_path):
  _write_cifar(tmp_path / "cifar")
  config = importlib.import_module("configs.lra_image").get_config("test")
  config.data.manual_dir = str(tmp_path / "cifar")
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.num_validation, config.data.num_test = 3, 6
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 4 and result["test"]["num_examples"] == 6
