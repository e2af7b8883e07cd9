"""Pathfinder datasets on disk: images and metadata in the LRA release's layout.

Labels are balanced per batch (the original draws them at random); the images depend
on the seed and the batch / chunk sizes, not on the number of workers.

Output layout (what LRA's release holds and its reader expects)::

  <root>/pathfinder<N>/<curv_baseline|curv_contour_length_9|curv_contour_length_14>/
      imgs/<batch>/sample_<i>.png       grayscale uint8 PNG, i restarts at 0 per batch
      metadata/<batch>.npy             text despite the extension; one line per image:
        imgs/<batch> sample_<i>.png <i> <label> <continuity> <contour_length>
        <distractor_length> <paddle_length> <paddle_thickness> <margin> <num_contrasts>
  (the columns of ``snakes2.accumulate_meta``).
"""
import multiprocessing
import os

import numpy as np
from PIL import Image

from data.pathfinder_params import DIFFICULTIES, PathfinderParams, official_params
from data.pathfinder_render import stamp_bank
from data.pathfinder_sample import ImageSampler, image_rng


def batch_labels(seed: int, batch: int, count: int) -> np.ndarray:
  """Balanced labels of one batch: half 1 (connected), half 0, in a seeded order."""
  labels = np.arange(count) % 2
  np.random.default_rng([seed, batch, 7]).shuffle(labels)
  return labels


def _write_chunk(job) -> list[tuple[int, int, int, int]]:
  (root, params, difficulty, seed, batch, start, labels) = job
  # One sampler per chunk: target pairs found in one batch serve the next images.
  sampler = ImageSampler(params, image_rng(seed, params.resolution, difficulty, batch, start))
  out = []
  img_dir = os.path.join(root, "imgs", str(batch))
  for offset, label in enumerate(labels):
    index = start + offset
    image, info = sampler(int(label))
    Image.fromarray(image).save(os.path.join(img_dir, f"sample_{index}.png"),
                                compress_level=1)
    out.append((batch, index, int(label), info["margin"]))
  return out


def metadata_line(batch: int, index: int, label: int, params: PathfinderParams,
                  margin: int) -> str:
  """One line of a metadata file (the columns of ``snakes2.accumulate_meta``)."""
  return (f"imgs/{batch} sample_{index}.png {index} {label} {params.continuity} "
          f"{params.contour_length} {params.distractor_length} {params.paddle_length} "
          f"{params.paddle_thickness} {margin} {len(params.paddle_contrasts)}")


def generate_dataset(root: str, *, resolution: int, difficulty: str, num_images: int,
                     seed: int = 0, images_per_batch: int = 1000, workers: int | None = None,
                     chunk_size: int = 50, progress: bool = True,
                     params: PathfinderParams | None = None) -> str:
  """Writes ``num_images`` images in the official layout; returns the difficulty dir.

  Args:
    root: dataset root; files go to ``root/pathfinder<N>/<difficulty dir>/``.
    resolution: 32, 64, 128 or 256.
    difficulty: "easy" (contour length 6), "intermediate" (9) or "hard" (14).
    num_images: images in total, in batches of ``images_per_batch``.
    seed: the data depends on (seed, resolution, difficulty, images_per_batch,
      chunk_size), not on ``workers``.
    workers: processes (default ``os.cpu_count()``); 1 runs in this process.
    chunk_size: images per task handed to a worker (one random stream each).
    progress: show a tqdm bar.
    params: overrides ``official_params(resolution, difficulty)``.
  """
  if num_images < 1:
    raise ValueError(f"{num_images=} must be positive")
  if images_per_batch < 1:
    raise ValueError(f"{images_per_batch=} must be positive")
  params = params or official_params(resolution, difficulty)
  if params.resolution != resolution:
    raise ValueError(f"{params.resolution=} differs from {resolution=}")
  out_dir = os.path.join(root, f"pathfinder{resolution}", DIFFICULTIES[difficulty][0])
  os.makedirs(os.path.join(out_dir, "metadata"), exist_ok=True)
  jobs = []
  num_batches = -(-num_images // images_per_batch)
  for batch in range(num_batches):
    count = min(images_per_batch, num_images - batch * images_per_batch)
    os.makedirs(os.path.join(out_dir, "imgs", str(batch)), exist_ok=True)
    labels = batch_labels(seed, batch, count)
    for start in range(0, count, chunk_size):
      jobs.append((out_dir, params, difficulty, seed, batch, start,
                   labels[start:start + chunk_size]))
  workers = workers or os.cpu_count() or 1
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=num_images, desc=f"pathfinder{resolution} {difficulty}",
                    unit="img")
  rows = []
  if workers == 1 or len(jobs) == 1:
    results = map(_write_chunk, jobs)
    pool = None
  else:
    # Render the stamps once here: forked workers inherit them.
    for margin in params.paddle_margins:
      stamp_bank(params, margin)
    ctx = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    pool = ctx.Pool(min(workers, len(jobs)))
    results = pool.imap_unordered(_write_chunk, jobs)
  try:
    for chunk in results:
      rows.extend(chunk)
      if bar is not None:
        bar.update(len(chunk))
  finally:
    if pool is not None:
      pool.close()
      pool.join()
    if bar is not None:
      bar.close()
  rows.sort()
  by_batch: dict[int, list[str]] = {}
  for batch, index, label, margin in rows:
    by_batch.setdefault(batch, []).append(metadata_line(batch, index, label, params, margin))
  for batch, lines in by_batch.items():
    path = os.path.join(out_dir, "metadata", f"{batch}.npy")
    with open(path + ".tmp", "w") as f:
      f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
  return out_dir
