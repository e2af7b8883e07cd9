"""LRA ListOps generator and file format: grammar, trees, the official TSVs, tokens.

ListOps (Nangia & Bowman, 2018) in the Long Range Arena version (Tay et al.,
2021): a prefix expression over the digits 0-9 with the operators MIN, MAX, MED
(median) and SM (sum modulo 10), nested up to depth 10; the target is the value of
the expression, a ten-way classification.

Facts taken from the official code (google-research/long-range-arena,
``lra_benchmarks/data/listops.py``, the generator; ``lra_benchmarks/listops/
input_pipeline.py``, the tokenisation) and from state-spaces/s4
``src/dataloaders/lra.py`` (``listops_tokenizer``, ``ListOps``):

* Operators ``[MIN [MAX [MED [SM`` (FIRST/LAST exist but are commented out of
  ``OPERATORS``), values ``range(10)``, closing token ``]``.
* ``VALUE_P = 0.25`` is the probability of an *operator*, not of a leaf: a node at
  ``depth < max_depth`` draws ``r = random.random()`` and becomes a leaf iff
  ``r > VALUE_P``, so leaves have probability 0.75; a node at ``depth ==
  max_depth`` is always a leaf (the root is depth 1, ``max_depth = 10``, so at
  most 9 operators are nested).
* An operator takes ``random.randint(2, max_args)`` arguments with the flag
  default ``max_args = 10``; ``randint`` includes both ends, so 2..10 arguments.
  The operator is drawn with ``random.choice`` *after* its arguments. We follow
  the same draw order, so a ``random.Random`` seeded like the official
  ``random`` module yields the same trees.
* Length = number of tokens without parentheses (1 per value, operator token +
  ``]`` per operator). Kept iff ``min_length < length < max_length`` (strict, flag
  defaults 500 and 2000), deduplicated (a ``set`` of trees), sizes 96000 / 2000 /
  2000 for train / val / test.
* Serialisation: an operator with arguments a1..an is the left-nested pair
  ``((...((op, a1), a2)..., an), ])`` and every pair prints as ``( x y )``, e.g.
  MAX(2, MIN(9, 4)) is ``( ( ( [MAX 2 ) ( ( ( [MIN 9 ) 4 ) ] ) ) ] )``.
* Value: MED is ``int(np.median(args))`` (even count: mean of the two middle
  values, truncated), SM is ``sum(args) % 10``.
* Files: ``csv.writer(f, delimiter='\\t')`` (so ``\\r\\n`` line ends) with header
  ``Source\\tTarget``, named ``basic_{train,val,test}.tsv``; the release puts them
  in ``lra_release/listops-1000/``.
* Tokens: ``]`` is renamed ``X``, ``(`` and ``)`` are deleted, then the string is
  split on whitespace (LRA: regex replace + ``WhitespaceTokenizer``; S4: the same
  with ``str.translate``), giving 15 distinct tokens.

Vocabulary. Neither official id assignment is reproducible: LRA builds a
``TokenTextEncoder`` from ``list(set(tokens of the first ~1000 val examples))``
(Python's hash-randomised set order): pad 0, the 15 tokens 1..15, one OOV bucket
16, ``vocab_size = 17``; S4 uses torchtext (``<pad>`` 0, ``<unk>`` 1, ``<eos>`` 2
appended to every sequence by default, then tokens by training-set frequency). We
keep LRA's layout with a fixed order (``VOCAB``): pad 0, digits ``0``..``9`` ->
1..10, ``[MIN`` 11, ``[MAX`` 12, ``[MED`` 13, ``[SM`` 14, ``X`` (``]``) 15, OOV 16
(never produced: unknown tokens are an error), ``VOCAB_SIZE = 17``. Sequences are
LRA's (no BOS/EOS).
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import multiprocessing
import os
import pathlib
import random
import re
from typing import Iterator, Mapping, Sequence, Union

import numpy as np
import tqdm

# ----------------------------------------------------------------------------
# Grammar (lra_benchmarks/data/listops.py).
MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
END = "]"
VALUES = tuple(range(10))
# Probability that a node above the depth limit is an operator (official name).
VALUE_P = 0.25
NUM_CLASSES = 10

SPLITS = ("train", "validation", "test")
SPLIT_FILES = {
    "train": "basic_train.tsv",
    "validation": "basic_val.tsv",
    "test": "basic_test.tsv",
}
OFFICIAL_SIZES = {"train": 96_000, "validation": 2_000, "test": 2_000}
HEADER = "Source\tTarget"
# The release folder holding the three files (data.release finds it).
RELEASE_DIR = "listops-1000"

# ----------------------------------------------------------------------------
# Vocabulary: LRA TokenTextEncoder layout (pad 0, tokens, one OOV id) in a fixed order.
PAD_ID = 0
VOCAB = tuple(str(v) for v in VALUES) + OPERATORS + ("X",)
TOKEN_TO_ID = {tok: i + 1 for i, tok in enumerate(VOCAB)}
OOV_ID = len(VOCAB) + 1
VOCAB_SIZE = len(VOCAB) + 2  # + pad + OOV bucket, as LRA's encoder.vocab_size
_TOKEN_TRANSLATION = str.maketrans({"]": "X", "(": None, ")": None})

# A tree is a value 0..9 or (operator, arguments).
Tree = Union[int, tuple[str, tuple["Tree", ...]]]


@dataclasses.dataclass(frozen=True)
class GeneratorOptions:
  """Shape of the generated expressions (defaults: the official flags).

  Attributes:
    min_length: keep expressions with ``min_length < length`` (strict, as LRA).
    max_length: keep expressions with ``length < max_length`` (strict, as LRA).
    max_depth: nodes at this depth are leaves; the root has depth 1.
    max_args: an operator takes ``randint(2, max_args)`` arguments (inclusive).
    value_p: probability of an operator above ``max_depth`` (LRA ``VALUE_P``).
  """
  min_length: int = 500
  max_length: int = 2000
  max_depth: int = 10
  max_args: int = 10
  value_p: float = VALUE_P

  def __post_init__(self):
    if self.max_length - self.min_length < 2:
      raise ValueError(
          f"no length n with {self.min_length=} < n < {self.max_length=}")
    if self.max_args < 2:
      raise ValueError(f"{self.max_args=} must be >= 2")
    if self.max_depth < 2:
      raise ValueError(f"{self.max_depth=} must be >= 2 (depth 1 is the root)")
    if not 0.0 < self.value_p <= 1.0:
      raise ValueError(f"{self.value_p=} must be in (0, 1]")


# ----------------------------------------------------------------------------
# Trees, strings, values.


def sample_tree(rng: random.Random, options: GeneratorOptions,
                depth: int = 1) -> tuple[Tree, int]:
  """Draws one expression; returns ``(tree, length in tokens without parentheses)``."""
  # LRA: at depth < max_depth draw r; a leaf iff r > VALUE_P; at max_depth a leaf.
  is_operator = depth < options.max_depth and rng.random() <= options.value_p
  if is_operator:
    num_args = rng.randint(2, options.max_args)
    args, length = [], 2  # the operator token and "]"
    for _ in range(num_args):
      arg, arg_length = sample_tree(rng, options, depth + 1)
      args.append(arg)
      length += arg_length
    return (rng.choice(OPERATORS), tuple(args)), length
  return rng.choice(VALUES), 1


def _emit(tree: Tree, out: list[str]) -> None:
  if isinstance(tree, int):
    out.append(str(tree))
    return
  op, args = tree
  out.extend(["("] * (len(args) + 1))
  out.append(op)
  for arg in args:
    _emit(arg, out)
    out.append(")")
  out.extend([END, ")"])


def tree_to_source(tree: Tree) -> str:
  """The official Source string of a tree (left-nested pairs, see module doc)."""
  out: list[str] = []
  _emit(tree, out)
  return " ".join(out)


def _apply(op: str, args: Sequence[int]) -> int:
  if op == MIN:
    return min(args)
  if op == MAX:
    return max(args)
  if op == MED:
    # int(np.median(args)): mean of the two middle values when even, truncated.
    ordered = sorted(args)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
  if op == SUM_MOD:
    return sum(args) % 10
  raise ValueError(f"unknown operator {op!r}; known: {OPERATORS}")


def tree_value(tree: Tree) -> int:
  if isinstance(tree, int):
    return tree
  op, args = tree
  return _apply(op, [tree_value(a) for a in args])


def parse_source(source: str) -> Tree:
  """Parses an official Source string, checking its exact parenthesisation."""
  stack: list[tuple[str, list[Tree]]] = []
  result: list[Tree] = []

  def attach(node: Tree) -> None:
    if stack:
      stack[-1][1].append(node)
    elif result:
      raise ValueError(f"more than one top-level expression in {source[:80]!r}")
    else:
      result.append(node)

  for tok in source.split():
    if tok in ("(", ")"):
      continue
    if tok in OPERATORS:
      stack.append((tok, []))
    elif tok == END:
      if not stack:
        raise ValueError(f"unmatched {END!r} in {source[:80]!r}")
      op, args = stack.pop()
      if not args:
        raise ValueError(f"operator {op!r} without arguments in {source[:80]!r}")
      attach((op, tuple(args)))
    elif len(tok) == 1 and tok.isdigit():
      attach(int(tok))
    else:
      raise ValueError(f"unknown token {tok!r} in {source[:80]!r}")
  if stack:
    raise ValueError(f"{len(stack)} unclosed operator(s) in {source[:80]!r}")
  if not result:
    raise ValueError(f"empty expression {source!r}")
  tree = result[0]
  if tree_to_source(tree) != " ".join(source.split()):
    raise ValueError(f"parentheses differ from the official format in {source[:80]!r}")
  return tree


def evaluate_source(source: str) -> int:
  """The value (the official Target) of a Source string."""
  return tree_value(parse_source(source))


# ----------------------------------------------------------------------------
# Generation: deterministic in (seed, options, sizes), independent of workers.

_CHUNK_SIZE = 256  # accepted expressions per independently seeded chunk
_MAX_DRAWS_PER_CHUNK = 2_000_000


def _chunk_seed(seed: int, chunk: int) -> int:
  state = np.random.SeedSequence([seed, chunk]).generate_state(2, dtype=np.uint32)
  return int(state[0]) << 32 | int(state[1])


def _generate_chunk(seed: int, chunk: int,
                    options: GeneratorOptions) -> list[tuple[str, int]]:
  """``_CHUNK_SIZE`` (Source, Target) pairs whose length is in range."""
  rng = random.Random(_chunk_seed(seed, chunk))
  examples = []
  for _ in range(_MAX_DRAWS_PER_CHUNK):
    tree, length = sample_tree(rng, options)
    if options.min_length < length < options.max_length:
      examples.append((tree_to_source(tree), tree_value(tree)))
      if len(examples) == _CHUNK_SIZE:
        return examples
  raise ValueError(
      f"only {len(examples)} of {_MAX_DRAWS_PER_CHUNK} expressions had a length in "
      f"({options.min_length}, {options.max_length}) with {options.max_depth=}, "
      f"{options.max_args=}; widen the range")


def _generate_chunk_star(args) -> list[tuple[str, int]]:
  return _generate_chunk(*args)


def generate_examples(total: int, *, seed: int = 0,
                      options: GeneratorOptions = GeneratorOptions(),
                      workers: int = 1,
                      progress: bool | None = None) -> list[tuple[str, int]]:
  """``total`` distinct (Source, Target) pairs.

  Chunks of ``_CHUNK_SIZE`` accepted expressions are drawn from generators seeded
  by ``(seed, chunk index)`` and merged in chunk order with deduplication, so the
  result depends on the seed and options only, not on ``workers``.

  Args:
    total: number of distinct examples.
    seed: generation seed.
    options: expression shape and length range.
    workers: processes (spawned, so safe from a process that runs JAX threads).
    progress: tqdm bar; None shows it for 10000 or more examples.
  """
  if total < 0:
    raise ValueError(f"{total=} must be >= 0")
  if progress is None:
    progress = total >= 10_000
  unique: dict[str, int] = {}
  next_chunk = 0
  executor = None
  if workers > 1:
    executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))
  try:
    with tqdm.tqdm(total=total, desc="ListOps: generating", unit="ex",
                   disable=not progress) as bar:
      while len(unique) < total:
        # Enough chunks for what is missing (+1 for duplicates), a round at a time.
        missing = total - len(unique)
        num_chunks = -(-missing // _CHUNK_SIZE) + 1
        if executor is not None:
          num_chunks = -(-num_chunks // workers) * workers
        args = [(seed, c, options) for c in range(next_chunk, next_chunk + num_chunks)]
        next_chunk += num_chunks
        if executor is not None:
          results = executor.map(_generate_chunk_star, args)
        else:
          results = map(_generate_chunk_star, args)
        before = len(unique)
        for examples in results:
          for source, target in examples:
            if len(unique) < total and source not in unique:
              unique[source] = target
              bar.update(1)
        if len(unique) == before:
          raise ValueError(
              f"{num_chunks * _CHUNK_SIZE} new expressions were all duplicates after "
              f"{before} distinct ones; ({options.min_length}, {options.max_length}) "
              f"cannot hold {total=} distinct expressions")
  finally:
    if executor is not None:
      executor.shutdown()
  return list(unique.items())


def generate_splits(sizes: Mapping[str, int], *, seed: int = 0,
                    options: GeneratorOptions = GeneratorOptions(),
                    workers: int = 1,
                    progress: bool | None = None) -> dict[str, list[tuple[str, int]]]:
  """Distinct examples split in order train, validation, test (as LRA slices its set)."""
  total = sum(sizes[s] for s in SPLITS)
  examples = generate_examples(total, seed=seed, options=options, workers=workers,
                               progress=progress)
  splits, start = {}, 0
  for split in SPLITS:
    splits[split] = examples[start:start + sizes[split]]
    start += sizes[split]
  return splits


def write_tsv(path: str | os.PathLike, examples: Sequence[tuple[str, int]]) -> None:
  """Writes the official format (csv.writer, tab delimiter, ``\\r\\n``), atomically."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f, delimiter="\t")
    writer.writerow(HEADER.split("\t"))
    writer.writerows(examples)
  os.replace(tmp, path)


