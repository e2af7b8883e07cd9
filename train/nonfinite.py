"""Non-finite training steps: found inside the step, never applied, named.

The train step checks its loss, every gradient and every updated variable
(parameters, batch statistics). A step where one of them is not finite keeps
the state it started from (only ``step`` advances) and reports which leaves
were not finite; the host stops the run there (``NonFiniteError``, naming the
step and the first such gradients and parameters), or skips up to
``train.max_nonfinite_steps`` such steps first. So no checkpoint ever holds a
non-finite state, and a metric is never the mean of a NaN.
"""
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteError(FloatingPointError):
  """A training step or an evaluation produced a non-finite value."""


def leaf_names(tree) -> list[str]:
  """``a/b/c`` paths of ``tree``'s leaves, in ``jax.tree.leaves`` order."""
  return [jax.tree_util.keystr(path, simple=True, separator="/")
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def finite_leaves(tree) -> jax.Array:
  """``bool [leaves]``: whether every element of each leaf is finite
  (integer leaves always are)."""
  flags = [jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
           else jnp.ones((), bool) for x in jax.tree.leaves(tree)]
  return jnp.stack(flags) if flags else jnp.ones((0,), bool)


def check(loss: jax.Array, grads, new_variables) -> tuple[jax.Array, dict]:
  """``(finite, health)``: ``finite`` is True when ``loss``, every gradient
  and every updated variable are finite; ``health`` holds the per-leaf flags
  (``loss``, ``grads``, ``variables``) the host names the culprits from."""
  health = {"loss": jnp.isfinite(loss), "grads": finite_leaves(grads),
            "variables": finite_leaves(new_variables)}
  finite = health["loss"] & jnp.all(health["grads"]) & jnp.all(
      health["variables"])
  return finite, dict(health, finite=finite)


def select(finite: jax.Array, new, old):
  """``new`` where ``finite``, else ``old`` (leaf by leaf)."""
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def describe(step: int, health: Mapping[str, Any], grad_names: Sequence[str],
             variable_names: Sequence[str], *, limit: int = 3) -> str:
  """One line naming what was not finite at ``step``."""
  def first(flags, names):
    bad = [n for n, ok in zip(names, np.asarray(flags)) if not ok]
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return ", ".join(bad[:limit]) + more
  parts = []
  if not bool(health["loss"]):
    parts.append("the loss")
  if not np.all(health["grads"]):
    parts.append("the gradients of " + first(health["grads"], grad_names))
  if not np.all(health["variables"]):
    parts.append("the updated " + first(health["variables"], variable_names))
  return f"step {step}: non-finite {'; '.join(parts)}"


def check_metrics(where: str, metrics: Mapping[str, float]) -> None:
  """Raises ``NonFiniteError`` when a metric of ``where`` is not finite."""
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    raise NonFiniteError(
        f"{where}: non-finite {bad} (the parameters are finite: every "
        "training step checks them); the run stops rather than record it")
