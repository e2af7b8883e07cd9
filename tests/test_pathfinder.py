"""Pathfinder / Path-X: generator, official file layout, reader, TFDS builder, tasks."""
import logging
import os
import shutil

import numpy as np
from PIL import Image
from scipy import ndimage
import pytest

from configs import default
from data import pathfinder
from data import pathfinder_builder
from data import pathfinder_params
from data import pathfinder_render
from data import pathfinder_sample
from data import pathfinder_write
from data import tasks


def _config(tmp_path, task="pathfinder", resolution=32, difficulty="easy", **overrides):
  """``config.data`` of the default config; resolution and difficulty are the
  task's (``data.<task>.*``; resolution None keeps the task's default)."""
  cfg = default.get_config().data
  cfg.update(dict(task=task, data_dir=str(tmp_path / "tfds"), manual_dir=None,
                  num_train=12, num_validation=3, num_test=3, generate_workers=1))
  cfg.update(overrides)
  if resolution is not None:
    cfg[task].resolution = resolution
  cfg[task].difficulty = difficulty
  return cfg


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """A small release-like tree: lra_release/pathfinder32/curv_baseline, 3 batches."""
  root = tmp_path_factory.mktemp("release")
  out = pathfinder_write.generate_dataset(
      str(root / "lra_release"), resolution=32, difficulty="easy", num_images=30,
      images_per_batch=12, workers=2, chunk_size=5, seed=3, progress=False)
  return root, out


def _read_dir(path):
  files = {}
  for dirpath, _, names in os.walk(path):
    for name in names:
      full = os.path.join(dirpath, name)
      with open(full, "rb") as f:
        files[os.path.relpath(full, path)] = f.read()
  return files