def write_splits(out_dir: str | os.PathLike,
                 splits: Mapping[str, Sequence[tuple[str, int]]]) -> None:
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  for split in SPLITS:
    write_tsv(out_dir / SPLIT_FILES[split], splits[split])


# ----------------------------------------------------------------------------
# Tokenisation and the reader of the official files.


def tokenize(source: str) -> list[str]:
  """LRA/S4 tokens: ``]`` -> ``X``, parentheses deleted, split on whitespace."""
  return source.translate(_TOKEN_TRANSLATION).split()


def encode(source: str) -> np.ndarray:
  """int32 token ids (see ``VOCAB``); raises ValueError on an unknown token."""
  tokens = tokenize(source)
  try:
    return np.array([TOKEN_TO_ID[t] for t in tokens], dtype=np.int32)
  except KeyError as e:
    raise ValueError(f"unknown token {e.args[0]!r}; known tokens: {VOCAB}") from None


_TARGET_RE = re.compile(r"[+-]?\d+")


def read_tsv(path: str | os.PathLike) -> Iterator[tuple[int, np.ndarray, int]]:
  """Yields ``(1-based line number, token ids, target)`` of an official TSV file.

  Raises:
    ValueError: naming the file and line, for a bad header, a line without
      exactly two tab-separated fields, a non-integer target, a target outside
      0..9, an empty Source or an unknown token.
  """
  path = os.fspath(path)
  with open(path, newline="") as f:
    header = f.readline().rstrip("\r\n").lstrip("\ufeff")
    if header != HEADER:
      raise ValueError(f"{path}:1: expected the header {HEADER!r}, got {header[:80]!r}")
    for line_number, line in enumerate(f, start=2):
      line = line.rstrip("\r\n")
      fields = line.split("\t")
      if len(fields) != 2:
        raise ValueError(f"{path}:{line_number}: expected 2 tab-separated fields "
                         f"(Source, Target), got {len(fields)}: {line[:80]!r}")
      source, target = fields
      if not _TARGET_RE.fullmatch(target.strip()):
        raise ValueError(f"{path}:{line_number}: Target {target!r} is not an integer")
      value = int(target)
      if not 0 <= value < NUM_CLASSES:
        raise ValueError(f"{path}:{line_number}: Target {value} is outside 0..9")
      try:
        ids = encode(source)
      except ValueError as e:
        raise ValueError(f"{path}:{line_number}: {e}") from None
      if not ids.size:
        raise ValueError(f"{path}:{line_number}: empty Source")
      yield line_number, ids, value
