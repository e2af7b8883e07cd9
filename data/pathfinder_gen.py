"""A fast Pathfinder / Path-X image generator (Linsley et al. 2018; LRA, Tay et al. 2021).

Follows the procedure of the official generator (github.com/drewlinsley/pathfinder,
``snakes.py`` / ``snakes2.py``), re-implemented for speed in numpy:

* A *paddle* is a line of ``paddle_length`` pixels and ``paddle_thickness`` drawn at
  ``antialias_scale`` times the resolution and Lanczos-downsampled; its *mask* is the
  same line dilated by a disk of radius ``margin`` (also downsampled, values in [0, 1]).
  Paddle orientations come from two finite sets (integer degrees for the first paddle of
  a contour, the integer offsets on a circle of radius ``length + margin`` for every
  following one), so every stamp is rendered once per generator and pasted afterwards.
* Two *target* contours start ``seed_distance`` apart near the centre and grow,
  alternately, by ``contour_length - 1`` paddles. A new paddle is placed on the circle of
  radius ``length + margin`` around a pivot ``margin`` beyond the previous paddle's end;
  the candidate points are weighted by ``cos(min(continuity * turn, pi / 2))**2`` times
  one minus the margin-dilated occupancy, and a sample is rejected (3 tries) when its
  mask overlaps the occupancy (``max(mask + paddle_mask) >= 1.8``). A failed target
  contour restarts both contours.
* ``num_distractor_snakes`` distractor contours of ``contour_length // 3`` paddles are
  seeded uniformly at free positions (the paddle mask must not touch the occupancy) and
  grown by the same rule; each gets 5 tries and is skipped if all fail.
* Two circles (``marker_radius``, anti-aliased the same way) mark the first-paddle end of
  one target and the last-paddle end of the same target (label 1, "connected") or of the
  other target (label 0).
* The image is min-max scaled to uint8 as ``scipy.misc.imsave`` did when the LRA data was
  made (so the brightest stroke is 255).

Speed. The official loop restarts both targets whenever one paddle fails: ~20 restarts per
Pathfinder-32 easy image, ~300 per Path-X (128, contour length 14) image, which is why it
makes ~0.2-0.3 Path-X images per CPU second. Here (1) every stamp is pre-rendered, (2)
hundreds of independent two-target attempts grow in lockstep on uint8 occupancy arrays
(``_sample_targets``; each surviving attempt is a draw of the same conditional
distribution), with a margin-dilated copy of the occupancy so that candidate weights are
one gather, and sparse stamp pastes, (3) seed positions are drawn by rejection sampling
(uniform over the free positions, with the exact free map as fallback). The one-attempt
loop is kept (``reference=True``) and tested against. Quirks of the original that shape
its statistics and are kept: cv2.dilate's -DBL_MAX border makes ~92% (32 px) / ~74%
(64 px) of first-paddle orientations impossible (``_StampBank.seed_dead``); the first
target's last paddle never joins the occupancy.

Labels are balanced per batch (the original draws them at random); the images depend on
the seed and the batch / chunk sizes, not on the number of workers.

Output layout (what LRA's release holds and its reader expects)::

  <root>/pathfinder<N>/<curv_baseline|curv_contour_length_9|curv_contour_length_14>/
      imgs/<batch>/sample_<i>.png       grayscale uint8 PNG, i restarts at 0 per batch
      metadata/<batch>.npy             text despite the extension; one line per image:
        imgs/<batch> sample_<i>.png <i> <label> <continuity> <contour_length>
        <distractor_length> <paddle_length> <paddle_thickness> <margin> <num_contrasts>
  (the columns of ``snakes2.accumulate_meta``).
"""
import dataclasses
import functools
import math
import multiprocessing
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

DIFFICULTIES = {
    "easy": ("curv_baseline", 6),
    "intermediate": ("curv_contour_length_9", 9),
    "hard": ("curv_contour_length_14", 14),
}


@dataclasses.dataclass(frozen=True)
class PathfinderParams:
  """Generator parameters (names follow ``snakes2_wrapper.Args``)."""
  resolution: int
  contour_length: int
  padding: int
  antialias_scale: int
  paddle_margins: tuple[int, ...]  # one is drawn per image
  seed_distance: int
  marker_radius: float
  paddle_length: int
  paddle_thickness: float
  continuity: float
  distractor_length: int
  num_distractor_snakes: int
  snake_contrasts: tuple[float, ...] = (1.0,)
  paddle_contrasts: tuple[float, ...] = (1.0,)
  max_paddle_retrial: int = 2  # 3 tries per paddle
  max_distractor_contour_retrial: int = 4  # 5 tries per distractor contour
  stop_with_availability: float = 0.01  # distractors stop below 1% free pixels

  def __post_init__(self):
    if self.paddle_thickness * self.antialias_scale != round(
        self.paddle_thickness * self.antialias_scale):
      raise ValueError(f"{self.paddle_thickness=} * {self.antialias_scale=} must be an"
                       " integer line width")