class TestGenerator:

  def test_official_layout_and_metadata(self, release):
    _, out = release
    assert out.endswith(os.path.join("lra_release", "pathfinder32", "curv_baseline"))
    assert sorted(os.listdir(os.path.join(out, "imgs"))) == ["0", "1", "2"]
    assert sorted(os.listdir(os.path.join(out, "metadata"))) == ["0.npy", "1.npy", "2.npy"]
    count = 0
    for batch, size in [(0, 12), (1, 12), (2, 6)]:
      with open(os.path.join(out, "metadata", f"{batch}.npy")) as f:
        text = f.read()
      assert text.endswith("\n")  # LRA drops the last element of split("\n")
      lines = text.splitlines()
      assert len(lines) == size
      for i, line in enumerate(lines):
        fields = line.split(" ")  # LRA splits on single spaces
        # subdir, file, index, label, continuity, contour length, distractor length,
        # paddle length, thickness, margin, number of paddle contrasts
        assert fields[:3] == [f"imgs/{batch}", f"sample_{i}.png", str(i)]
        assert fields[3] in ("0", "1")
        assert [float(v) for v in fields[4:]] == [1.0, 6, 2, 2, 0.5, 1, 1]
        with Image.open(os.path.join(out, fields[0], fields[1])) as im:
          assert (im.mode, im.size, im.format) == ("L", (32, 32), "PNG")
        count += 1
    assert count == 30
    records = pathfinder_builder.read_metadata(out)
    assert [r.image_path for r in records[:2]] == ["imgs/0/sample_0.png",
                                                   "imgs/0/sample_1.png"]

  def test_labels_balanced_per_batch(self, release):
    records = pathfinder_builder.read_metadata(release[1])
    labels = np.array([r.label for r in records])
    assert labels[:12].sum() == 6 and labels[12:24].sum() == 6 and labels[24:].sum() == 3

  def test_deterministic_per_seed_not_per_worker_count(self, tmp_path):
    kw = dict(resolution=32, difficulty="intermediate", num_images=8, images_per_batch=5,
              chunk_size=3, progress=False)
    a = pathfinder_write.generate_dataset(str(tmp_path / "a"), seed=1, workers=1, **kw)
    b = pathfinder_write.generate_dataset(str(tmp_path / "b"), seed=1, workers=2, **kw)
    c = pathfinder_write.generate_dataset(str(tmp_path / "c"), seed=2, workers=1, **kw)
    assert _read_dir(a) == _read_dir(b)
    files_a, files_c = _read_dir(a), _read_dir(c)
    assert files_a.keys() == files_c.keys()
    assert files_a["imgs/0/sample_0.png"] != files_c["imgs/0/sample_0.png"]

  @pytest.mark.parametrize("resolution,difficulty,count", [(32, "easy", 24), (32, "hard", 8),
                                                          (128, "hard", 2)])
  def test_image_statistics(self, resolution, difficulty, count):
    params = pathfinder_params.official_params(resolution, difficulty)
    sampler = pathfinder_sample.ImageSampler(params, np.random.default_rng(0))
    lit = []
    for i in range(count):
      image, info = sampler(i % 2)
      assert image.shape == (resolution, resolution) and image.dtype == np.uint8
      assert image.max() == 255  # min-max scaled like scipy.misc.imsave
      lit.append(np.mean(image > 25))
      (y0, x0), (y1, x1) = info["markers"]
      assert (y0, x0) != (y1, x1)
      for y, x in info["markers"]:  # both markers are drawn
        assert image[y, x] > 60, (info, image[y, x])
      assert info["num_paddles"] >= 2 * params.contour_length
    # Official images: ~10-20% of pixels lit at 32, ~5% at 128.
    low, high = (0.05, 0.35) if resolution == 32 else (0.02, 0.12)
    assert low < np.mean(lit) < high, np.mean(lit)

  def test_batched_targets_match_the_reference_loop(self):
    """Batched two-target sampler vs the original one-attempt-at-a-time loop."""
    params = pathfinder_params.official_params(32, "easy")
    stats = {}
    for reference in (False, True):
      sampler = pathfinder_sample.ImageSampler(params, np.random.default_rng(int(reference)))
      rows = []
      for i in range(300):
        image, info = sampler(i % 2, reference=reference)
        (y0, x0), (y1, x1) = info["markers"]
        rows.append((np.hypot(y1 - y0, x1 - x0), np.mean(image > 25),
                     info["num_paddles"]))
      stats[reference] = np.array(rows)
    fast, ref = stats[False], stats[True]
    sem = np.sqrt(fast.var(0) / len(fast) + ref.var(0) / len(ref))
    z = np.abs(fast.mean(0) - ref.mean(0)) / sem
    assert (z < 4).all(), (fast.mean(0), ref.mean(0), z)

  def test_seed_tables_match_brute_force(self):
    """Dead first paddles and target seed boxes against explicit occupancy maps."""
    params = pathfinder_params.official_params(32, "easy")
    bank = pathfinder_render.stamp_bank(params, params.paddle_margins[0])
    assert 0 < sum(bank.seed_dead) < 360
    n, lo = 32, 2 * params.seed_distance
    occupied = np.ones((n, n), bool)
    occupied[lo:n - lo, lo:n - lo] = False
    ys, xs = np.mgrid[:n, :n]
    for k in range(0, 360, 5):
      off = bank.seed_offsets[k]
      py = ys[..., None] + off[:, 0]
      px = xs[..., None] + off[:, 1]
      inside = (py >= 0) & (py < n) & (px >= 0) & (px < n)
      # cv2.dilate gives -DBL_MAX where every struct pixel is outside the image.
      assert bank.seed_dead[k] == (~inside.any(-1)).any(), k
      if bank.seed_dead[k]:
        continue  # no free position at all, whatever the box says
      blocked = (inside & occupied[py.clip(0, n - 1), px.clip(0, n - 1)]).any(-1)
      y0, y1, x0, x1 = bank.target_box[k]
      box = np.zeros((n, n), bool)
      box[y0:max(y0, y1), x0:max(x0, x1)] = True
      np.testing.assert_array_equal(box, ~blocked, err_msg=f"orientation {k}")

  def test_rejects_bad_arguments(self):
    with pytest.raises(ValueError, match="resolution=48"):
      pathfinder_params.official_params(48, "easy")
    with pytest.raises(ValueError, match="difficulty='medium'"):
      pathfinder_params.official_params(32, "medium")
    params = pathfinder_params.official_params(32, "easy")
    with pytest.raises(ValueError, match="label=2"):
      pathfinder_sample.generate_image(params, 2, np.random.default_rng(0))


