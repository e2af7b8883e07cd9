"""Pathfinder / Path-X TFDS builder and the reader of the official files.

Data: the LRA release (``lra_release/pathfinder{32,64,128,256}/``, found in every
layout the tarball unpacks to by :func:`data.release.find_release_dir`) made with
the official generator (github.com/drewlinsley/pathfinder), or our generator
(``data.pathfinder_write``) writing the same layout when ``config.data.manual_dir``
is None::

  pathfinder<N>/<curv_baseline|curv_contour_length_9|curv_contour_length_14>/
      imgs/<batch>/sample_<i>.png
      metadata/<batch>.npy   text: "imgs/<batch> sample_<i>.png <i> <label> ..." per line

Splits: one difficulty directory is one dataset. Missing or empty image files (the
release has an empty ``pathfinder32/curv_baseline/imgs/0/sample_172.png``) are dropped
first; then, as S4 (``src/dataloaders/lra.py``, PathFinder.setup) does, 10% validation
and 10% test (``int(0.1 * n)`` each), the rest train, assigned by a seed-42
permutation (numpy here; S4 uses torch.randperm, so the assignment differs but the
sizes match); LRA's 80/10/10 slices of 200k images per difficulty give the same
160k/20k/20k. Images that are not empty but cannot be read are skipped after the split
and counted in the log.

Storage: uint8 ``[N, N]`` pixels for N <= 64 (1-4 KB each, nothing to decode); the PNG
file's bytes for N >= 128 (Path-X: 16 KB raw vs ~3 KB PNG, i.e. 3.3 GB vs ~0.6 GB for
200k images), decoded in the task's ``preprocess`` as LRA does (``tf.image.decode_png``).
"""
import dataclasses
import io
import os
import re
from typing import Any, Iterator, Mapping

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from data import builder_base
from data import pathfinder_write
from data import provenance
from data import release
from data import tasks
from data.pathfinder import (DIFFICULTY_DIRS, PNG_MIN_RESOLUTION, RESOLUTIONS, SPLITS,
                             decode_image)

# LRA / S4: 200k images per difficulty, 10% validation, 10% test.
LRA_SPLIT_SIZES = {"train": 160_000, "validation": 20_000, "test": 20_000}
SPLIT_SEED = 42  # S4's default "seed" for the split


def _field(cfg: Any, name: str, default: Any = None) -> Any:
  return tasks.config_field(cfg, name, default)


@dataclasses.dataclass(frozen=True)
class Record:
  """One metadata line."""
  image_path: str
  label: int
  metadata_file: str
  line_number: int


def _has_difficulty_dirs(path) -> bool:
  return any(os.path.isdir(os.path.join(path, d)) for d in DIFFICULTY_DIRS.values())


def find_pathfinder_dir(manual_dir: str, resolution: int) -> str:
  """The ``pathfinder<N>`` folder under an LRA release folder (or that folder itself).

  Raises:
    ValueError: ``manual_dir`` is the folder of another resolution (e.g. Path-X,
      which reads ``pathfinder128``, pointed at ``pathfinder32``).
    FileNotFoundError: no ``pathfinder<N>`` folder with a difficulty folder in any
      release layout (:mod:`data.release`).
  """
  name = f"pathfinder{resolution}"
  base = os.path.basename(os.path.normpath(os.path.expanduser(manual_dir)))
  other = re.fullmatch(r"pathfinder(\d+)", base)
  if other and int(other.group(1)) != resolution:
    n = int(other.group(1))
    raise ValueError(
        f"data.manual_dir={manual_dir!r} is a {base} folder ({n}x{n} images), but "
        f"this task reads {name} ({resolution}x{resolution} images; Path-X is "
        "pathfinder128): point data.manual_dir at the release folder that holds "
        f"{name}, or at {name} itself")
  found = release.find_release_dir(
      manual_dir, name, accept=_has_difficulty_dirs,
      expected=f"one of the folders {sorted(DIFFICULTY_DIRS.values())}",
      hint="Point config.data.manual_dir at the extracted LRA release (lra_release.gz "
      "from github.com/google-research/long-range-arena) or set it to None to "
      "generate.")
  return os.fspath(found)


def _metadata_rows(path: str) -> Iterator[tuple[int, list[str]]]:
  with open(path, "rb") as f:
    raw = f.read()
  if raw.startswith(b"\x93NUMPY"):
    # snakes2.py itself writes a real .npy of strings; accept that form too.
    rows = np.load(io.BytesIO(raw), allow_pickle=False)
    for number, row in enumerate(np.atleast_2d(rows), start=1):
      yield number, [str(v) for v in row]
    return
  for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
    if line.strip():
      yield number, line.split()


