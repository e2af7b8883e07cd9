"""Pathfinder rendering: paddle stamps, marker circles and the canvas they are pasted on.

As the official generator (github.com/drewlinsley/pathfinder ``snakes.py`` /
``snakes2.py``), a *paddle* is a line of ``paddle_length`` pixels and
``paddle_thickness`` drawn at ``antialias_scale`` times the resolution and
Lanczos-downsampled; its *mask* is the same line dilated by a disk of radius
``margin`` (also downsampled, values in [0, 1]). Paddle orientations come from two
finite sets (integer degrees for the first paddle of a contour, the integer offsets
on a circle of radius ``length + margin`` for every following one), so every stamp is
rendered once per parameter set (:func:`stamp_bank`) and pasted afterwards; the
bank also holds the tables the batched sampler (``data.pathfinder_sample``) reads.
"""
import functools
import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from data.pathfinder_params import PathfinderParams


def ceil_translate(dy: float, dx: float, angle: float, dist: float) -> tuple[int, int]:
  # snakes.translate_coord: positions are rounded up.
  return (int(math.ceil(dy + float(dist) * math.sin(angle))),
          int(math.ceil(dx + float(dist) * math.cos(angle))))


def flip_angle(angle: float) -> float:
  return angle + math.pi if angle < 0 else angle - math.pi


def disk_mask(radius: float) -> np.ndarray:
  r = int(radius)
  y, x = np.ogrid[-r:r + 1, -r:r + 1]
  return x**2 + y**2 <= radius**2


def render_paddle(angle, length, thickness, margin, aa):
  """Line and margin mask of one paddle starting at the stamp centre (uint8 [S, S]).

  As ``snakes.draw_line_n_mask``: drawn at ``aa`` x with PIL, dilated by a disk of radius
  ``margin * aa``, both Lanczos-resized to ``S = 2 R + 1``, ``R = length + ceil(thickness)
  + margin``.
  """
  radius = length + int(math.ceil(thickness)) + margin
  big = radius * 2 * aa + 1
  centre = radius * aa
  head = ceil_translate(centre, centre, angle, length * aa)
  blown = Image.new("L", (big, big), 0)
  ImageDraw.Draw(blown).line([(centre, centre), (head[1], head[0])], fill=255,
                             width=int(round(thickness * aa)))
  size = (2 * radius + 1, 2 * radius + 1)
  line = np.asarray(blown.resize(size, Image.Resampling.LANCZOS))
  dilated = ndimage.binary_dilation(np.asarray(blown) > 0, structure=disk_mask(margin * aa))
  mask = np.asarray(Image.fromarray(dilated.astype(np.uint8) * 255).resize(
      size, Image.Resampling.LANCZOS))
  return line, mask


def clip_window(r: int, c: int, half: int, n: int):
  """Slices of an n x n canvas and of a (2 half + 1)^2 stamp centred at (r, c)."""
  r0, r1, c0, c1 = r - half, r + half + 1, c - half, c + half + 1
  cr0, cr1, cc0, cc1 = max(r0, 0), min(r1, n), max(c0, 0), min(c1, n)
  if cr0 >= cr1 or cc0 >= cc1:
    return None
  return ((slice(cr0, cr1), slice(cc0, cc1)),
          (slice(cr0 - r0, cr1 - r0), slice(cc0 - c0, cc1 - c0)))


class StampBank:
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
      line, mask = render_paddle(a, length, p.paddle_thickness, margin, aa)
      seed_lines.append(line)
      seed_masks.append(mask)
      # The "struct" that seed_snake dilates the occupancy with: the fully-on pixels of
      # the paddle mask placed at grid_head of a (2 (length + margin) + 1)^2 grid, used
      # with cv2.dilate's centre anchor.
      struct = np.zeros((grid, grid), np.uint8)
      win = clip_window(grid_head, grid_head, self.half, grid)
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
      head = ceil_translate(0, 0, a, length)
      self.seed_head.append(head)
      # Head and pivot (margin behind the tail) relative to the tail (seed_snake).
      self.seed_pivot.append(ceil_translate(head[0], head[1], flip_angle(a), length + margin))
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
      line, mask = render_paddle(flip_angle(float(a)), length, p.paddle_thickness, margin, aa)
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
    dy, dx = np.nonzero(disk_mask(margin))
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
    disk = disk_mask(margin)
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
def stamp_bank(p: PathfinderParams, margin: int) -> StampBank:
  return StampBank(p, margin)


@functools.lru_cache(maxsize=16)
def _marker_aa_grid(n: int, aa: int):
  return np.arange(n * aa)


def render_marker(n: int, coord, radius: float, aa: int) -> np.ndarray:
  """A circle at coord, drawn at aa x and Lanczos-downsampled (snakes2.draw_circle)."""
  grid = _marker_aa_grid(n, aa)
  y = (grid - coord[0] * aa)[:, None]
  x = (grid - coord[1] * aa)[None, :]
  disk = (x**2 + y**2 <= (radius * aa)**2).astype(np.uint8) * 255
  return np.asarray(Image.fromarray(disk).resize((n, n), Image.Resampling.LANCZOS))


class Canvas:
  """Image and occupancy, padded so that gathers near the border need no clipping."""

  def __init__(self, n: int, pad: int):
    self.n, self.pad = n, pad
    self.image = np.zeros((n + 2 * pad,) * 2, np.float32)
    self.mask = np.zeros((n + 2 * pad,) * 2, np.float32)

  def copy(self):
    other = Canvas.__new__(Canvas)
    other.n, other.pad = self.n, self.pad
    other.image, other.mask = self.image.copy(), self.mask.copy()
    return other

  def view(self, a):
    return a[self.pad:self.pad + self.n, self.pad:self.pad + self.n]

  def paste(self, target, stamp, r, c, half, scale=1.0):
    win = clip_window(r, c, half, self.n)
    if win is None:
      return
    dst = self.view(target)[win[0]]
    np.maximum(dst, stamp[win[1]] * scale if scale != 1.0 else stamp[win[1]], out=dst)

  def collides(self, stamp, r, c, half) -> bool:
    win = clip_window(r, c, half, self.n)
    if win is None:
      return False
    return bool((self.view(self.mask)[win[0]] + stamp[win[1]]).max() >= 1.8)