class TestReader:

  def test_find_pathfinder_dir_layouts(self, tmp_path):
    for case, sub in enumerate(["pathfinder64", "lra_release/pathfinder64",
                                "lra_release/lra_release/pathfinder64"]):
      root = tmp_path / f"case{case}"
      (root / sub / "curv_baseline").mkdir(parents=True)
      found = pathfinder_builder.find_pathfinder_dir(str(root), 64)
      assert found == str(root / sub)
      assert pathfinder_builder.find_pathfinder_dir(found, 64) == found
    with pytest.raises(FileNotFoundError, match="no pathfinder64 folder"):
      pathfinder_builder.find_pathfinder_dir(str(tmp_path / "nothing"), 64)

  def test_malformed_metadata_line_names_file_and_line(self, tmp_path):
    meta = tmp_path / "curv_baseline" / "metadata"
    meta.mkdir(parents=True)
    (meta / "0.npy").write_text("imgs/0 sample_0.png 0 1 1.0 6\n"
                                "imgs/0 sample_1.png\n")
    with pytest.raises(ValueError, match=r"0\.npy:2: malformed pathfinder metadata"):
      pathfinder_builder.read_metadata(str(tmp_path / "curv_baseline"))
    (meta / "0.npy").write_text("imgs/0 sample_0.png 0 7\n")
    with pytest.raises(ValueError, match=r"0\.npy:1: pathfinder label 7"):
      pathfinder_builder.read_metadata(str(tmp_path / "curv_baseline"))

  def test_binary_npy_metadata_is_accepted(self, tmp_path):
    meta = tmp_path / "metadata"
    meta.mkdir()
    rows = np.array([["imgs/0", "sample_0.png", "0", "1", "1.8"],
                     ["imgs/0", "sample_1.png", "1", "0", "1.8"]])
    np.save(meta / "0.npy", rows)  # what snakes2.py itself writes
    records = pathfinder_builder.read_metadata(str(tmp_path))
    assert [(r.image_path, r.label) for r in records] == [("imgs/0/sample_0.png", 1),
                                                          ("imgs/0/sample_1.png", 0)]

  def test_builder_from_manual_dir_skips_unreadable(self, release, tmp_path, caplog):
    root, out = release
    broken = tmp_path / "release"
    shutil.copytree(root, broken)  # keep the shared fixture intact
    empty = broken / "lra_release" / "pathfinder32" / "curv_baseline" / "imgs" / "1" / "sample_4.png"
    empty.write_bytes(b"")  # like pathfinder32/curv_baseline/imgs/0/sample_172.png
    cfg = _config(tmp_path, manual_dir=str(broken))
    with caplog.at_level(logging.WARNING):
      sources = tasks.get_task("pathfinder").sources(cfg)
    sizes = {k: len(v) for k, v in sources.items()}
    # 30 records, one empty: dropped before the split, as S4's blacklist, so the
    # sizes are S4's for 29 images: int(0.1 * 29) = 2 validation, 2 test, 25 train.
    assert sizes == {"train": 25, "validation": 2, "test": 2}
    assert "dropped 1 missing or empty image(s) of 30" in caplog.text
    # Every element matches its PNG file.
    element = sources["test"][0]
    assert element["image"].shape == (32, 32) and element["image"].dtype == np.uint8
    assert element["label"] in (0, 1)


  def test_pathx_pointed_at_pathfinder32_says_what_it_expected(self, release, tmp_path):
    """Path-X reads pathfinder128: a pathfinder32 folder is an error that names
    both, not a TFDS "No examples were yielded" after skipping every image."""
    root, out = release
    folder32 = os.path.dirname(out)  # .../lra_release/pathfinder32
    with pytest.raises(ValueError, match=r"pathfinder32 folder \(32x32 images\).*"
                       r"reads pathfinder128 \(128x128"):
      tasks.get_task("pathx").sources(_config(tmp_path, task="pathx", resolution=None,
                                              manual_dir=folder32))
    # The same images under a folder name that does not say their resolution.
    renamed = tmp_path / "images"
    shutil.copytree(folder32, renamed)
    with pytest.raises(ValueError, match=r"is 32x32, but this task reads "
                       r"pathfinder128 \(128x128"):
      tasks.get_task("pathx").sources(_config(tmp_path, task="pathx", resolution=None,
                                              manual_dir=str(renamed)))
    # A release with pathfinder32 only: the folders tried and what is there.
    with pytest.raises(FileNotFoundError, match=r"no pathfinder128 folder.*"
                       r"holds \['pathfinder32'\]"):
      pathfinder_builder.find_pathfinder_dir(str(root / "lra_release"), 128)

  def test_split_sizes_follow_s4_after_dropping_empty_images(self, tmp_path):
    records = [pathfinder_builder.Record(f"imgs/0/sample_{i}.png", i % 2, "m", i)
               for i in range(200)]
    os.makedirs(tmp_path / "imgs" / "0")
    for i, r in enumerate(records):
      (tmp_path / r.image_path).write_bytes(b"" if i in (3, 17) else b"png")
    kept = pathfinder_builder.drop_empty_images(str(tmp_path), records)
    assert len(kept) == 198 and records[3] not in kept and records[17] not in kept
    parts = pathfinder_builder.split_records(len(kept))
    # S4: val = test = int(0.1 * 198) = 19, train the rest; disjoint, complete.
    assert {k: len(v) for k, v in parts.items()} == {"train": 160, "validation": 19,
                                                    "test": 19}
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(198))
    # The release's 199,999 readable pathfinder32 easy images.
    parts = pathfinder_builder.split_records(199_999)
    assert {k: len(v) for k, v in parts.items()} == {"train": 160_001,
                                                    "validation": 19_999,
                                                    "test": 19_999}