def read_metadata(difficulty_dir: str) -> list[Record]:
  """Records of every metadata file, files in batch order, lines in file order.

  Raises:
    FileNotFoundError: there is no metadata file.
    ValueError: a line that is not ``<subdir> <file> <index> <label 0|1> ...``, naming
      the file and the line number.
  """
  meta_dir = os.path.join(difficulty_dir, "metadata")
  if not os.path.isdir(meta_dir):
    raise FileNotFoundError(f"no metadata directory {meta_dir}")
  names = [f for f in os.listdir(meta_dir) if f.endswith(".npy")]
  batches = sorted((f for f in names if f[:-4].isdigit()), key=lambda f: int(f[:-4]))
  if len(batches) != len(names):
    logging.warning("pathfinder: ignoring metadata files without a batch number: %s",
                    sorted(set(names) - set(batches)))
  if not batches:
    raise FileNotFoundError(f"no metadata/<batch>.npy files in {meta_dir}")
  records = []
  for name in batches:
    path = os.path.join(meta_dir, name)
    for number, fields in _metadata_rows(path):
      if len(fields) < 4:
        raise ValueError(f"{path}:{number}: malformed pathfinder metadata line {fields!r}:"
                         " expected '<subdir> <file> <index> <label> ...'")
      try:
        int(fields[2])
        label = int(fields[3])
      except ValueError:
        raise ValueError(f"{path}:{number}: malformed pathfinder metadata line {fields!r}:"
                         " index and label must be integers") from None
      if label not in (0, 1):
        raise ValueError(f"{path}:{number}: pathfinder label {label} is not 0 or 1")
      records.append(Record(os.path.join(fields[0], fields[1]), label, path, number))
  return records


