"""Pathfinder / Path-X: generator, official file layout, reader, TFDS builder, tasks."""
import logging
import os
import shutil

import ml_collections
import numpy as np
from PIL import Image
import pytest

from data import pathfinder
from data import pathfinder_gen
from data import tasks


def _config(tmp_path, **overrides):
  cfg = dict(task="pathfinder", data_dir=str(tmp_path / "tfds"), manual_dir=None,
             num_train=12, num_validation=3, num_test=3, resolution=32,
             difficulty="easy", generate_workers=1, seed=0)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """A small release-like tree: lra_release/pathfinder32/curv_baseline, 3 batches."""
  root = tmp_path_factory.mktemp("release")
  out = pathfinder_gen.generate_dataset(
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
    records = pathfinder.read_metadata(out)
    assert [r.image_path for r in records[:2]] == ["imgs/0/sample_0.png",
                                                   "imgs/0/sample_1.png"]

  def test_labels_balanced_per_batch(self, release):
    records = pathfinder.read_metadata(release[1])
    labels = np.array([r.label for r in records])
    assert labels[:12].sum() == 6 and labels[12:24].sum() == 6 and labels[24:].sum() == 3

  def test_deterministic_per_seed_not_per_worker_count(self, tmp_path):
    kw = dict(resolution=32, difficulty="intermediate", num_images=8, images_per_batch=5,
              chunk_size=3, progress=False)
    a = pathfinder_gen.generate_dataset(str(tmp_path / "a"), seed=1, workers=1, **kw)
    b = pathfinder_gen.generate_dataset(str(tmp_path / "b"), seed=1, workers=2, **kw)
    c = pathfinder_gen.generate_dataset(str(tmp_path / "c"), seed=2, workers=1, **kw)
    assert _read_dir(a) == _read_dir(b)
    files_a, files_c = _read_dir(a), _read_dir(c)
    assert files_a.keys() == files_c.keys()
    assert files_a["imgs/0/sample_0.png"] != files_c["imgs/0/sample_0.png"]

  @pytest.mark.parametrize("resolution,difficulty,count", [(32, "easy", 24), (32, "hard", 8),
                                                          (128, "hard", 2)])
  def test_image_statistics(self, resolution, difficulty, count):
    params = pathfinder_gen.official_params(resolution, difficulty)
    sampler = pathfinder_gen.ImageSampler(params, np.random.default_rng(0))
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
    params = pathfinder_gen.official_params(32, "easy")
    stats = {}
    for reference in (False, True):
      sampler = pathfinder_gen.ImageSampler(params, np.random.default_rng(int(reference)))
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
    params = pathfinder_gen.official_params(32, "easy")
    bank = pathfinder_gen._stamp_bank(params, params.paddle_margins[0])
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
      pathfinder_gen.official_params(48, "easy")
    with pytest.raises(ValueError, match="difficulty='medium'"):
      pathfinder_gen.official_params(32, "medium")
    params = pathfinder_gen.official_params(32, "easy")
    with pytest.raises(ValueError, match="label=2"):
      pathfinder_gen.generate_image(params, 2, np.random.default_rng(0))


class TestReader:

  def test_find_pathfinder_dir_layouts(self, tmp_path):
    for case, sub in enumerate(["pathfinder64", "lra_release/pathfinder64",
                                "lra_release/lra_release/pathfinder64"]):
      root = tmp_path / f"case{case}"
      (root / sub / "curv_baseline").mkdir(parents=True)
      found = pathfinder.find_pathfinder_dir(str(root), 64)
      assert found == str(root / sub)
      assert pathfinder.find_pathfinder_dir(found, 64) == found
    with pytest.raises(FileNotFoundError, match="no pathfinder64 directory"):
      pathfinder.find_pathfinder_dir(str(tmp_path / "nothing"), 64)

  def test_malformed_metadata_line_names_file_and_line(self, tmp_path):
    meta = tmp_path / "curv_baseline" / "metadata"
    meta.mkdir(parents=True)
    (meta / "0.npy").write_text("imgs/0 sample_0.png 0 1 1.0 6\n"
                                "imgs/0 sample_1.png\n")
    with pytest.raises(ValueError, match=r"0\.npy:2: malformed pathfinder metadata"):
      pathfinder.read_metadata(str(tmp_path / "curv_baseline"))
    (meta / "0.npy").write_text("imgs/0 sample_0.png 0 7\n")
    with pytest.raises(ValueError, match=r"0\.npy:1: pathfinder label 7"):
      pathfinder.read_metadata(str(tmp_path / "curv_baseline"))

  def test_binary_npy_metadata_is_accepted(self, tmp_path):
    meta = tmp_path / "metadata"
    meta.mkdir()
    rows = np.array([["imgs/0", "sample_0.png", "0", "1", "1.8"],
                     ["imgs/0", "sample_1.png", "1", "0", "1.8"]])
    np.save(meta / "0.npy", rows)  # what snakes2.py itself writes
    records = pathfinder.read_metadata(str(tmp_path))
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
    # 30 records: int(0.1 * 30) = 3 validation, 3 test, 24 train; one is skipped.
    assert sum(sizes.values()) == 29
    assert sizes["validation"] in (2, 3) and sizes["test"] in (2, 3)
    assert sizes["train"] in (23, 24)
    assert "skipped 1 unreadable image(s)" in caplog.text
    # Every element matches its PNG file.
    element = sources["test"][0]
    assert element["image"].shape == (32, 32) and element["image"].dtype == np.uint8
    assert element["label"] in (0, 1)


class TestTask:

  def test_registered_infos(self, tmp_path):
    info = tasks.get_task("pathfinder").info(_config(tmp_path, resolution=64))
    assert info == tasks.TaskInfo(num_classes=2, max_length=4096, input_kind="continuous",
                                  input_channels=1)
    info = tasks.get_task("pathx").info(_config(tmp_path))
    assert info.max_length == 128 * 128 and info.input_channels == 1
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