def official_params(resolution: int, difficulty: str) -> PathfinderParams:
  """The parameters LRA used for ``pathfinder<resolution>``, one difficulty.

  From the Pathfinder32/64/128/256 docstrings in LRA's ``lra_benchmarks/data/pathfinder.py``
  (the settings on top of ``snakes2_wrapper.py``; defaults there: padding 22,
  seed_distance 27, paddle_length 5, contrasts [1.]); ``distractor_length =
  contour_length // 3`` and ``num_distractor_snakes = budget // distractor_length``
  (Python 2 integer division in the original scripts); ``use_single_paddles = False``
  (snakes2_wrapper.py: no single-paddle distractors). The contour length is the
  difficulty's (the wrapper loops over 6, 9, 14 whatever the docstring's 14 says).
  """
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"{difficulty=} is not one of {sorted(DIFFICULTIES)}")
  contour_length = DIFFICULTIES[difficulty][1]
  distractor_length = contour_length // 3
  if resolution == 32:
    kw = dict(padding=1, antialias_scale=2, paddle_margins=(1,), seed_distance=7,
              marker_radius=1.5, paddle_length=2, paddle_thickness=0.5, continuity=1.0,
              snake_contrasts=(2.0,), paddle_contrasts=(0.75,), budget=20)
  elif resolution == 64:
    kw = dict(padding=1, antialias_scale=2, paddle_margins=(1,), seed_distance=12,
              marker_radius=2.5, paddle_length=5, paddle_thickness=1.0, continuity=1.8,
              snake_contrasts=(0.8,), budget=22)
  elif resolution == 128:
    kw = dict(padding=1, antialias_scale=2, paddle_margins=(2, 3), seed_distance=20,
              marker_radius=3.0, paddle_length=5, paddle_thickness=1.5, continuity=1.8,
              snake_contrasts=(0.9,), budget=35)
  elif resolution == 256:
    kw = dict(padding=22, antialias_scale=2, paddle_margins=(3,), seed_distance=27,
              marker_radius=5.0, paddle_length=5, paddle_thickness=2.0, continuity=1.8,
              snake_contrasts=(1.0,), budget=30)
  else:
    raise ValueError(f"{resolution=} is not one of 32, 64, 128, 256")
  budget = kw.pop("budget")
  return PathfinderParams(resolution=resolution, contour_length=contour_length,
                          distractor_length=distractor_length,
                          num_distractor_snakes=budget // distractor_length, **kw)


# ---------------------------------------------------------------------------------------
# Stamps.


def _ceil_translate(dy: float, dx: float, angle: float, dist: float) -> tuple[int, int]:
  # snakes.translate_coord: positions are rounded up.
  return (int(math.ceil(dy + float(dist) * math.sin(angle))),
          int(math.ceil(dx + float(dist) * math.cos(angle))))


def _flip(angle: float) -> float:
  return angle + math.pi if angle < 0 else angle - math.pi


def _disk(radius: float) -> np.ndarray:
  r = int(radius)
  y, x = np.ogrid[-r:r + 1, -r:r + 1]
  return x**2 + y**2 <= radius**2


def _render_paddle(angle, length, thickness, margin, aa):
  """Line and margin mask of one paddle starting at the stamp centre (uint8 [S, S]).

  As ``snakes.draw_line_n_mask``: drawn at ``aa`` x with PIL, dilated by a disk of radius
  ``margin * aa``, both Lanczos-resized to ``S = 2 R + 1``, ``R = length + ceil(thickness)
  + margin``.
  """
  radius = length + int(math.ceil(thickness)) + margin
  big = radius * 2 * aa + 1
  centre = radius * aa
  head = _ceil_translate(centre, centre, angle, length * aa)
  blown = Image.new("L", (big, big), 0)
  ImageDraw.Draw(blown).line([(centre, centre), (head[1], head[0])], fill=255,
                             width=int(round(thickness * aa)))
  size = (2 * radius + 1, 2 * radius + 1)
  line = np.asarray(blown.resize(size, Image.Resampling.LANCZOS))
  dilated = ndimage.binary_dilation(np.asarray(blown) > 0, structure=_disk(margin * aa))
  mask = np.asarray(Image.fromarray(dilated.astype(np.uint8) * 255).resize(
      size, Image.Resampling.LANCZOS))
  return line, mask


def _clip_window(r: int, c: int, half: int, n: int):
  """Slices of an n x n canvas and of a (2 half + 1)^2 stamp centred at (r, c)."""
  r0, r1, c0, c1 = r - half, r + half + 1, c - half, c + half + 1
  cr0, cr1, cc0, cc1 = max(r0, 0), min(r1, n), max(c0, 0), min(c1, n)
  if cr0 >= cr1 or cc0 >= cc1:
    return None
  return ((slice(cr0, cr1), slice(cc0, cc1)),
          (slice(cr0 - r0, cr1 - r0), slice(cc0 - c0, cc1 - c0)))


class _StampBank:
  """Every paddle stamp for one (parameters, margin), rendered once."""

  def __init__(self, p: PathfinderParams, margin: int):
    length, aa = p.paddle_length, p.antialias_scale
    self.half = length + int(math.ceil(p.paddle_thickness)) + margin
    # First paddles: integer degrees in [-180, 180) (snakes.seed_snake).
    self.seed_angles = np.arange(-180, 180) * math.pi / 180
    seed_lines, seed_masks, self.seed_offsets, self.seed_dead = [], [], [], []
    self.seed_head, self.seed_pivot = [], []
    grid = 2 * (length + margin) + 1
    grid_head = length + margin + 1
    anchor = length + margin
    for a in self.seed_angles:
      line, mask = _render_paddle(a, length, p.paddle_thickness, margin, aa)
      seed_lines.append(line)
      seed_masks.append(mask)
      # The "struct" that seed_snake dilates the occupancy with: the fully-on pixels of
      # the paddle mask placed at grid_head of a (2 (length + margin) + 1)^2 grid, used
      # with cv2.dilate's centre anchor.
      struct = np.zeros((grid, grid), np.uint8)
      win = _clip_window(grid_head, grid_head, self.half, grid)
      struct[win[0]] = mask[win[1]]
      ys, xs = np.nonzero(struct == 255)
      offsets = np.stack([ys - anchor, xs - anchor], axis=1)
      self.seed_offsets.append(offsets)
      # cv2.dilate (float64 input) leaves -DBL_MAX where the whole struct falls outside
      # the image, and snakes.find_available_coordinates then reports no free position
      # at all. That happens at a corner pixel whenever some closed quadrant around the
      # anchor holds no struct pixel: such a first paddle can never be placed.
      dy, dx = offsets[:, 0], offsets[:, 1]
      self.seed_dead.append(not all(np.any((sy * dy >= 0) & (sx * dx >= 0))
                                    for sy in (1, -1) for sx in (1, -1)))
      head = _ceil_translate(0, 0, a, length)
      self.seed_head.append(head)
      # Head and pivot (margin behind the tail) relative to the tail (seed_snake).
      self.seed_pivot.append(_ceil_translate(head[0], head[1], _flip(a), length + margin))
    self.seed_lines = np.stack(seed_lines).astype(np.float32) / 255
    self.seed_masks = np.stack(seed_masks).astype(np.float32) / 255
    # Extensions: the integer points on the circle of radius length + margin around the
    # pivot, one sample per pixel of arc (snakes.get_coords_cmf).
    step = length + margin
    deg_per_pixel = 360.0 / (2 * step * math.pi)
    theta = np.arange(0, 360, deg_per_pixel) * np.pi / 180
    offsets = np.stack([np.floor(step * np.sin(theta)),
                        np.floor(step * np.cos(theta))], axis=1).astype(np.int64)
    self.cand_offsets = np.unique(offsets, axis=0)
    self.cand_angles = np.arctan2(self.cand_offsets[:, 0], self.cand_offsets[:, 1])
    cand_lines, cand_masks = [], []
    for a in self.cand_angles:
      # The new paddle is drawn from the sampled head back towards the pivot.
      line, mask = _render_paddle(_flip(float(a)), length, p.paddle_thickness, margin, aa)
      cand_lines.append(line)
      cand_masks.append(mask)
    self.cand_lines = np.stack(cand_lines).astype(np.float32) / 255
    self.cand_masks = np.stack(cand_masks).astype(np.float32) / 255
    # Continuity weights for every previous orientation (seed angles, then candidates).
    prev = np.concatenate([self.seed_angles, self.cand_angles])
    diff = np.abs(self.cand_angles[None, :] - prev[:, None])
    delta = np.minimum(np.minimum(diff, 2 * np.pi - diff) * p.continuity, 0.5 * np.pi)
    self.weights = np.maximum(np.cos(delta), 0)**2  # [360 + K, K]
    # Margin dilation evaluated at the candidates: the disk of radius margin around each.
    dy, dx = np.nonzero(_disk(margin))
    disk = np.stack([dy, dx], axis=1) - margin
    self.cand_disk = self.cand_offsets[:, None, :] + disk[None, :, :]  # [K, D, 2]
    # Extensions gather around pivots that may lie up to one step outside the image.
    self.pad = int(2 * np.abs(self.cand_disk).max() +
                   max(np.abs(o).max() for o in self.seed_offsets)) + 2
    self._batched(p, margin)

  def _batched(self, p: PathfinderParams, margin: int) -> None:
    """Tables for _sample_targets: stamp id = state id (seeds 0..359, then candidates)."""
    n, half = p.resolution, self.half
    angles = np.concatenate([self.seed_angles, self.cand_angles])
    dist = p.paddle_length + 2 * margin
    # Next pivot = previous pivot moved (length + 2 margin) along the last orientation.
    self.step_offsets = np.stack([np.ceil(dist * np.sin(angles)),
                                  np.ceil(dist * np.cos(angles))], axis=1).astype(np.int64)
    self.all_lines = np.concatenate([self.seed_lines, self.cand_lines])
    self.all_masks = masks = np.concatenate([self.seed_masks, self.cand_masks])
    masks_u8 = np.rint(masks * 255).astype(np.uint8)
    disk = _disk(margin)
    dilated = np.zeros((len(masks),) + (2 * (half + margin) + 1,) * 2, np.uint8)
    for dy, dx in zip(*np.nonzero(disk)):
      view = dilated[:, dy:dy + 2 * half + 1, dx:dx + 2 * half + 1]
      np.maximum(view, masks_u8, out=view)

    def sparse(stamps, lo, centre):
      counts = (stamps >= lo).reshape(len(stamps), -1).sum(1)
      width = max(int(counts.max()), 1)
      # Unused slots point outside every stamp (value 0), so that no duplicate index
      # of a real pixel can undo its write in a fancy-indexed assignment.
      offsets = np.full((len(stamps), width, 2), -(half + margin + 1), np.int64)
      values = np.zeros((len(stamps), width), np.int16)
      for i, stamp in enumerate(stamps):
        ys, xs = np.nonzero(stamp >= lo)
        offsets[i, :len(ys)] = np.stack([ys - centre, xs - centre], axis=1)
        values[i, :len(ys)] = stamp[ys, xs]
      return offsets, values

    # Batched occupancy arrays are flat [attempt * size * size] with a pad of half +
    # margin + 1 around the image; sparse stamps hold flat offsets into them.
    self.batch_pad = pad = half + margin + 1
    self.batch_size = size = n + 2 * pad

    def flat(sparse_):
      return ((sparse_[0][..., 0] * size + sparse_[0][..., 1]).astype(np.int32),
              sparse_[1].astype(np.uint8))

    # Only occupancy >= 204 / 255 can make mask + paddle >= 1.8, so the batched mask
    # keeps those pixels; the dilated copy (candidate weights) keeps every pixel.
    self.mask_sparse = flat(sparse(masks_u8, 204, half))
    self.dilated_sparse = flat(sparse(dilated, 1, half + margin))
    self.collide_sparse = flat(sparse(masks_u8, 204, half))
    in_image = np.zeros((size, size), bool)
    in_image[pad:pad + n, pad:pad + n] = True
    self.in_image = in_image.reshape(-1)
    # Target seeds: the occupancy is the padding plus a 2 * seed_distance border, so the
    # free tails of orientation k form a box (all struct pixels inside the inner square).
    lo = max(2 * p.seed_distance, p.padding)
    hi = n - lo
    self.target_box = np.array(
        [[max(0, lo - o[:, 0].min()), min(n, hi - o[:, 0].max()),
          max(0, lo - o[:, 1].min()), min(n, hi - o[:, 1].max())] for o in self.seed_offsets])
    border = np.zeros((n, n), np.uint8)
    border[:p.padding, :] = border[n - p.padding:, :] = 255
    border[:, :p.padding] = border[:, n - p.padding:] = 255
    padded = np.zeros((n + 2 * margin,) * 2, np.uint8)
    for dy, dx in zip(*np.nonzero(disk)):
      view = padded[dy:dy + n, dx:dx + n]
      np.maximum(view, border, out=view)
    self.border_u8 = border
    self.batch_mask0 = np.zeros((size, size), np.uint8)
    self.batch_mask0[pad:pad + n, pad:pad + n] = np.where(border >= 204, border, 0)
    self.batch_mask0 = self.batch_mask0.reshape(-1)
    self.batch_dilated0 = np.zeros((size, size), np.uint8)
    self.batch_dilated0[pad:pad + n, pad:pad + n] = padded[margin:margin + n,
                                                           margin:margin + n]
    self.batch_dilated0 = self.batch_dilated0.reshape(-1)
    # Candidates a state can pick: cos^2(min(continuity * turn, pi / 2)) is ~1e-33, not
    # 0, beyond the largest turn; such a pick has probability ~1e-30 and is dropped.
    usable = self.weights > 1e-9
    width = max(int(usable.sum(1).max()), 1)
    self.state_cands = np.zeros((len(self.weights), width), np.int64)
    self.state_weights = np.zeros((len(self.weights), width), np.float32)
    for s_, row in enumerate(usable):
      idx = np.flatnonzero(row)
      self.state_cands[s_, :len(idx)] = idx
      self.state_weights[s_, :len(idx)] = self.weights[s_, idx]
    self._buffers = None


  def batch_buffers(self, count: int):
    """Flat occupancy and dilated occupancy of ``count`` attempts, reset to the border.

    Reused between batches and reset by one contiguous copy from a pre-tiled template:
    several times cheaper than fresh pages or a broadcast per batch.
    """
    area = self.batch_size**2
    if self._buffers is None or self._buffers.shape[1] < count * area:
      self._buffers = np.empty((2, count * area), np.uint8)
      self._template = np.stack([np.tile(self.batch_mask0, count),
                                 np.tile(self.batch_dilated0, count)])
    buffers = self._buffers[:, :count * area]
    np.copyto(buffers, self._template[:, :count * area])
    return buffers[0], buffers[1]


@functools.lru_cache(maxsize=16)
def _stamp_bank(p: PathfinderParams, margin: int) -> _StampBank:
  return _StampBank(p, margin)


@functools.lru_cache(maxsize=16)
def _marker_aa_grid(n: int, aa: int):
  return np.arange(n * aa)


def _marker(n: int, coord, radius: float, aa: int) -> np.ndarray:
  """A circle at coord, drawn at aa x and Lanczos-downsampled (snakes2.draw_circle)."""
  grid = _marker_aa_grid(n, aa)
  y = (grid - coord[0] * aa)[:, None]
  x = (grid - coord[1] * aa)[None, :]
  disk = (x**2 + y**2 <= (radius * aa)**2).astype(np.uint8) * 255
  return np.asarray(Image.fromarray(disk).resize((n, n), Image.Resampling.LANCZOS))


# ---------------------------------------------------------------------------------------
# One image.


# Occupancy bytes per batch of target attempts (x2 with the reset template). Larger
# batches cost a little less per attempt (Path-X: 10.0k attempts per CPU second at
# 4 MiB, 11.1k at 64 MiB); 32 MiB keeps a worker under ~100 MB.
_BATCH_BYTES = 32 << 20


def _sample_targets(p: PathfinderParams, bank: _StampBank, rng: np.random.Generator,
                    batch: int) -> list[dict[str, Any]]:
  """Runs ``batch`` independent two-target attempts (snakes2.two_snakes) in lockstep.

  The original restarts both targets whenever one paddle fails, hundreds of times per
  Path-X image; every surviving attempt here is an independent draw of the same
  conditional distribution. Occupancy is uint8 (the stamps are uint8 / 255); a margin-
  dilated copy makes the candidate weights one gather; stamps are pasted sparsely.
  """
  n, pad, size = p.resolution, bank.batch_pad, bank.batch_size
  tries = p.max_paddle_retrial + 1
  # --- first paddles (snakes2.initialize_two_seeds) ---
  k1 = rng.integers(360, size=(batch, tries))
  box = bank.target_box[k1]  # [B, T, 4]
  empty = ((box[..., 1] <= box[..., 0]) | (box[..., 3] <= box[..., 2]) |
           np.asarray(bank.seed_dead)[k1])
  ty = box[..., 0] + np.floor(rng.random((batch, tries)) *
                              np.maximum(box[..., 1] - box[..., 0], 1)).astype(np.int64)
  tx = box[..., 2] + np.floor(rng.random((batch, tries)) *
                              np.maximum(box[..., 3] - box[..., 2], 1)).astype(np.int64)
  tail1 = np.stack([ty, tx], axis=-1)

  def ends(tail, k):
    head = tail + np.asarray(bank.seed_head)[k]
    pivot = tail + np.asarray(bank.seed_pivot)[k]
    ok = ((head >= 0) & (head < n) & (pivot >= 0) & (pivot < n)).all(-1)
    return pivot, ok

  pivot1, ok1 = ends(tail1, k1)
  # The first trial that is either impossible (no free tail: give up) or inside.
  stop = empty | ok1
  first = np.argmax(stop, axis=1)
  rows = np.arange(batch)
  alive = stop[rows, first] & ~empty[rows, first]
  k1, tail1, pivot1 = k1[rows, first], tail1[rows, first], pivot1[rows, first]
  k2 = rng.integers(360, size=(batch, tries))
  direction = rng.integers(360, size=(batch, tries)) * np.pi / 180
  tail2 = np.stack([np.round(tail1[:, None, 0] + p.seed_distance * np.sin(direction)),
                    np.round(tail1[:, None, 1] + p.seed_distance * np.cos(direction))],
                   axis=-1).astype(np.int64)
  pivot2, ok2 = ends(tail2, k2)
  second = np.argmax(ok2, axis=1)
  alive &= ok2[rows, second]
  k2, tail2, pivot2 = k2[rows, second], tail2[rows, second], pivot2[rows, second]
  idx = np.flatnonzero(alive)
  if idx.size == 0:
    return []
  count = idx.size
  state = np.stack([k1[idx], k2[idx]], axis=1)  # [A, 2] = last stamp id per target
  pivot = np.stack([pivot1[idx], pivot2[idx]], axis=1)  # [A, 2, 2]
  heads = np.stack([tail1[idx], tail2[idx]], axis=1)  # position of the pending stamp
  origins = heads.copy()
  length = p.contour_length
  stamps = np.zeros((count, 2, length), np.int64)
  places = np.zeros((count, 2, length, 2), np.int64)
  stamps[:, :, 0], places[:, :, 0] = state, heads
  area = size * size
  mask, dilated = bank.batch_buffers(count)
  live = np.arange(count, dtype=np.int32)  # attempts still growing (rows of the above)
  width = bank.state_cands.shape[1]

  def local(yx):
    return (yx[..., 0] + pad) * size + (yx[..., 1] + pad)

  def paste(target, sparse, ids, where, rows_):
    # Pixels that fall in the pad are never read: collisions test in_image, and the
    # dilated copy is read only at candidates inside the image, where the image border
    # (dilated by the margin) already covers whatever spills in from outside.
    at = (local(where) + rows_ * area)[:, None] + sparse[0][ids]  # [A, M]
    target[at] = np.maximum(target[at], sparse[1][ids])

  for segment in range(1, length):
    for i in range(2):
      if live.size == 0:
        return []
      s = state[live, i]
      new_pivot = pivot[live, i] + bank.step_offsets[s]
      options = bank.state_cands[s]  # [A, W] candidate ids this state can turn to
      cy = (new_pivot[:, 0, None] + bank.cand_offsets[options, 0]).astype(np.int32)
      cx = (new_pivot[:, 1, None] + bank.cand_offsets[options, 1]).astype(np.int32)
      inside = (cy >= 0) & (cy < n) & (cx >= 0) & (cx < n)
      at = np.clip((cy + pad) * size + (cx + pad), 0, area - 1)
      base = (live * area)[:, None]
      near = dilated[base + at]
      pmf = (255 - near.astype(np.float32)) * bank.state_weights[s] * inside
      total = pmf.sum(1)
      ok = total >= 1e-4 * 255
      cmf = np.cumsum(pmf, axis=1)
      u = rng.random((live.size, tries), dtype=np.float32) * total[:, None]
      choice = np.minimum((cmf[:, None, :] <= u[:, :, None]).sum(-1), width - 1)
      accepted = np.full(live.size, -1)
      for t in range(tries):
        todo = np.flatnonzero(ok & (accepted < 0))
        if todo.size == 0:
          break
        j = choice[todo, t]  # column of options
        cid = options[todo, j]
        spot = at[todo, j][:, None] + bank.collide_sparse[0][360 + cid]
        hit = ((mask[base[todo] + spot] >= 459 - bank.collide_sparse[1][360 + cid].astype(
            np.int16)) & bank.in_image[spot]).any(1)
        accepted[todo[~hit]] = j[~hit]
      good = accepted >= 0
      g = np.flatnonzero(good)
      rows_ = live[g]
      col = accepted[g]
      sid = 360 + options[g, col]
      # The previous paddle of this target joins the occupancy now (snakes.extend_snake).
      prev_ids, prev_at = state[rows_, i], heads[rows_, i]
      paste(mask, bank.mask_sparse, prev_ids, prev_at, rows_)
      paste(dilated, bank.dilated_sparse, prev_ids, prev_at, rows_)
      head = np.stack([cy[g, col], cx[g, col]], axis=1)
      state[rows_, i] = sid
      pivot[rows_, i] = new_pivot[g]
      heads[rows_, i] = head
      stamps[rows_, i, segment] = sid
      places[rows_, i, segment] = head
      live = rows_
  return [dict(stamps=stamps[r], places=places[r], origins=origins[r],
               terminals=heads[r].copy()) for r in live]


class _Canvas:
  """Image and occupancy, padded so that gathers near the border need no clipping."""

  def __init__(self, n: int, pad: int):
    self.n, self.pad = n, pad
    self.image = np.zeros((n + 2 * pad,) * 2, np.float32)
    self.mask = np.zeros((n + 2 * pad,) * 2, np.float32)

  def copy(self):
    other = _Canvas.__new__(_Canvas)
    other.n, other.pad = self.n, self.pad
    other.image, other.mask = self.image.copy(), self.mask.copy()
    return other

  def view(self, a):
    return a[self.pad:self.pad + self.n, self.pad:self.pad + self.n]

  def paste(self, target, stamp, r, c, half, scale=1.0):
    win = _clip_window(r, c, half, self.n)
    if win is None:
      return
    dst = self.view(target)[win[0]]
    np.maximum(dst, stamp[win[1]] * scale if scale != 1.0 else stamp[win[1]], out=dst)

  def collides(self, stamp, r, c, half) -> bool:
    win = _clip_window(r, c, half, self.n)
    if win is None:
      return False
    return bool((self.view(self.mask)[win[0]] + stamp[win[1]]).max() >= 1.8)


class _Generator:
  """Draws Pathfinder images for one parameter set (one margin at a time)."""

  def __init__(self, p: PathfinderParams, rng: np.random.Generator):
    self.p, self.rng, self.n = p, rng, p.resolution
    self._pool: dict[int, list] = {}
    self._attempts, self._found, self._rate = 0, 0, 0.05

  def _contrast(self, values: Sequence[float]) -> float:
    return values[int(self.rng.integers(len(values)))] if len(values) > 1 else values[0]

  # --- seeding -------------------------------------------------------------------------

  def _sample_free(self, occupied: np.ndarray, offsets: np.ndarray):
    """A uniform position whose struct offsets hit no occupied pixel, or None.

    Rejection sampling (uniform over the free positions, like sampling from the list of
    free positions), falling back to the exact free map when free positions are rare.
    """
    n, pad = self.n, self.bank.pad
    for _ in range(4):
      pos = self.rng.integers(0, n, size=(16, 2))
      hit = occupied[pos[:, None, 0] + offsets[None, :, 0] + pad,
                     pos[:, None, 1] + offsets[None, :, 1] + pad].any(axis=1)
      free = np.flatnonzero(~hit)
      if free.size:
        return int(pos[free[0], 0]), int(pos[free[0], 1])
    blocked = np.zeros((n, n), bool)
    for dy, dx in offsets:
      blocked |= occupied[pad + dy:pad + dy + n, pad + dx:pad + dx + n]
    ys, xs = np.nonzero(~blocked)
    if ys.size == 0:
      return None
    k = int(self.rng.integers(ys.size))
    return int(ys[k]), int(xs[k])

  def _seed(self, canvas: _Canvas, border: int, contrast: float):
    """seed_snake: first paddle of a contour; returns (pivot, state, tail, stamp) or None."""
    n, b = self.n, self.bank
    occupied = canvas.mask > 0.3
    inner = occupied[b.pad:b.pad + n, b.pad:b.pad + n]
    inner[:border, :] = True
    inner[n - border:, :] = True
    inner[:, :border] = True
    inner[:, n - border:] = True
    for _ in range(self.p.max_paddle_retrial + 1):
      k = int(self.rng.integers(360))
      if b.seed_dead[k]:
        return None
      tail = self._sample_free(occupied, b.seed_offsets[k])
      if tail is None:
        return None
      head = (tail[0] + b.seed_head[k][0], tail[1] + b.seed_head[k][1])
      pivot = (tail[0] + b.seed_pivot[k][0], tail[1] + b.seed_pivot[k][1])
      if all(0 <= v < n for v in head + pivot):
        canvas.paste(canvas.image, b.seed_lines[k], tail[0], tail[1], b.half, contrast)
        return pivot, k, tail, ("seed", k, tail)
    return None

  # --- growing -------------------------------------------------------------------------

  def _extend(self, canvas: _Canvas, pivot, state: int, last_stamp, contrast: float):
    """extend_snake: one more paddle; returns (pivot, state, head, stamp) or None."""
    n, b = self.n, self.bank
    angle = b.seed_angles[state] if state < 360 else b.cand_angles[state - 360]
    pivot = _ceil_translate(pivot[0], pivot[1], angle,
                            self.p.paddle_length + 2 * self.margin)
    heads = b.cand_offsets + np.asarray(pivot)
    inside = ((heads >= 0) & (heads < n)).all(axis=1)
    if not inside.any():
      return None
    near = canvas.mask[b.cand_disk[:, :, 0] + (pivot[0] + b.pad),
                       b.cand_disk[:, :, 1] + (pivot[1] + b.pad)].max(axis=1)
    pmf = (1 - near) * b.weights[state] * inside
    total = pmf.sum()
    if total < 1e-4:
      return None
    cmf = np.cumsum(pmf / total)
    for _ in range(self.p.max_paddle_retrial + 1):
      j = min(int(np.searchsorted(cmf, self.rng.random(), side="right")), len(cmf) - 1)
      head = (int(heads[j, 0]), int(heads[j, 1]))
      if not canvas.collides(b.cand_masks[j], head[0], head[1], b.half):
        canvas.paste(canvas.image, b.cand_lines[j], head[0], head[1], b.half, contrast)
        self._commit(canvas, last_stamp)
        return pivot, 360 + j, head, ("cand", j, head)
    return None

  def _commit(self, canvas: _Canvas, stamp) -> None:
    """Adds a paddle's mask to the occupancy (one paddle late, as the original)."""
    kind, k, (r, c) = stamp
    masks = self.bank.seed_masks if kind == "seed" else self.bank.cand_masks
    canvas.paste(canvas.mask, masks[k], r, c, self.bank.half)

  # --- contours ------------------------------------------------------------------------

  def _two_targets(self):
    """snakes2.two_snakes; returns (canvas, origins, terminals) or None."""
    p, n, b = self.p, self.n, self.bank
    canvas = _Canvas(n, b.pad)
    inner = canvas.view(canvas.mask)
    inner[:p.padding, :] = 1
    inner[n - p.padding:, :] = 1
    inner[:, :p.padding] = 1
    inner[:, n - p.padding:] = 1
    mu = [self._contrast(p.snake_contrasts) for _ in range(2)]
    # First target: like seed_snake inside a border of 2 * seed_distance.
    first = self._seed(canvas, 2 * p.seed_distance, self._contrast(p.paddle_contrasts) * mu[0])
    if first is None:
      return None
    # Second target: its first paddle starts seed_distance from the first one's tail
    # (snakes2.initialize_two_seeds; no occupancy test for this one).
    contrast = self._contrast(p.paddle_contrasts) * mu[1]
    for _ in range(p.max_paddle_retrial + 1):
      k = int(self.rng.integers(360))
      direction = int(self.rng.integers(360)) * math.pi / 180
      tail = (int(np.round(first[2][0] + p.seed_distance * math.sin(direction))),
              int(np.round(first[2][1] + p.seed_distance * math.cos(direction))))
      head = (tail[0] + b.seed_head[k][0], tail[1] + b.seed_head[k][1])
      pivot = (tail[0] + b.seed_pivot[k][0], tail[1] + b.seed_pivot[k][1])
      if all(0 <= v < n for v in head + pivot):
        break
    else:
      return None
    canvas.paste(canvas.image, b.seed_lines[k], tail[0], tail[1], b.half, contrast)
    snakes = [list(first[:2]) + [first[3]], [pivot, k, ("seed", k, tail)]]
    origins = [first[2], tail]
    terminals = [None, None]
    for _ in range(p.contour_length - 1):
      contrast = self._contrast(p.paddle_contrasts)
      for i in range(2):
        grown = self._extend(canvas, snakes[i][0], snakes[i][1], snakes[i][2],
                             contrast * mu[i])
        if grown is None:
          return None
        snakes[i] = [grown[0], grown[1], grown[3]]
        terminals[i] = grown[2]
    # As the original, only the second target's last paddle joins the occupancy.
    self._commit(canvas, snakes[1][2])
    return canvas, origins, terminals

  def _distractor(self, canvas: _Canvas):
    """snakes.make_snake: a distractor contour on a copy; returns the copy or None."""
    p, n = self.p, self.n
    trial = canvas.copy()
    free = np.count_nonzero(trial.view(trial.mask) <= 0.3)
    if free / (n * n) < p.stop_with_availability:
      return None
    seeded = self._seed(trial, 1, self._contrast(p.snake_contrasts))
    if seeded is None:
      return None
    pivot, state, _, stamp = seeded
    for _ in range(p.distractor_length - 1):
      grown = self._extend(trial, pivot, state, stamp, self._contrast(p.snake_contrasts))
      if grown is None:
        return None
      pivot, state, _, stamp = grown
    self._commit(trial, stamp)
    return trial

  def _targets_batched(self):
    """Two targets from the batched sampler: (canvas, origins, terminals, attempts)."""
    p, b = self.p, self.bank
    pool = self._pool.setdefault(self.margin, [])
    while not pool:
      # About two successes per batch, at most _BATCH_BYTES of occupancy arrays.
      limit = max(16, _BATCH_BYTES // (2 * b.batch_size**2))
      batch = int(np.clip(2.0 / max(self._rate, 1e-4), 16, limit))
      found = _sample_targets(p, b, self.rng, batch)
      self._attempts += batch
      self._found += len(found)
      # Running success rate (deterministic given the random stream).
      self._rate = max(self._found, 0.5) / self._attempts
      for f in found:
        f["attempts"] = batch / len(found)
      pool.extend(found)
    found = pool.pop(0)
    canvas = _Canvas(self.n, b.pad)
    canvas.view(canvas.mask)[...] = b.border_u8.astype(np.float32) / 255
    mu = self.rng.permutation(list(p.snake_contrasts) * 2)[:2]
    contrasts = [self._contrast(p.paddle_contrasts)
                 for _ in range(p.contour_length + 1)]
    lines, masks = b.all_lines, b.all_masks
    for i in range(2):
      for seg in range(p.contour_length):
        sid = int(found["stamps"][i, seg])
        r, c = (int(v) for v in found["places"][i, seg])
        # First paddles draw their own contrast; later rounds share one per round.
        contrast = contrasts[p.contour_length] if (seg == 0 and i == 1) else contrasts[seg]
        canvas.paste(canvas.image, lines[sid], r, c, b.half, float(contrast * mu[i]))
        # As the original, every paddle but the first target's last joins the occupancy.
        if i == 1 or seg < p.contour_length - 1:
          canvas.paste(canvas.mask, masks[sid], r, c, b.half)
    origins = [tuple(int(v) for v in o) for o in found["origins"]]
    terminals = [tuple(int(v) for v in t) for t in found["terminals"]]
    return canvas, origins, terminals, found["attempts"]

  def image(self, label: int, reference: bool = False):
    """One image: (uint8 [n, n], info dict).

    ``reference=True`` grows the targets one attempt at a time exactly as the original
    loop does (slow; kept to check the batched sampler against).
    """
    p, n = self.p, self.n
    self.margin = p.paddle_margins[int(self.rng.integers(len(p.paddle_margins)))]
    self.bank = _stamp_bank(p, self.margin)
    if reference:
      target_attempts = 0
      while True:
        target_attempts += 1
        targets = self._two_targets()
        if targets is not None:
          break
      canvas, origins, terminals = targets
    else:
      canvas, origins, terminals, target_attempts = self._targets_batched()
    num_distractors = 0
    for _ in range(p.num_distractor_snakes):
      for _ in range(p.max_distractor_contour_retrial + 1):
        trial = self._distractor(canvas)
        if trial is not None:
          canvas = trial
          num_distractors += 1
          break
    origin = int(self.rng.integers(2))
    terminal = origin if label == 1 else 1 - origin
    a = _marker(n, origins[origin], p.marker_radius, p.antialias_scale)
    b = _marker(n, terminals[terminal], p.marker_radius, p.antialias_scale)
    marked = np.maximum(canvas.view(canvas.image).astype(np.float64),
                        np.maximum(a, b).astype(np.float32) / 255)
    # scipy.misc.imsave -> bytescale: min-max scaled to [0, 255], rounded half up.
    lo, hi = marked.min(), marked.max()
    scaled = (marked - lo) * (255.0 / ((hi - lo) or 1.0))
    image = (scaled.clip(0, 255) + 0.5).astype(np.uint8)
    info = dict(label=label, margin=self.margin, target_attempts=target_attempts,
                num_distractors=num_distractors,
                num_paddles=2 * p.contour_length + num_distractors * p.distractor_length,
                markers=(tuple(origins[origin]), tuple(terminals[terminal])))
    return image, info


def image_rng(seed: int, resolution: int, difficulty: str, batch: int,
              index: int) -> np.random.Generator:
  """The random stream starting at image ``index`` of ``batch``."""
  tag = list(DIFFICULTIES).index(difficulty)
  return np.random.default_rng([seed, resolution, tag, batch, index])


class ImageSampler:
  """Draws images one after another from one random stream.

  Target pairs come from a batched sampler and are used in order, so the images depend
  on (params, rng seed, sequence of labels) only.
  """

  def __init__(self, params: PathfinderParams, rng: np.random.Generator):
    self._gen = _Generator(params, rng)

  def __call__(self, label: int, reference: bool = False):
    """One image as uint8 ``[n, n]`` and a dict of statistics (markers, paddles...)."""
    if label not in (0, 1):
      raise ValueError(f"{label=} must be 0 or 1")
    return self._gen.image(label, reference=reference)


def generate_image(params: PathfinderParams, label: int, rng: np.random.Generator,
                   reference: bool = False):
  """One image (uint8 ``[n, n]``, info) from a fresh sampler."""
  return ImageSampler(params, rng)(label, reference=reference)


# ---------------------------------------------------------------------------------------
# Datasets on disk.


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
      _stamp_bank(params, margin)
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
