"""Multi-query associative recall (MQAR) generator.

MQAR (Arora, Eyuboglu et al., 2023, "Zoology: Measuring and Improving Recall in
Efficient Language Models"; HazyResearch/zoology ``zoology/data/multiquery_ar.py``,
``multiquery_ar``, formerly ``associative_recall.py``). With K = num_kv_pairs and
vocabulary size V:

* keys are K distinct ids from ``1 .. V//2 - 1`` and values K distinct ids from
  ``V//2 .. V-1`` (both drawn without replacement);
* positions ``0 .. 2K-1`` hold ``k1 v1 k2 v2 ...``;
* ``space = (t - 2K) // 2`` slots follow; K distinct slots ``g`` are drawn without
  replacement with probabilities ``p(g) ~ a * (g + 1) ** (a - 1)`` (a power law,
  ``a = power_a = 0.01`` by default; ``a = 1`` is uniform), and key ``i`` is placed
  at position ``2K + 2 g_i``, in the order of the draws;
* the target at a query position is the value bound to that key (the value itself
  is not in the inputs: the next position is noise);
* every other position is 0, replaced by uniform noise in ``0 .. V-1`` when
  ``random_non_queries`` (the default, as zoology).

The official code asserts an even length and ``V > t``; neither is needed by the
layout, and the length-extrapolation study evaluates beyond the vocabulary size, so
only ``t >= 4K`` (room for K query slots) is required here. Zoology's experiments use
``V = 8192`` (``MQAR_VOCAB_SIZE``).

Examples are drawn as ``data.probes`` describes (one generator per example).
"""
from __future__ import annotations

import numpy as np

from data import probes

MQAR_VOCAB_SIZE = 8_192  # zoology's VOCAB_SIZE in its MQAR experiments
MQAR_POWER_A = 0.01  # zoology's MQARConfig.power_a
MQAR_NUM_KV_PAIRS = 8  # zoology's MQARConfig.num_kv_pairs


def mqar_min_length(num_kv_pairs: int) -> int:
  """2K context tokens and K query slots of two tokens (zoology: ``4K <= t``)."""
  return 4 * num_kv_pairs


def mqar_gap_probabilities(space: int, power_a: float = MQAR_POWER_A) -> np.ndarray:
  """``p(g) ~ a (g+1)^(a-1)`` over the ``space`` query slots, normalised."""
  if space < 1 or power_a <= 0:
    raise ValueError(f"{space=} must be >= 1 and {power_a=} > 0")
  p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
  return p / p.sum()


def check_mqar(length: int, num_kv_pairs: int, vocab_size: int, power_a: float) -> None:
  if num_kv_pairs < 1:
    raise ValueError(f"{num_kv_pairs=} must be >= 1")
  if length < mqar_min_length(num_kv_pairs):
    raise ValueError(f"{length=} is below 4 * {num_kv_pairs=} (zoology's minimum: "
                     "2K context tokens and K two-token query slots)")
  if vocab_size // 2 - 1 < num_kv_pairs:
    raise ValueError(f"{vocab_size=} has {vocab_size // 2 - 1} key ids "
                     f"(1..vocab_size//2-1), fewer than {num_kv_pairs=}")
  if power_a <= 0:
    raise ValueError(f"{power_a=} must be > 0")


def mqar_sparse(rng: np.random.Generator, length: int, *,
                num_kv_pairs: int = MQAR_NUM_KV_PAIRS, vocab_size: int = MQAR_VOCAB_SIZE,
                power_a: float = MQAR_POWER_A,
                random_non_queries: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(inputs, target positions, target ids)`` of one MQAR example (module doc)."""
  check_mqar(length, num_kv_pairs, vocab_size, power_a)
  k = num_kv_pairs
  half = vocab_size // 2
  keys = rng.choice(np.arange(1, half), size=k, replace=False)
  values = rng.choice(np.arange(half, vocab_size), size=k, replace=False)
  context = 2 * k
  space = (length - context) // 2
  p = mqar_gap_probabilities(space, power_a)
  gaps = rng.choice(space, size=k, replace=False, p=p)
  inputs = np.zeros((length,), dtype=np.int32)
  inputs[0:context:2] = keys
  inputs[1:context:2] = values
  positions = context + 2 * gaps
  inputs[positions] = keys
  if random_non_queries:
    noise = rng.integers(0, vocab_size, size=length)
    empty = inputs == 0
    inputs[empty] = noise[empty]
  return inputs, positions.astype(np.int32), values.astype(np.int32)


def make_mqar_example(rng: np.random.Generator, length: int, *,
                      num_kv_pairs: int = MQAR_NUM_KV_PAIRS,
                      vocab_size: int = MQAR_VOCAB_SIZE, power_a: float = MQAR_POWER_A,
                      random_non_queries: bool = True) -> dict[str, np.ndarray]:
  """One MQAR example of exactly ``length`` tokens.

  Args:
    rng: the example's generator (see :func:`example_rng`).
    length: total tokens, at least ``4 * num_kv_pairs``.
    num_kv_pairs: K key-value pairs, each key queried once.
    vocab_size: V; keys in ``1..V//2-1``, values in ``V//2..V-1``.
    power_a: exponent of the power law of the query slots.
    random_non_queries: fill the empty positions with noise (else 0).

  Returns:
    ``{"inputs", "mask", "targets", "target_mask"}``, each ``[length]``;
    ``target_mask.sum() == num_kv_pairs``.
  """
  return probes.densify(*mqar_sparse(rng, length, num_kv_pairs=num_kv_pairs,
                               vocab_size=vocab_size, power_a=power_a,
                               random_non_queries=random_non_queries))


def mqar_batch(seed: int, n: int, length: int, *, num_kv_pairs: int = MQAR_NUM_KV_PAIRS,
               vocab_size: int = MQAR_VOCAB_SIZE, power_a: float = MQAR_POWER_A,
               random_non_queries: bool = True, start: int = 0,
               stream: int = 0) -> dict[str, np.ndarray]:
  """Examples ``start .. start+n-1`` of an MQAR stream, stacked to ``[n, length]``."""
  if n < 1:
    raise ValueError(f"{n=} must be >= 1")
  return probes.stack([
      make_mqar_example(probes.example_rng(seed, start + i, stream=stream), length,
                        num_kv_pairs=num_kv_pairs, vocab_size=vocab_size,
                        power_a=power_a, random_non_queries=random_non_queries)
      for i in range(n)])
