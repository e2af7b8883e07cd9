"""Long-context probes: what passkey retrieval and MQAR share (elements, seeding, loss).

Both are token-level tasks for a causal language model. An element is::

  inputs:      int32 [t]  token ids
  mask:        bool  [t]  True where the position holds a real token
  targets:     int32 [t]  the token the model must predict AT position i, having seen
                          inputs[0..i] (0 where nothing is asked)
  target_mask: bool  [t]  the positions whose targets count (loss and accuracy)

Generators are pure numpy and deterministic: example ``i`` of a stream is drawn from
its own generator ``example_rng(seed, i, stream=...)``, so any example can be made
alone, a batch of ``n`` is the first ``n`` examples, and the study script can draw
evaluation batches at any length with ``passkey_gen.passkey_batch`` /
``mqar_gen.mqar_batch`` without building a dataset. The TFDS builders (array_record,
no TensorFlow) store the same examples sparsely (``inputs``, ``target_positions``,
``target_ids``) and :func:`preprocess_sparse` makes them dense.

The probes are ``data.passkey`` and ``data.mqar`` (tasks), their generators
``data.passkey_gen`` and ``data.mqar_gen``, and their TFDS builders
``data.passkey_builder`` and ``data.mqar_builder`` on the base ``data.probe_builder``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

PAD_ID = 0
SPLITS = ("train", "validation", "test")
# Zoology's sizes: num_train_examples 100_000, num_test_examples 3_000.
DEFAULT_SIZES = {"train": 100_000, "validation": 3_000, "test": 3_000}

# ----------------------------------------------------------------------------
# Seeding.


def example_rng(seed: int, index: int, *, stream: int = 0) -> np.random.Generator:
  """The generator of example ``index`` of stream ``stream`` (e.g. a split)."""
  for name, value in (("seed", seed), ("index", index), ("stream", stream)):
    if int(value) != value or value < 0:
      raise ValueError(f"{name}={value!r} must be a non-negative integer")
  entropy = [int(seed), int(stream), int(index)]
  return np.random.default_rng(np.random.SeedSequence(entropy))


def densify(inputs: np.ndarray, positions: np.ndarray, ids: np.ndarray,
             length: int | None = None) -> dict[str, np.ndarray]:
  """Sparse (positions, target ids) -> the dense element, padded to ``length``."""
  inputs = np.asarray(inputs, dtype=np.int32)
  positions = np.asarray(positions, dtype=np.int64)
  n = inputs.shape[0]
  length = n if length is None else length
  if n > length:
    raise ValueError(f"an example of {n} tokens does not fit max_length={length}")
  if positions.size and (positions.min() < 0 or positions.max() >= n):
    raise ValueError(f"target positions {positions.tolist()} outside 0..{n - 1}")
  out_inputs = np.full((length,), PAD_ID, dtype=np.int32)
  out_inputs[:n] = inputs
  targets = np.zeros((length,), dtype=np.int32)
  targets[positions] = np.asarray(ids, dtype=np.int32)
  target_mask = np.zeros((length,), dtype=bool)
  target_mask[positions] = True
  return {"inputs": out_inputs, "mask": np.arange(length) < n, "targets": targets,
          "target_mask": target_mask}


def stack(examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def with_lm_loss(element: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Adds ``loss_mask``: train on every next token (a language model).

  ``targets[i]`` becomes ``inputs[i + 1]`` at every real position but the last
  (at the answer positions that is the answer token already), and
  ``loss_mask`` marks them; ``target_mask`` still marks the answer, which the
  accuracy scores.
  """
  out = dict(element)
  n = int(element["mask"].sum())
  targets = np.zeros_like(element["targets"])
  targets[:n - 1] = element["inputs"][1:n]
  if not np.array_equal(targets[element["target_mask"]],
                        element["targets"][element["target_mask"]]):
    raise ValueError("the answer targets are not the next input tokens")
  loss_mask = np.zeros_like(element["mask"])
  loss_mask[:n - 1] = True
  out["targets"], out["loss_mask"] = targets, loss_mask
  return out


def preprocess_sparse(example: Mapping[str, Any], *, max_length: int,
                      lm_loss: bool) -> dict[str, np.ndarray]:
  """Sparse stored example -> dense element padded to ``max_length``.

  Every element has ``loss_mask`` (the positions in the training loss): the
  answer positions (``target_mask``), or, with ``lm_loss``, every position
  that has a next token (:func:`with_lm_loss`).
  """
  element = densify(example["inputs"], example["target_positions"],
                    example["target_ids"], max_length)
  if lm_loss:
    return with_lm_loss(element)
  element["loss_mask"] = element["target_mask"].copy()
  return element
