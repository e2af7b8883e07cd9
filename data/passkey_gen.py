"""Passkey retrieval generator: the prompt, its word-level vocabulary, examples.

Passkey (Mohtashami & Jaggi, 2023, "Landmark Attention", the retrieval prompt of
epfml/landmark-attention ``llama/run_test.py``, ``generate_prompt``; used since by
many long-context evaluations). The official prompt is the lines

  intro:    "There is an important info hidden inside a lot of irrelevant text. Find
            it and memorize them. I will quiz you about the important information
            there."
  prefix:   the first n_prefix characters of the filler "The grass is green. The
            sky is blue. The sun is yellow. Here we go. There and back again."
            repeated (joined by spaces)
  key:      "The pass key is {key}. Remember it. {key} is the pass key."
  suffix:   the first n_suffix characters of the same repeated filler (it restarts
            at the filler's beginning)
  question: "What is the pass key? The pass key is"

joined by newlines, with ``n_prefix = randint(0, n)`` (both ends included) and
``n_suffix = n - n_prefix``; the model must continue with the key. Here the prompt
is word-level: words, "." and "?" are tokens, every digit is one token, and each
newline is a token (``"\\n"``); the filler is cut in tokens rather than characters,
and the key is ``key_length`` uniform digits (5 by default; the official key is
``randint(1, 50000)``, a number of 1 to 5 digits). The key digits follow the
question (teacher forcing): the targets are the digits, at the position before each
of them, so the last position has none. The vocabulary is the prompt's tokens
(``PASSKEY_VOCAB``), padding id 0; sequences have exactly the requested length
(mask all True), so padding only appears when ``preprocess`` pads a shorter stored
example.


Examples are drawn as ``data.probes`` describes (one generator per example).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from data import probes
from data.probes import PAD_ID

PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
                 "Find it and memorize them. I will quiz you about the important "
                 "information there.")
PASSKEY_FILLER = ("The grass is green. The sky is blue. The sun is yellow. "
                  "Here we go. There and back again.")
PASSKEY_KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is"
NEWLINE = "\n"
DIGITS = tuple("0123456789")

_TOKEN_RE = re.compile(r"\n|\d|[A-Za-z]+|[.?]")


def passkey_tokenize(text: str) -> list[str]:
  """Word-level tokens: words, ``.``, ``?``, single digits and newlines."""
  tokens = _TOKEN_RE.findall(text)
  if "".join(tokens) != re.sub(r"[ ]", "", text):
    raise ValueError(f"text has characters outside the passkey vocabulary: {text[:80]!r}")
  return tokens


def _build_passkey_vocab() -> tuple[str, ...]:
  words: list[str] = []
  for text in (PASSKEY_INTRO, PASSKEY_FILLER, PASSKEY_KEY_LINE.format(key=""),
               PASSKEY_QUESTION):
    for tok in passkey_tokenize(text):
      if tok not in words:
        words.append(tok)
  # pad 0, digits 1..10, newline 11, then the words in order of first appearance.
  return ("<pad>",) + DIGITS + (NEWLINE,) + tuple(words)


PASSKEY_VOCAB = _build_passkey_vocab()
PASSKEY_TOKEN_TO_ID = {tok: i for i, tok in enumerate(PASSKEY_VOCAB)}
PASSKEY_VOCAB_SIZE = len(PASSKEY_VOCAB)
DIGIT_IDS = np.array([PASSKEY_TOKEN_TO_ID[d] for d in DIGITS], dtype=np.int32)


def passkey_encode(text: str) -> np.ndarray:
  """int32 ids of a text made of the prompt's tokens."""
  try:
    return np.array([PASSKEY_TOKEN_TO_ID[t] for t in passkey_tokenize(text)],
                    dtype=np.int32)
  except KeyError as e:
    raise ValueError(f"unknown passkey token {e.args[0]!r}") from None


def passkey_decode(ids: Sequence[int] | np.ndarray) -> str:
  """The text of ids (padding dropped): words spaced, no space before ``.``/``?``,
  digits of a number joined, lines joined by newlines."""
  out = ""
  for i in np.asarray(ids).tolist():
    if i == PAD_ID:
      continue
    tok = PASSKEY_VOCAB[i]
    glue = (not out or out.endswith(NEWLINE) or tok in (".", "?", NEWLINE)
            or (tok.isdigit() and out[-1].isdigit()))
    out += tok if glue else " " + tok
  return out


