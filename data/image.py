"""The "image" task: LRA Image, CIFAR-10 in grayscale as 1,024 pixels.

Splits: CIFAR-10's 50,000 training images give train and validation, its
10,000 test images the test split. Two conventions, ``data.image.convention``:

- ``"lra"`` (lra_benchmarks/image/input_pipeline.py): TF's
  ``rgb_to_grayscale`` (weights 0.2989, 0.5870, 0.1140 on [0, 1] floats), back
  to uint8 by ``convert_image_dtype`` (x 255.5, truncated); integer pixel
  inputs (tokens 0..255, vocabulary 256); validation = TFDS's
  ``train[90%:]``, train ``train[:90%]``. The builder keys the images as
  TFDS's ``cifar10`` does (their index in the batch files) under the same
  split names, so TFDS stores them in the same (key-hash) order and these
  slices hold the same images.
- ``"s4"`` (state-spaces/s4 src/dataloaders/basic.py CIFAR10,
  ``grayscale=True``): PIL's ``convert("L")`` luma (ITU-R 601-2, integer),
  then ``Normalize(122.6 / 255, 61.0 / 255)`` after ``ToTensor``: one
  continuous channel; validation = a random 10% of the training images.
  S4 draws it with torch's ``random_split`` and seed 42; here it is numpy's
  ``default_rng(42)`` permutation, which is not the same 5,000 images.

Its config namespace is ``config.data.image``; the reader and the TFDS builder
are ``data.image_builder`` (imported when the data is built).
"""
from typing import Any, Mapping

import ml_collections
import numpy as np

from configs import checks
from data import tasks

NAME = "image"
NUM_CLASSES = 10
PIXELS = 32 * 32
CONVENTIONS = ("lra", "s4")
NUM_TRAIN_IMAGES = 50_000
VALIDATION_FRACTION = 0.1
S4_MEAN, S4_STD = 122.6, 61.0  # Of the 0..255 luma (S4's Normalize x 255).
S4_SPLIT_SEED = 42
# tf.image.rgb_to_grayscale's weights.
TF_GRAY_WEIGHTS = np.asarray([0.2989, 0.5870, 0.1140], np.float32)


def config() -> ml_collections.ConfigDict:
  """``config.data.image``: the Image task's fields and their defaults."""
  cfg = ml_collections.ConfigDict()
  # "lra": LRA's grayscale, integer pixels, the last 10% as validation;
  # "s4": PIL luma normalised by S4's mean and std, a random 10%.
  cfg.convention = "s4"
  return cfg


def validate(data_config: ml_collections.ConfigDict) -> None:
  own = tasks.task_fields(data_config, TASK)
  checks.check_choice(f"data.{NAME}.convention", own.convention, CONVENTIONS)


def _convention(data_config) -> str:
  return tasks.task_fields(data_config, TASK).convention


def task_info(data_config: Any) -> tasks.TaskInfo:
  if _convention(data_config) == "lra":
    return tasks.TaskInfo(num_classes=NUM_CLASSES, max_length=PIXELS,
                          input_kind="tokens", vocab_size=256)
  return tasks.TaskInfo(num_classes=NUM_CLASSES, max_length=PIXELS,
                        input_kind="continuous", input_channels=1)


def split_indices(convention: str, n: int = NUM_TRAIN_IMAGES
                  ) -> dict[str, np.ndarray]:
  """Indices of the training images that form ``train`` and ``validation``."""
  n_val = int(round(n * VALIDATION_FRACTION))
  if convention == "lra":
    order = np.arange(n)
  else:
    order = np.random.default_rng(S4_SPLIT_SEED).permutation(n)
    order = np.concatenate([np.sort(order[n_val:]), np.sort(order[:n_val])])
  return {"train": order[:n - n_val], "validation": order[n - n_val:]}


def task_sources(data_config: Any) -> dict[str, tasks.RandomAccessSource]:
  from data import image_builder  # pylint: disable=g-import-not-at-top
  builder = image_builder.prepare(data_config)
  train = builder.as_data_source(split="train")
  parts = split_indices(_convention(data_config), len(train))
  out = {"train": tasks.View(train, parts["train"]),
         "validation": tasks.View(train, parts["validation"]),
         "test": builder.as_data_source(split="test")}
  for i, split in enumerate(("train", "validation", "test")):
    size = tasks.config_field(data_config, f"num_{split}")
    if size is not None:  # A fixed random subset (the cpu/test presets).
      out[split] = tasks.Subset(out[split], size, seed=i,
                                field=f"data.num_{split}")
  return out


def gray_lra(rgb: np.ndarray) -> np.ndarray:
  """TF ``rgb_to_grayscale`` of ``convert_image_dtype(rgb, float32)``, then
  ``convert_image_dtype(..., uint8)``: uint8 ``[..., 32, 32]``."""
  x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
  w = TF_GRAY_WEIGHTS
  gray = x[..., 0] * w[0] + x[..., 1] * w[1] + x[..., 2] * w[2]
  return (gray * np.float32(255.5)).astype(np.uint8)


def gray_pil(rgb: np.ndarray) -> np.ndarray:
  """PIL ``convert("L")``: ``(R 19595 + G 38470 + B 7471 + 2^15) >> 16``."""
  r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
  return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def preprocess(example: Mapping[str, Any], data_config: Any) -> dict[str, np.ndarray]:
  """The row-major grayscale pixels of the convention; every pixel is real."""
  rgb = np.asarray(example["image"], np.uint8)
  if rgb.shape != (32, 32, 3):
    raise ValueError(f"CIFAR-10 image of shape {rgb.shape} is not (32, 32, 3)")
  if _convention(data_config) == "lra":
    inputs = gray_lra(rgb).reshape(PIXELS).astype(np.int32)
  else:
    luma = gray_pil(rgb).astype(np.float32)
    inputs = ((luma / 255 - S4_MEAN / 255) / (S4_STD / 255)).reshape(PIXELS, 1)
  return {"inputs": inputs, "mask": np.ones((PIXELS,), bool),
          "targets": np.asarray(example["label"], np.int32)}


TASK = tasks.register_task(tasks.Task(
    name=NAME, info=task_info, sources=task_sources, preprocess=preprocess,
    config=config, validate=validate))