class TestTask:

  def test_registered_infos(self, tmp_path):
    info = tasks.get_task("pathfinder").info(_config(tmp_path, resolution=64))
    assert info == tasks.TaskInfo(num_classes=2, max_length=4096, input_kind="continuous",
                                  input_channels=1)
    info = tasks.get_task("pathx").info(_config(tmp_path))
    assert info.max_length == 128 * 128 and info.input_channels == 1
    assert tasks.get_task("pathx") is pathfinder.PATHX
    assert tasks.get_task("pathfinder") is pathfinder.PATHFINDER
    with pytest.raises(ValueError, match="resolution=48"):
      tasks.get_task("pathfinder").info(_config(tmp_path, resolution=48))

  def test_preprocess_normalises_like_s4(self, tmp_path):
    cfg = _config(tmp_path)
    pixels = np.zeros((32, 32), np.uint8)
    pixels[0, 1], pixels[3, 2] = 255, 51
    out = tasks.get_task("pathfinder").preprocess({"image": pixels, "label": 1}, cfg)
    assert out["inputs"].shape == (1024, 1) and out["inputs"].dtype == np.float32
    assert out["mask"].shape == (1024,) and out["mask"].dtype == bool and out["mask"].all()
    assert out["targets"].dtype == np.int32 and out["targets"].shape == () and out["targets"] == 1
    # ToTensor (/255), Normalize(0.5, 0.5); row-major sequence.
    np.testing.assert_allclose(out["inputs"][1, 0], 1.0)
    np.testing.assert_allclose(out["inputs"][3 * 32 + 2, 0], 51 / 255 * 2 - 1, rtol=1e-6)
    np.testing.assert_allclose(out["inputs"][0, 0], -1.0)

  def test_generated_end_to_end_pathfinder_and_pathx(self, tmp_path):
    cfg = _config(tmp_path, difficulty="intermediate", generate_workers=2)
    sources = tasks.get_task("pathfinder").sources(cfg)
    assert {k: len(v) for k, v in sources.items()} == {"train": 12, "validation": 3,
                                                      "test": 3}
    labels = [int(sources[s][i]["label"]) for s in sources for i in range(len(sources[s]))]
    assert sum(labels) == 9  # balanced
    out = tasks.get_task("pathfinder").preprocess(sources["train"][0], cfg)
    assert out["inputs"].shape == (1024, 1)
    assert -1.0 <= out["inputs"].min() and out["inputs"].max() == 1.0
    # Path-X: 128 x 128, stored as PNG bytes.
    cfg = _config(tmp_path, task="pathx", difficulty="hard", num_train=1,
                  num_validation=1, num_test=1, resolution=None)
    sources = tasks.get_task("pathx").sources(cfg)
    element = sources["validation"][0]
    assert isinstance(element["image"], bytes)
    out = tasks.get_task("pathx").preprocess(element, cfg)
    assert out["inputs"].shape == (128 * 128, 1) and out["mask"].shape == (128 * 128,)
    assert out["inputs"].max() == 1.0


