"""Pathfinder sampling: contours grown paddle by paddle, markers, one image at a time.

Follows the procedure of the official generator (github.com/drewlinsley/pathfinder,
``snakes.py`` / ``snakes2.py``), re-implemented for speed in numpy (the stamps are
``data.pathfinder_render``'s):

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
(64 px) of first-paddle orientations impossible (``StampBank.seed_dead``); the first
target's last paddle never joins the occupancy.
"""
import math
from typing import Any, Sequence

import numpy as np

from data.pathfinder_params import DIFFICULTIES, PathfinderParams
from data.pathfinder_render import (Canvas, StampBank, ceil_translate, render_marker,
                                    stamp_bank)


# Occupancy bytes per batch of target attempts (x2 with the reset template). Larger
# batches cost a little less per attempt (Path-X: 10.0k attempts per CPU second at
# 4 MiB, 11.1k at 64 MiB); 32 MiB keeps a worker under ~100 MB.
_BATCH_BYTES = 32 << 20


def _sample_targets(p: PathfinderParams, bank: StampBank, rng: np.random.Generator,
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

  def _seed(self, canvas: Canvas, border: int, contrast: float):
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

  def _extend(self, canvas: Canvas, pivot, state: int, last_stamp, contrast: float):
    """extend_snake: one more paddle; returns (pivot, state, head, stamp) or None."""
    n, b = self.n, self.bank
    angle = b.seed_angles[state] if state < 360 else b.cand_angles[state - 360]
    pivot = ceil_translate(pivot[0], pivot[1], angle,
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

  def _commit(self, canvas: Canvas, stamp) -> None:
    """Adds a paddle's mask to the occupancy (one paddle late, as the original)."""
    kind, k, (r, c) = stamp
    masks = self.bank.seed_masks if kind == "seed" else self.bank.cand_masks
    canvas.paste(canvas.mask, masks[k], r, c, self.bank.half)

  # --- contours ------------------------------------------------------------------------

  def _two_targets(self):
    """snakes2.two_snakes; returns (canvas, origins, terminals) or None."""
    p, n, b = self.p, self.n, self.bank
    canvas = Canvas(n, b.pad)
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

  def _distractor(self, canvas: Canvas):
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
    canvas = Canvas(self.n, b.pad)
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
    # Stamp ids (rows of bank.all_lines) and centres of each target's paddles.
    contours = tuple((found["stamps"][i].copy(), found["places"][i].copy())
                     for i in range(2))
    return canvas, origins, terminals, found["attempts"], contours

  def image(self, label: int, reference: bool = False):
    """One image: (uint8 [n, n], info dict).

    ``reference=True`` grows the targets one attempt at a time exactly as the original
    loop does (slow; kept to check the batched sampler against).
    """
    p, n = self.p, self.n
    self.margin = p.paddle_margins[int(self.rng.integers(len(p.paddle_margins)))]
    self.bank = stamp_bank(p, self.margin)
    if reference:
      target_attempts = 0
      while True:
        target_attempts += 1
        targets = self._two_targets()
        if targets is not None:
          break
      canvas, origins, terminals = targets
      contours = None
    else:
      canvas, origins, terminals, target_attempts, contours = self._targets_batched()
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
    a = render_marker(n, origins[origin], p.marker_radius, p.antialias_scale)
    b = render_marker(n, terminals[terminal], p.marker_radius, p.antialias_scale)
    marked = np.maximum(canvas.view(canvas.image).astype(np.float64),
                        np.maximum(a, b).astype(np.float32) / 255)
    # scipy.misc.imsave -> bytescale: min-max scaled to [0, 255], rounded half up.
    lo, hi = marked.min(), marked.max()
    scaled = (marked - lo) * (255.0 / ((hi - lo) or 1.0))
    image = (scaled.clip(0, 255) + 0.5).astype(np.uint8)
    info = dict(label=label, margin=self.margin, target_attempts=target_attempts,
                num_distractors=num_distractors,
                num_paddles=2 * p.contour_length + num_distractors * p.distractor_length,
                markers=(tuple(origins[origin]), tuple(terminals[terminal])),
                # The two target contours, first paddle first: (stamp ids [L],
                # centres [L, 2]) each; None with reference=True.
                contours=contours, origins=tuple(map(tuple, origins)),
                terminals=tuple(map(tuple, terminals)))
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