def load_png(path: str, resolution: int) -> bytes | None:
  """The PNG bytes of a grayscale N x N image, or None if it cannot be read as one."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      if im.size != (resolution, resolution):
        return None
      if im.mode != "L":  # as S4: Image.open(f).convert("L")
        out = io.BytesIO()
        im.convert("L").save(out, format="PNG")
        data = out.getvalue()
    return data
  except (OSError, ValueError, SyntaxError):
    return None


def drop_empty_images(difficulty_dir: str, records: list[Record]) -> list[Record]:
  """The records whose image file exists and is not empty, in order.

  The release has one empty image (``pathfinder32/curv_baseline/imgs/0/
  sample_172.png``), which S4 drops by name before it splits; dropping every
  missing or empty file is the same for the release and needs one ``stat`` per image.
  """
  kept, dropped = [], []
  for record in records:
    path = os.path.join(difficulty_dir, record.image_path)
    try:
      empty = os.path.getsize(path) == 0
    except OSError:
      empty = True
    (dropped if empty else kept).append(record)
  if dropped:
    logging.warning("pathfinder: dropped %d missing or empty image(s) of %d before the "
                    "split, e.g. %s", len(dropped), len(records),
                    [r.image_path for r in dropped[:3]])
  return kept


def check_image_size(difficulty_dir: str, records: list[Record], resolution: int) -> None:
  """Raises ``ValueError`` if the first readable image is not ``resolution`` square.

  Otherwise every image would be skipped as unreadable and TFDS would end in "No
  examples were yielded" (e.g. Path-X, 128 x 128, pointed at a ``pathfinder32``
  folder that is not named so).
  """
  for record in records[:16]:
    path = os.path.join(difficulty_dir, record.image_path)
    try:
      with Image.open(path) as im:
        size = im.size
    except (OSError, ValueError, SyntaxError):
      continue
    if size != (resolution, resolution):
      raise ValueError(
          f"{path} is {size[0]}x{size[1]}, but this task reads pathfinder{resolution} "
          f"({resolution}x{resolution} images; Path-X is pathfinder128): "
          f"data.manual_dir leads to {difficulty_dir}, which holds the images of "
          f"another resolution; point it at the release folder that holds "
          f"pathfinder{resolution}")
    return


def split_records(num: int, sizes: Mapping[str, int] | None = None,
                  seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
  """Indices per split: a seeded permutation cut into train, validation, test (as S4)."""
  if sizes is None:
    num_val, num_test = int(0.1 * num), int(0.1 * num)
    sizes = {"train": num - num_val - num_test, "validation": num_val, "test": num_test}
  if sum(sizes.values()) != num:
    raise ValueError(f"split {sizes=} do not add up to {num=} images")
  order = np.random.default_rng(seed).permutation(num)
  out, start = {}, 0
  for split in SPLITS:
    out[split] = np.sort(order[start:start + sizes[split]])
    start += sizes[split]
  return out


# ---------------------------------------------------------------------------------------
# TFDS builder.


class PathfinderConfig(tfds.core.BuilderConfig):
  """One resolution and difficulty; generated data when ``split_sizes`` is given."""

  def __init__(self, *, resolution: int, difficulty: str,
               split_sizes: Mapping[str, int] | None = None, seed: int = 0,
               generate_workers: int | None = None, **kwargs):
    if resolution not in RESOLUTIONS:
      raise ValueError(f"{resolution=} is not one of {RESOLUTIONS}")
    if difficulty not in DIFFICULTY_DIRS:
      raise ValueError(f"{difficulty=} is not one of {sorted(DIFFICULTY_DIRS)}")
    name = f"{resolution}_{difficulty}"
    if split_sizes is not None:
      sizes = [int(split_sizes[s]) for s in SPLITS]
      if min(sizes) < 1:
        raise ValueError(f"generated {split_sizes=} need at least one image per split")
      name += "_gen_" + "_".join(map(str, sizes)) + f"_seed{seed}"
    super().__init__(name=name, description=f"pathfinder{resolution}, {difficulty}",
                     **kwargs)
    self.resolution, self.difficulty = resolution, difficulty
    self.split_sizes = dict(split_sizes) if split_sizes is not None else None
    self.seed, self.generate_workers = seed, generate_workers


class Pathfinder(builder_base.Builder):
  """Pathfinder (Linsley et al. 2018) at 32..256 pixels, as in the LRA release."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [PathfinderConfig(resolution=r, difficulty=d)
                     for r in RESOLUTIONS for d in DIFFICULTY_DIRS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download lra_release.gz from github.com/google-research/long-range-arena, extract it,
  and pass the extracted directory (or its pathfinder<N> directory) as manual_dir.
  Configs named *_gen_* generate the data instead (data.pathfinder_write).
  """


  def _info(self) -> tfds.core.DatasetInfo:
    n = self.builder_config.resolution
    if n >= PNG_MIN_RESOLUTION:
      image = tfds.features.Tensor(shape=(), dtype=np.object_)  # PNG bytes
    else:
      image = tfds.features.Tensor(shape=(n, n), dtype=np.uint8)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": image,
            "label": tfds.features.ClassLabel(num_classes=2),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/drewlinsley/pathfinder",
        citation="Linsley et al., Learning long-range spatial dependencies with "
        "horizontal gated recurrent units, NeurIPS 2018; Tay et al., Long Range Arena, "
        "ICLR 2021.",
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.split_sizes is not None:
      root = os.path.join(dl_manager.download_dir, f"pathfinder_generated_{cfg.name}")
      pathfinder_write.generate_dataset(
          root, resolution=cfg.resolution, difficulty=cfg.difficulty,
          num_images=sum(cfg.split_sizes.values()), seed=cfg.seed,
          workers=cfg.generate_workers)
      base = find_pathfinder_dir(root, cfg.resolution)
    else:
      base = find_pathfinder_dir(os.fspath(dl_manager.manual_dir), cfg.resolution)
    difficulty_dir = os.path.join(base, DIFFICULTY_DIRS[cfg.difficulty])
    records = drop_empty_images(difficulty_dir, read_metadata(difficulty_dir))
    check_image_size(difficulty_dir, records, cfg.resolution)
    # Split what is left, as S4 does (its blacklist of the release's empty image is
    # applied before random_split): the sizes are S4's.
    parts = split_records(len(records), cfg.split_sizes)
    return {split: self._generate_examples(difficulty_dir, [records[i] for i in idx], split)
            for split, idx in parts.items()}

  def _generate_examples(self, difficulty_dir: str, records: list[Record], split: str):
    n = self.builder_config.resolution
    skipped = []
    for record in records:
      path = os.path.join(difficulty_dir, record.image_path)
      data = load_png(path, n)
      if data is None:
        skipped.append(path)
        continue
      image = data if n >= PNG_MIN_RESOLUTION else decode_image(data, n)
      key = f"{os.path.basename(difficulty_dir)}/{record.image_path}"
      yield key, {"image": image, "label": record.label}
    if skipped:
      logging.warning("pathfinder%d %s: skipped %d unreadable image(s) of %d, e.g. %s", n,
                      split, len(skipped), len(records), skipped[:3])


def make_builder(data_config: Any, resolution: int, difficulty: str) -> Pathfinder:
  """The builder ``config.data`` asks for (reads manual_dir, or generates)."""
  sizes = None
  if _field(data_config, "manual_dir") is None:
    sizes = {split: _field(data_config, f"num_{split}", LRA_SPLIT_SIZES[split])
             for split in SPLITS}
  builder_config = PathfinderConfig(
      resolution=resolution, difficulty=difficulty, split_sizes=sizes,
      seed=int(_field(data_config, "generate_seed", 0)),
      generate_workers=_field(data_config, "generate_workers"))
  if sizes is None:  # a registered config: pass it by name
    builder_config = builder_config.name
  return Pathfinder(config=builder_config, data_dir=_field(data_config, "data_dir"),
                    file_format="array_record")


def prepare(data_config: Any, resolution: int, difficulty: str) -> Pathfinder:
  """Builds the dataset if it is missing and returns its builder."""
  builder = make_builder(data_config, resolution, difficulty)
  manual_dir = _field(data_config, "manual_dir")
  cfg = builder.builder_config
  if manual_dir:
    base = find_pathfinder_dir(os.path.expanduser(manual_dir), resolution)
    source = provenance.manual_source(
        manual_dir, [os.path.join(base, DIFFICULTY_DIRS[difficulty])])
  else:
    source = provenance.generated_source(
        {"resolution": resolution, "difficulty": difficulty,
         "split_sizes": cfg.split_sizes, "seed": cfg.seed})
  provenance.prepare(builder, source, lambda: builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)))
  return builder