def _paddle_pixels(bank, n, stamp, place, threshold=0.1):
  """bool [n, n]: the pixels of one paddle's line alone."""
  canvas = pathfinder_render.Canvas(n, bank.pad)
  canvas.paste(canvas.image, bank.all_lines[stamp], int(place[0]), int(place[1]),
               bank.half)
  return canvas.view(canvas.image) > threshold


@pytest.mark.parametrize("resolution,difficulty,count", [(32, "easy", 36),
                                                          (64, "intermediate", 12)])
def test_markers_are_the_ends_of_one_contour_iff_the_label_is_1(
    resolution, difficulty, count):
  """Connectivity as the generator draws it. The contours are dashed (a paddle's
  line does not touch the next one's: one contour is several pixel components),
  so pixel connectivity is checked per contour with its gaps bridged: each target
  contour, drawn alone and dilated by the paddle margin + 1, is ONE component,
  and is drawn in the image. Each marker dot is drawn on an end paddle of a
  contour (its first paddle's tail, its last paddle's head), and the two dots are
  the two ends of one contour exactly when the label is 1 (a flipped or random
  label fails). As in the original generator, the first target's last paddle
  never joins the occupancy, so the second target may end on it: then both
  contours end at that dot, which is counted and must stay rare."""
  params = pathfinder_params.official_params(resolution, difficulty)
  sampler = pathfinder_sample.ImageSampler(params, np.random.default_rng(21))
  shared_ends = 0
  for index in range(count):
    label = index % 2
    image, info = sampler(label)
    bank = pathfinder_render.stamp_bank(params, info["margin"])
    bridge = np.ones((2 * info["margin"] + 3,) * 2, bool)  # margin + 1 each side
    firsts, lasts = [], []
    for stamps, places in info["contours"]:
      assert len(stamps) == params.contour_length
      drawn = np.zeros((resolution, resolution), bool)
      for stamp, place in zip(stamps, places):
        drawn |= _paddle_pixels(bank, resolution, stamp, place)
      bridged = ndimage.label(ndimage.binary_dilation(drawn, structure=bridge))[1]
      pieces = ndimage.label(drawn, structure=np.ones((3, 3)))[1]
      assert bridged == 1, (pieces, bridged)
      assert (image[drawn] > 0).all()  # the contour is in the image
      firsts.append(_paddle_pixels(bank, resolution, stamps[0], places[0]))
      lasts.append(_paddle_pixels(bank, resolution, stamps[-1], places[-1]))
    (ya, xa), (yb, xb) = info["markers"]
    assert image[ya, xa] > 60 and image[yb, xb] > 60  # both dots drawn
    # The contours whose first paddle starts / last paddle ends at a dot.
    starts = [i for i in range(2) if firsts[i][ya, xa]
              and tuple(info["contours"][i][1][0]) == (ya, xa)]
    ends = [i for i in range(2) if lasts[i][yb, xb]
            and tuple(info["contours"][i][1][-1]) == (yb, xb)]
    assert len(starts) == 1 and len(ends) >= 1, (starts, ends, info["markers"])
    if len(ends) == 2:
      shared_ends += 1
      continue
    connected = starts == ends
    assert connected == (label == 1), (index, label, info["markers"])
  assert shared_ends <= count // 4, shared_ends
