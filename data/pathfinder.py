"""The "pathfinder" and "pathx" tasks (LRA): are the two marked dots connected?

Each task has its own config namespace, ``config.data.pathfinder`` and
``config.data.pathx`` (:func:`pathfinder_config`, :func:`pathx_config`), with the
same fields (``resolution``, ``difficulty``); Path-X is Pathfinder at 128 x 128. The
TFDS builder and the reader of the official files are ``data.pathfinder_builder``
(imported when the data is built), the generator ``data.pathfinder_params`` /
``_render`` / ``_sample`` / ``_write``.

Inputs follow S4: pixels / 255, normalised with mean 0.5 and std 0.5 (to [-1, 1]), as a
sequence of N * N steps with one channel, in row-major order.
"""
import io
from typing import Any

import ml_collections
import numpy as np

from configs import checks
from data import tasks
from data.pathfinder_params import DIFFICULTIES

DIFFICULTY_DIRS = {name: d for name, (d, _) in DIFFICULTIES.items()}
RESOLUTIONS = (32, 64, 128, 256)
# Path-X is LRA's 128 x 128 Pathfinder; S4 also reports 256 x 256 ("Path-256").
PATHX_RESOLUTIONS = (128, 256)
SPLITS = ("train", "validation", "test")
# Images at least this large are stored as PNG bytes, smaller ones as pixels.
PNG_MIN_RESOLUTION = 128


def pathfinder_config() -> ml_collections.ConfigDict:
  """``config.data.pathfinder``: the Pathfinder task's fields and their defaults."""
  cfg = ml_collections.ConfigDict()
  # Image side in pixels (32, 64, 128, 256); the sequence has resolution**2 steps.
  cfg.resolution = 32
  # "easy" | "intermediate" | "hard" (contour length 6/9/14); LRA reports the hard
  # setting.
  cfg.difficulty = "hard"
  return cfg


def pathx_config() -> ml_collections.ConfigDict:
  """``config.data.pathx``: the Path-X task's fields and their defaults."""
  cfg = ml_collections.ConfigDict()
  # Image side in pixels: 128 is LRA's Path-X (16384 steps); 256 the larger one.
  cfg.resolution = 128
  # As data.pathfinder.difficulty; Path-X is the hard setting.
  cfg.difficulty = "hard"
  return cfg


def decode_image(value: Any, resolution: int) -> np.ndarray:
  """uint8 ``[N, N]`` from stored pixels or PNG bytes."""
  if isinstance(value, (bytes, np.bytes_)):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(io.BytesIO(bytes(value))) as im:
      return np.asarray(im.convert("L"), dtype=np.uint8)
  if isinstance(value, np.ndarray) and value.dtype == object:
    return decode_image(value.item(), resolution)
  return np.asarray(value, dtype=np.uint8).reshape(resolution, resolution)


def _make_task(name: str, config, resolutions) -> tasks.Task:

  def own(data_config):
    return tasks.task_fields(data_config, task)

  def resolution(data_config) -> int:
    value = own(data_config).resolution
    if value not in resolutions:
      checks.fail(f"data.{name}.resolution", value, f"is not one of {resolutions}")
    return value

  def validate(data_config):
    fields = own(data_config)
    checks.check_choice(f"data.{name}.resolution", fields.resolution, resolutions)
    checks.check_choice(f"data.{name}.difficulty", fields.difficulty,
                        tuple(DIFFICULTY_DIRS))

  def info(data_config):
    n = resolution(data_config)
    return tasks.TaskInfo(num_classes=2, max_length=n * n, input_kind="continuous",
                          input_channels=1)

  def sources(data_config):
    from data import pathfinder_builder  # pylint: disable=g-import-not-at-top
    builder = pathfinder_builder.prepare(data_config, resolution(data_config),
                                         own(data_config).difficulty)
    return {split: builder.as_data_source(split) for split in SPLITS}

  def preprocess(element, data_config):
    n = resolution(data_config)
    pixels = decode_image(element["image"], n)
    if pixels.shape != (n, n):
      raise ValueError(f"pathfinder image of shape {pixels.shape} is not ({n}, {n})")
    # S4: ToTensor (/255) then Normalize(mean=0.5, std=0.5); row-major "(h w) 1".
    inputs = (pixels.astype(np.float32) / 255 - 0.5) / 0.5
    return {"inputs": inputs.reshape(n * n, 1),
            "mask": np.ones((n * n,), bool),
            "targets": np.asarray(element["label"], np.int32)}

  task = tasks.Task(name=name, info=info, sources=sources, preprocess=preprocess,
                    config=config, validate=validate)
  return task


PATHFINDER = tasks.register_task(_make_task("pathfinder", pathfinder_config, RESOLUTIONS))
PATHX = tasks.register_task(_make_task("pathx", pathx_config, PATHX_RESOLUTIONS))
