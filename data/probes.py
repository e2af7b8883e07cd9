"""Long-context probes: passkey retrieval and multi-query associative recall (MQAR).

Both are token-level tasks for a causal language model. An element is::

  inputs:      int32 [t]  token ids
  mask:        bool  [t]  True where the position holds a real token
  targets:     int32 [t]  the token the model must predict AT position i, having seen
                          inputs[0..i] (0 where nothing is asked)
  target_mask: bool  [t]  the positions whose targets count (loss and accuracy)

Generators are pure numpy and deterministic: example ``i`` of a stream is drawn from
its own generator ``example_rng(seed, i, stream=...)``, so any example can be made
alone, a batch of ``n`` is the first ``n`` examples, and the study script can draw
evaluation batches at any length with :func:`passkey_batch` / :func:`mqar_batch`
without building a dataset. The TFDS builders (array_record, no TensorFlow) store
the same examples sparsely (``inputs``, ``target_positions``, ``target_ids``) and
``preprocess`` makes them dense.

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
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data import tasks

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


def _densify(inputs: np.ndarray, positions: np.ndarray, ids: np.ndarray,
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


def _stack(examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


# ----------------------------------------------------------------------------
# Passkey.

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


def _check_depth(depth: float | None) -> None:
  if depth is not None and not 0.0 <= depth <= 1.0:
    raise ValueError(f"{depth=} must be in [0, 1] or None (uniform)")


def _passkey_draw(rng: np.random.Generator, length: int, key_length: int,
                  depth: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  _check_depth(depth)
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
  return _densify(*_passkey_draw(rng, length, key_length, depth))


def passkey_batch(seed: int, n: int, length: int, *, key_length: int = 5,
                  depth: float | None = None, start: int = 0,
                  stream: int = 0) -> dict[str, np.ndarray]:
  """Examples ``start .. start+n-1`` of a passkey stream, stacked to ``[n, length]``."""
  if n < 1:
    raise ValueError(f"{n=} must be >= 1")
  return _stack([
      make_passkey_example(example_rng(seed, start + i, stream=stream), length,
                           key_length=key_length, depth=depth) for i in range(n)])


# ----------------------------------------------------------------------------
# MQAR.

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


def _check_mqar(length: int, num_kv_pairs: int, vocab_size: int, power_a: float) -> None:
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
  _check_mqar(length, num_kv_pairs, vocab_size, power_a)
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
  return _densify(*mqar_sparse(rng, length, num_kv_pairs=num_kv_pairs,
                               vocab_size=vocab_size, power_a=power_a,
                               random_non_queries=random_non_queries))


def mqar_batch(seed: int, n: int, length: int, *, num_kv_pairs: int = MQAR_NUM_KV_PAIRS,
               vocab_size: int = MQAR_VOCAB_SIZE, power_a: float = MQAR_POWER_A,
               random_non_queries: bool = True, start: int = 0,
               stream: int = 0) -> dict[str, np.ndarray]:
  """Examples ``start .. start+n-1`` of an MQAR stream, stacked to ``[n, length]``."""
  if n < 1:
    raise ValueError(f"{n=} must be >= 1")
  return _stack([
      make_mqar_example(example_rng(seed, start + i, stream=stream), length,
                        num_kv_pairs=num_kv_pairs, vocab_size=vocab_size,
                        power_a=power_a, random_non_queries=random_non_queries)
      for i in range(n)])


# ----------------------------------------------------------------------------
# TFDS builders (array_record, no TensorFlow): examples stored sparsely.

_FEATURES = {
    "inputs": tfds.features.Tensor(shape=(None,), dtype=np.int32),
    "target_positions": tfds.features.Tensor(shape=(None,), dtype=np.int32),
    "target_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
}


def _sizes_name(sizes: Mapping[str, int], seed: int) -> str:
  return f"n{sizes['train']}-{sizes['validation']}-{sizes['test']}_seed{seed}"


@dataclasses.dataclass(eq=False)
class PasskeyConfig(tfds.core.BuilderConfig):
  """Generated passkey data; everything that changes the data is in the name."""
  length: int = 2000
  key_length: int = 5
  depth: float | None = None
  num_train: int = DEFAULT_SIZES["train"]
  num_validation: int = DEFAULT_SIZES["validation"]
  num_test: int = DEFAULT_SIZES["test"]
  seed: int = 0

  @classmethod
  def make(cls, *, length: int, key_length: int, depth: float | None,
           sizes: Mapping[str, int], seed: int) -> "PasskeyConfig":
    _check_depth(depth)
    minimal = passkey_min_length(key_length)
    if length < minimal:
      raise ValueError(f"{length=} is below the passkey minimum {minimal} "
                       f"for {key_length=}")
    depth_name = "uniform" if depth is None else f"{depth:g}"
    name = (f"len{length}_key{key_length}_depth{depth_name}_"
            f"{_sizes_name(sizes, seed)}")
    return cls(name=name, length=length, key_length=key_length, depth=depth,
               num_train=sizes["train"], num_validation=sizes["validation"],
               num_test=sizes["test"], seed=seed,
               description=f"passkey, {length} tokens, {key_length}-digit key, "
               f"depth {depth_name}, seed {seed}")

  @property
  def sizes(self) -> dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}

  def sparse_example(self, split: str, index: int):
    rng = example_rng(self.seed, index, stream=SPLITS.index(split))
    return _passkey_draw(rng, self.length, self.key_length, self.depth)


@dataclasses.dataclass(eq=False)
class MqarConfig(tfds.core.BuilderConfig):
  """Generated MQAR data; everything that changes the data is in the name."""
  length: int = 2000
  num_kv_pairs: int = MQAR_NUM_KV_PAIRS
  vocab_size: int = MQAR_VOCAB_SIZE
  power_a: float = MQAR_POWER_A
  random_non_queries: bool = True
  num_train: int = DEFAULT_SIZES["train"]
  num_validation: int = DEFAULT_SIZES["validation"]
  num_test: int = DEFAULT_SIZES["test"]
  seed: int = 0

  @classmethod
  def make(cls, *, length: int, num_kv_pairs: int, vocab_size: int, power_a: float,
           random_non_queries: bool, sizes: Mapping[str, int],
           seed: int) -> "MqarConfig":
    _check_mqar(length, num_kv_pairs, vocab_size, power_a)
    name = (f"len{length}_kv{num_kv_pairs}_vocab{vocab_size}_a{power_a:g}_"
            f"noise{int(random_non_queries)}_{_sizes_name(sizes, seed)}")
    return cls(name=name, length=length, num_kv_pairs=num_kv_pairs,
               vocab_size=vocab_size, power_a=power_a,
               random_non_queries=random_non_queries, num_train=sizes["train"],
               num_validation=sizes["validation"], num_test=sizes["test"], seed=seed,
               description=f"MQAR, {length} tokens, {num_kv_pairs} pairs, vocabulary "
               f"{vocab_size}, power_a {power_a:g}, seed {seed}")

  @property
  def sizes(self) -> dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}

  def sparse_example(self, split: str, index: int):
    rng = example_rng(self.seed, index, stream=SPLITS.index(split))
    return mqar_sparse(rng, self.length, num_kv_pairs=self.num_kv_pairs,
                       vocab_size=self.vocab_size, power_a=self.power_a,
                       random_non_queries=self.random_non_queries)


_PASSKEY_DEFAULT_CONFIG = PasskeyConfig.make(
    length=2000, key_length=5, depth=None, sizes=DEFAULT_SIZES, seed=0)
_MQAR_DEFAULT_CONFIG = MqarConfig.make(
    length=2000, num_kv_pairs=MQAR_NUM_KV_PAIRS, vocab_size=MQAR_VOCAB_SIZE,
    power_a=MQAR_POWER_A, random_non_queries=True, sizes=DEFAULT_SIZES, seed=0)


class _ProbeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared by the probe builders: sparse token-level examples per split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Generated by data/probes.py."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default probes `importlib_resources`, not installed here.
    return epath.Path(__file__)

  def _probe_info(self, description: str, homepage: str,
                  citation: str) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=description,
        features=tfds.features.FeaturesDict(dict(_FEATURES)),
        homepage=homepage,
        citation=citation,
        # Record i of a split is example i of its stream (example_rng(seed, i,
        # stream=split index)), so a stored example can be regenerated alone;
        # the training pipeline shuffles.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # generated
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    config = self.builder_config
    for index in range(config.sizes[split]):
      inputs, positions, ids = config.sparse_example(split, index)
      yield index, {"inputs": inputs, "target_positions": positions, "target_ids": ids}


class ProbePasskey(_ProbeBuilder):
  """Passkey retrieval (Mohtashami & Jaggi 2023), word-level tokens."""

  BUILDER_CONFIGS = [_PASSKEY_DEFAULT_CONFIG]

  def _info(self) -> tfds.core.DatasetInfo:
    return self._probe_info(
        description=("Passkey retrieval: a key hidden in filler text, asked for at "
                     "the end; word-level ids of data/probes.py PASSKEY_VOCAB."),
        homepage="https://github.com/epfml/landmark-attention",
        citation=("@article{mohtashami2023landmark, title={Landmark Attention: "
                  "Random-Access Infinite Context Length for Transformers}, "
                  "author={Mohtashami, Amirkeivan and Jaggi, Martin}, "
                  "journal={arXiv:2305.16300}, year={2023}}"),
    )


class ProbeMqar(_ProbeBuilder):
  """Multi-query associative recall (Arora et al. 2023, Zoology)."""

  BUILDER_CONFIGS = [_MQAR_DEFAULT_CONFIG]

  def _info(self) -> tfds.core.DatasetInfo:
    return self._probe_info(
        description=("Multi-query associative recall: key-value pairs, then queries "
                     "of the keys at power-law distributed slots."),
        homepage="https://github.com/HazyResearch/zoology",
        citation=("@article{arora2023zoology, title={Zoology: Measuring and "
                  "Improving Recall in Efficient Language Models}, author={Arora, "
                  "Simran and Eyuboglu, Sabri and others}, journal={arXiv:2312.04927}, "
                  "year={2023}}"),
    )


# ----------------------------------------------------------------------------
# Tasks.


def _field(cfg: Any, name: str, default: Any = None) -> Any:
  return tasks.config_field(cfg, name, default)


def _sizes(data_config: Any) -> dict[str, int]:
  return {split: _field(data_config, f"num_{split}", DEFAULT_SIZES[split])
          for split in SPLITS}


def _reuse_class_config(config, builder_cls):
  # TFDS rejects a new config object named like a class config: reuse that one.
  return builder_cls.builder_configs.get(config.name, config)


def passkey_builder_config(data_config: Any) -> PasskeyConfig:
  """From config.data: max_length, key_length (5), passkey_depth (None = uniform),
  num_train/num_validation/num_test, generate_seed (0)."""
  config = PasskeyConfig.make(
      length=_field(data_config, "max_length", 2000),
      key_length=_field(data_config, "key_length", 5),
      depth=_field(data_config, "passkey_depth", None),
      sizes=_sizes(data_config), seed=_field(data_config, "generate_seed", 0))
  return _reuse_class_config(config, ProbePasskey)


def mqar_builder_config(data_config: Any) -> MqarConfig:
  """From config.data: max_length, num_kv_pairs (8), mqar_power_a (0.01),
  mqar_vocab_size (8192), mqar_random_non_queries (True), sizes, generate_seed."""
  config = MqarConfig.make(
      length=_field(data_config, "max_length", 2000),
      num_kv_pairs=_field(data_config, "num_kv_pairs", MQAR_NUM_KV_PAIRS),
      vocab_size=_field(data_config, "mqar_vocab_size", MQAR_VOCAB_SIZE),
      power_a=_field(data_config, "mqar_power_a", MQAR_POWER_A),
      random_non_queries=bool(_field(data_config, "mqar_random_non_queries", True)),
      sizes=_sizes(data_config), seed=_field(data_config, "generate_seed", 0))
  return _reuse_class_config(config, ProbeMqar)


def make_builder(name: str, data_config: Any) -> tfds.core.GeneratorBasedBuilder:
  """The builder of task ``name`` ("passkey" | "mqar") for ``config.data``."""
  if name == "passkey":
    cls, config = ProbePasskey, passkey_builder_config(data_config)
  elif name == "mqar":
    cls, config = ProbeMqar, mqar_builder_config(data_config)
  else:
    raise ValueError(f"unknown probe {name!r}; known: ('passkey', 'mqar')")
  return cls(config=config, data_dir=_field(data_config, "data_dir"),
             file_format="array_record")


def prepare(name: str, data_config: Any) -> tfds.core.GeneratorBasedBuilder:
  """Builds the dataset if it is missing and returns its builder."""
  builder = make_builder(name, data_config)
  builder.download_and_prepare()
  return builder


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


def preprocess(example: Mapping[str, Any], data_config: Any) -> dict[str, np.ndarray]:
  """Sparse stored example -> dense element padded to ``data.max_length``.

  Every element has ``loss_mask`` (the positions in the training loss): the
  answer positions (``target_mask``), or, with ``data.lm_loss``, every position
  that has a next token (:func:`with_lm_loss`).
  """
  element = _densify(example["inputs"], example["target_positions"],
                     example["target_ids"], _field(data_config, "max_length", 2000))
  if _field(data_config, "lm_loss", False):
    return with_lm_loss(element)
  element["loss_mask"] = element["target_mask"].copy()
  return element


def _make_task(name: str, vocab_size) -> tasks.Task:

  def info(data_config):
    v = vocab_size(data_config)
    return tasks.TaskInfo(num_classes=v,
                          max_length=_field(data_config, "max_length", 2000),
                          input_kind="tokens", vocab_size=v, pad_id=PAD_ID,
                          output_kind="tokens")

  def sources(data_config):
    builder = prepare(name, data_config)
    return {split: builder.as_data_source(split=split) for split in SPLITS}

  return tasks.Task(name=name, info=info, sources=sources, preprocess=preprocess)


PASSKEY_TASK = tasks.register_task(
    _make_task("passkey", lambda data_config: PASSKEY_VOCAB_SIZE))
MQAR_TASK = tasks.register_task(_make_task(
    "mqar", lambda data_config: _field(data_config, "mqar_vocab_size", MQAR_VOCAB_SIZE)))
