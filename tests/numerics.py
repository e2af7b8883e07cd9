"""Relative errors for comparing a computed array with a reference in tests.

``rel_err(actual, expected) = max|actual - expected| / max(max|expected|,
TINY)``: the largest error of any element against the reference's scale (the
infinity norm of the difference over that of the reference), computed in
float64 (complex128 for complex inputs) whatever the inputs' dtypes. The
maximum rather than the Frobenius norm, so that one wrong element among many
right ones is not averaged away.

Test files import it as ``from numerics import rel_err``: ``tests/`` has no
``__init__.py``, so pytest (``rootdir`` import mode ``prepend``) puts
``tests/`` on ``sys.path`` before it imports the test modules.
"""
import numpy as np

# Below any reference scale a test compares against; an all-zero reference
# then turns any nonzero error into a huge relative one.
TINY = 1e-30


def _as_float64(x) -> np.ndarray:
  x = np.asarray(x)
  return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def rel_err(actual, expected) -> float:
  """``max|actual - expected| / max(max|expected|, TINY)`` in float64.

  The shapes broadcast as in numpy (as the helpers this replaced did).
  """
  a, b = _as_float64(actual), _as_float64(expected)
  if a.size == 0 or b.size == 0:
    return 0.0
  return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), TINY))


def rel_err_norm(actual, expected) -> float:
  """``||actual - expected|| / max(||expected||, TINY)`` (Frobenius norms) in
  float64: for a low-precision run against a float32 one (bfloat16), where
  every element carries its own rounding error and the overall error is the
  measure; :func:`rel_err` for everything else."""
  a, e = np.broadcast_arrays(_as_float64(actual), _as_float64(expected))
  return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), TINY))


def assert_close(actual, expected, *, rtol: float, what: str = "") -> None:
  """Raises ``AssertionError`` unless ``rel_err(actual, expected) < rtol``;
  the message names ``what``, the measured error and the tolerance."""
  err = rel_err(actual, expected)
  if not err < rtol:  # also catches NaN
    prefix = f"{what}: " if what else ""
    raise AssertionError(f"{prefix}relative error {err:.3e} >= rtol {rtol:.3e}"
                         f" (shape {np.shape(actual)})")


def assert_unbiased(draws, expected, *, z: float = 6.0, floor: float = 1e-5,
                    what: str = "") -> None:
  """Asserts that the mean over axis 0 of ``draws`` (one row per random draw,
  e.g. of dropout masks) is ``expected`` within ``z`` standard errors, per
  element.

  The standard error of a mean of ``n`` draws is the draws' sample standard
  deviation over ``sqrt(n)``: the bound shrinks with the number of draws,
  so a bias that is small against the spread of a single draw (a missing
  ``1 / (1 - rate)``) still fails once ``n`` is large. ``floor *
  max|expected|`` is added to it for float32 rounding, which matters where
  every draw gives (nearly) the same value. With ``z = 6`` an unbiased
  estimate of even a million elements fails with probability below 1e-2
  (normal tails), while the draws themselves are fixed by their seeds.
  """
  x, e = _as_float64(draws), _as_float64(expected)
  if x.shape[1:] != e.shape:
    raise ValueError(f"draws {x.shape} must be [n, *{e.shape}]")
  n = x.shape[0]
  if n < 2:
    raise ValueError(f"need at least 2 draws; got {n=}")
  se = np.std(x, axis=0, ddof=1) / np.sqrt(n)
  se = se + floor * max(float(np.max(np.abs(e))), TINY)
  worst = float(np.max(np.abs(x.mean(0) - e) / se))
  if not worst < z:
    prefix = f"{what}: " if what else ""
    raise AssertionError(
        f"{prefix}the mean of {n} draws is {worst:.2f} standard errors from "
        f"the expected value (at most {z:g} allowed)")


def assert_dropout_unbiased(layer, params, x, mask, cotangent, *,
                            draws: int = 1024) -> None:
  """Inverted dropout keeps every expectation: the mean over ``draws``
  dropout draws of ``layer``'s output and of the gradients (params and input)
  of ``sum(output * cotangent)`` equals the dropout-free value within
  :func:`assert_unbiased`'s bound, per element; one draw alone is far from
  it (the dropout is on)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def out_and_grads(rng):
    def f(params, x):
      kw = (dict(deterministic=True) if rng is None else
            dict(deterministic=False, rngs={"dropout": rng}))
      return layer.apply({"params": params}, x, mask, **kw)
    y, vjp = jax.vjp(f, params, x)
    return y, vjp(cotangent)

  y0, g0 = jax.jit(lambda: out_and_grads(None))()
  ys, gs = jax.jit(jax.vmap(out_and_grads))(
      jax.random.split(jax.random.key(0), draws))
  assert rel_err(ys[0], y0) > 0.1  # one draw: far from the mean
  assert_unbiased(ys, y0, what="output")
  # All gradients on one scale: the key bias's is zero up to rounding
  # (softmax is invariant to a shift of all keys), with or without dropout.
  flat = lambda tree, lead: jnp.concatenate(
      [jnp.reshape(a, lead + (-1,)) for a in jax.tree.leaves(tree)], -1)
  assert_unbiased(flat(gs, (draws,)), flat(g0, ()),
                  what="gradients (params and input)")