_INTRO_IDS = passkey_encode(PASSKEY_INTRO)
_FILLER_IDS = passkey_encode(PASSKEY_FILLER)
_QUESTION_IDS = passkey_encode(PASSKEY_QUESTION)
_NEWLINE_IDS = np.array([PASSKEY_TOKEN_TO_ID[NEWLINE]], dtype=np.int32)


def _key_line_ids(key_ids: np.ndarray) -> np.ndarray:
  head, middle, tail = PASSKEY_KEY_LINE.split("{key}")
  return np.concatenate([passkey_encode(head), key_ids, passkey_encode(middle), key_ids,
                         passkey_encode(tail)]).astype(np.int32)


def passkey_min_length(key_length: int = 5) -> int:
  """Tokens of the prompt without filler, plus the answer digits."""
  if key_length < 1:
    raise ValueError(f"{key_length=} must be >= 1")
  return (_INTRO_IDS.size + 4 + _key_line_ids(np.zeros(key_length, np.int32)).size
          + _QUESTION_IDS.size + key_length)


def passkey_filler(num_tokens: int) -> np.ndarray:
  """The first ``num_tokens`` tokens of the filler repeated."""
  reps = -(-num_tokens // _FILLER_IDS.size)
  return np.tile(_FILLER_IDS, reps)[:num_tokens]


def passkey_sparse(key: Sequence[int], num_prefix: int,
                   num_suffix: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(inputs, target positions, target ids)`` for given choices.

  Args:
    key: the key's digits, each 0..9.
    num_prefix: filler tokens between the intro and the key line.
    num_suffix: filler tokens between the key line and the question.
  """
  key = np.asarray(key)
  if key.ndim != 1 or key.size < 1 or key.min() < 0 or key.max() > 9:
    raise ValueError(f"key={key.tolist()} must be a non-empty list of digits 0..9")
  if num_prefix < 0 or num_suffix < 0:
    raise ValueError(f"{num_prefix=} and {num_suffix=} must be >= 0")
  key_ids = DIGIT_IDS[key]
  inputs = np.concatenate([
      _INTRO_IDS, _NEWLINE_IDS, passkey_filler(num_prefix), _NEWLINE_IDS,
      _key_line_ids(key_ids), _NEWLINE_IDS, passkey_filler(num_suffix), _NEWLINE_IDS,
      _QUESTION_IDS, key_ids]).astype(np.int32)
  # Teacher forcing: digit j is predicted at the position before it.
  positions = inputs.size - key.size - 1 + np.arange(key.size)
  return inputs, positions.astype(np.int32), key_ids.copy()


def check_depth(depth: float | None) -> None:
  if depth is not None and not 0.0 <= depth <= 1.0:
    raise ValueError(f"{depth=} must be in [0, 1] or None (uniform)")


def passkey_draw(rng: np.random.Generator, length: int, key_length: int,
                  depth: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  check_depth(depth)
  minimal = passkey_min_length(key_length)
  if length < minimal:
    raise ValueError(f"{length=} is below the passkey minimum {minimal} "
                     f"for {key_length=}")
  num_filler = length - minimal
  if depth is None:  # the official randint(0, n_garbage), both ends included
    num_prefix = int(rng.integers(0, num_filler + 1))
  else:
    num_prefix = int(math.floor(depth * num_filler + 0.5))
  key = rng.integers(0, 10, size=key_length)
  return passkey_sparse(key, num_prefix, num_filler - num_prefix)


def make_passkey_example(rng: np.random.Generator, length: int, *, key_length: int = 5,
                         depth: float | None = None) -> dict[str, np.ndarray]:
  """One passkey example of exactly ``length`` tokens.

  Args:
    rng: the example's generator (see :func:`example_rng`).
    length: total tokens, at least :func:`passkey_min_length` ``(key_length)``.
    key_length: digits of the key (one token each).
    depth: fraction of the filler placed before the key line (rounded to a token);
      None draws the prefix length uniformly in ``0..num_filler`` as the official
      prompt does.

  Returns:
    ``{"inputs", "mask", "targets", "target_mask"}``, each ``[length]``;
    ``target_mask.sum() == key_length``.
  """
  return probes.densify(*passkey_draw(rng, length, key_length, depth))


def passkey_batch(seed: int, n: int, length: int, *, key_length: int = 5,
                  depth: float | None = None, start: int = 0,
                  stream: int = 0) -> dict[str, np.ndarray]:
  """Examples ``start .. start+n-1`` of a passkey stream, stacked to ``[n, length]``."""
  if n < 1:
    raise ValueError(f"{n=} must be >= 1")
  return probes.stack([
      make_passkey_example(probes.example_rng(seed, start + i, stream=stream), length,
                           key_length=key_length, depth=depth) for i in range(n)])
