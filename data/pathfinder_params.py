"""Pathfinder / Path-X generator parameters: the official settings per resolution.

Names follow the official generator's ``snakes2_wrapper.Args``
(github.com/drewlinsley/pathfinder); :func:`official_params` gives the settings LRA
used for each ``pathfinder<N>`` and difficulty.
"""
import dataclasses

# Difficulty -> (release directory, contour length in paddles).
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
