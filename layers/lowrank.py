"""Low-Rank Transformer layers and the SVD conversion of trained dense models.

Winata et al., "Lightweight and Efficient End-to-End Speech Recognition Using
Low-Rank Transformer" (ICASSP 2020): every weight matrix ``W [din, dout]`` of
the attention and feed-forward blocks is replaced by a product ``E D`` of
rank r (their "linear encoder-decoder", no nonlinearity in between), cutting
parameters and multiply-adds from ``din dout`` to ``r (din + dout)``.
Greenformers (Cahyawijaya, arXiv 2108.10808; Winata et al. 2021, repo
SamuelCahyawijaya/greenformers) applies the same factorisation to any
trained model post hoc from a truncated SVD, ``W ~ U_r S_r V_r^T``; here
``E = U_r sqrt(S_r)``, ``D = sqrt(S_r) V_r^T`` (``svd_lowrank``).
"""
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from configs import checks
from layers import attention
from layers.attention import Attention
from layers.registry import MixerContext, register_mixer

# The dense layers of a transformer stack: the attention mixer's projections
# and the backbone's output / feed-forward layers (models/backbone.py names).
TRANSFORMER_DENSE_PATHS = r"(^|/)(query|key|value|out|ff_in|ff_out)$"


class LowRankDense(nn.Module):
  """``y = (x E) D + bias``, a rank-``rank`` ``nn.Dense``.

  Params: ``E [din, rank]``, ``D [rank, features]``, ``bias [features]``.
  Init: ``E`` and ``D`` ``lecun_normal`` (fan-in ``din`` and ``rank``), so
  ``x E D`` has the variance a ``lecun_normal`` Dense gives; zero bias. (The
  LRT paper does not state its init; Greenformers' ``LED`` layer is two torch
  Linear layers with their defaults.) ``kernel_axes`` are the logical axes a
  full kernel would have: ``E`` gets ``(kernel_axes[0], None)``, ``D``
  ``(None, kernel_axes[1])``, the bias ``(kernel_axes[1],)``.
  """
  features: int
  rank: int
  use_bias: bool = True
  kernel_axes: tuple[str | None, str | None] = ("embed", "mlp")
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Float[Array, "... din"]) -> Float[Array, "... dout"]:
    if self.rank < 1 or self.features < 1:
      raise ValueError(f"rank={self.rank} and features={self.features} must "
                       "be >= 1")
    din = x.shape[-1]
    a_in, a_out = self.kernel_axes
    init = nn.initializers.lecun_normal()
    E = self.param("E", nn.with_logical_partitioning(init, (a_in, None)),
                   (din, self.rank), self.param_dtype)
    D = self.param("D", nn.with_logical_partitioning(init, (None, a_out)),
                   (self.rank, self.features), self.param_dtype)
    x = x.astype(self.dtype)
    y = jnp.dot(jnp.dot(x, E.astype(self.dtype)), D.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), (a_out,)), (self.features,),
                        self.param_dtype)
      y = y + bias.astype(self.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
    return y


def config() -> ml_collections.ConfigDict:
  """``model.lowrank``: the fields of :class:`LowRankAttention`, the
  ``attention`` mixer's and ``rank``."""
  c = attention.config()
  # Rank r of every projection, E [d, r] then D [r, d]; see also
  # model.dense_rank for the backbone's dense layers.
  c.rank = 64
  return c


def validate(c: ml_collections.ConfigDict, ctx: MixerContext) -> None:
  """Checks ``model.lowrank`` (``ctx.prefix``) before anything is built."""
  attention.validate(c, ctx)
  checks.check_int(f"{ctx.prefix}.rank", c.rank, minimum=1)


@register_mixer("lowrank", config=config, validate=validate)
class LowRankAttention(Attention):
  """Low-Rank Transformer multi-head attention (LRT's "LRMHA").

  The ``attention`` mixer (``layers.attention.Attention``: same fields, same
  kernel ``kernels.attention.attention``, same padding, causal,
  segment and dropout behaviour) with each of ``query``, ``key``, ``value``
  and ``out`` a :class:`LowRankDense` of ``rank`` (params ``E``, ``D``,
  ``bias`` under the same names), so ``svd_lowrank`` maps a trained
  ``attention`` mixer's params onto this one's one to one.

  ``rank`` defaults to 64 (a quarter of width 256; pick ``r < din dout /
  (din + dout)`` to save parameters).
  """
  rank: int = 64

  def _dense(self, features, axes, name):
    return LowRankDense(features, self.rank, use_bias=self.use_bias,
                        kernel_axes=tuple(axes), dtype=self.dtype,
                        param_dtype=self.param_dtype, name=name)


# ------------------------------------------------------------- conversion
@dataclasses.dataclass
class SvdReport:
  """What ``svd_lowrank`` did.

  Attributes:
    rank: the requested rank.
    params_before, params_after: parameter counts of the whole tree.
    rel_errors: per converted kernel path, ``||W - E D||_F / ||W||_F``.
    shapes: per converted kernel path, ``(din, dout)``.
  """
  rank: int
  params_before: int
  params_after: int
  rel_errors: dict[str, float]
  shapes: dict[str, tuple[int, int]]

  def summary(self) -> str:
    lines = [f"rank {self.rank}: {self.params_before} -> {self.params_after} "
             f"params ({self.params_after / max(self.params_before, 1):.3f}x)"]
    lines += [f"  {path} {self.shapes[path]}: rel. error {err:.3e}"
              for path, err in self.rel_errors.items()]
    return "\n".join(lines)


def _unbox(leaf):
  return leaf.unbox() if isinstance(leaf, nn.meta.AxisMetadata) else leaf


def _count(tree) -> int:
  leaves = jax.tree.leaves(tree, is_leaf=lambda l: isinstance(
      l, nn.meta.AxisMetadata))
  return int(sum(np.size(_unbox(l)) for l in leaves))


def _is_dense(node) -> bool:
  return (isinstance(node, Mapping) and "kernel" in node
          and set(node) <= {"kernel", "bias"}
          and np.ndim(_unbox(node["kernel"])) == 2)


def factorize(kernel: Float[ArrayLike, "din dout"], rank: int
              ) -> tuple[np.ndarray, np.ndarray, float]:
  """Truncated SVD ``W ~ E D``: ``E = U_r sqrt(S_r)``, ``D = sqrt(S_r) V_r^T``.

  Computed in float64. A rank above ``min(din, dout)`` pads ``E`` with zero
  columns and ``D`` with zero rows (exact, and the shapes of a
  ``LowRankDense(rank)``; those padded entries get zero gradients, so they
  stay zero in training). Returns ``(E, D, ||W - E D||_F / ||W||_F)``.
  """
  W = np.asarray(kernel, np.float64)
  if W.ndim != 2 or rank < 1:
    raise ValueError(f"need a 2-D kernel and rank >= 1; got {W.shape=}, "
                     f"{rank=}")
  U, S, Vt = np.linalg.svd(W, full_matrices=False)
  r = min(rank, S.size)
  root = np.sqrt(S[:r])
  E = np.zeros((W.shape[0], rank))
  D = np.zeros((rank, W.shape[1]))
  E[:, :r] = U[:, :r] * root[None, :]
  D[:r] = root[:, None] * Vt[:r]
  err = np.linalg.norm(W - E @ D) / max(np.linalg.norm(W), 1e-300)
  return E, D, float(err)


def svd_lowrank(
    params: Mapping,
    rank: int,
    *,
    paths: str | Sequence[str] | None = None,
) -> tuple[dict, SvdReport]:
  """Replaces Dense kernels by their rank-``rank`` factors ``{E, D}``.

  Every sub-dict ``{"kernel" [din, dout], "bias"?}`` whose ``/``-joined path
  (e.g. ``backbone/block_0/mixer/query``) matches one of the regexes
  ``paths`` (``re.search``; None = every Dense) becomes ``{"E", "D",
  "bias"?}`` as :class:`LowRankDense` names them, bias kept; everything else
  is copied. Logical-axis boxes (``nn.with_logical_partitioning``) are kept:
  ``E`` gets the kernel's input axis, ``D`` its output axis, so the result
  has the tree of the low-rank model's ``init``. Use
  ``TRANSFORMER_DENSE_PATHS`` to convert an ``attention`` stack (mixer
  projections and the backbone's ``out``/``ff_in``/``ff_out``) to ``lowrank``
  with ``model.dense_rank``.

  Returns:
    ``(new_params, report)``; see :class:`SvdReport` and
    :func:`relative_output_error` for the model-level error.
  """
  if isinstance(paths, str):
    paths = [paths]
  patterns = None if paths is None else [re.compile(p) for p in paths]
  errors, shapes = {}, {}

  def convert(node, prefix):
    out = {}
    for name, sub in node.items():
      path = f"{prefix}/{name}" if prefix else str(name)
      if _is_dense(sub) and (patterns is None
                             or any(p.search(path) for p in patterns)):
        kernel = sub["kernel"]
        W = _unbox(kernel)
        E, D, errors[path] = factorize(W, rank)
        shapes[path] = tuple(W.shape)
        E, D = jnp.asarray(E, W.dtype), jnp.asarray(D, W.dtype)
        if isinstance(kernel, nn.meta.AxisMetadata):
          a_in, a_out = kernel.names
          E = kernel.replace(value=E, names=(a_in, None))
          D = kernel.replace(value=D, names=(None, a_out))
        out[name] = {"E": E, "D": D}
        if "bias" in sub:
          out[name]["bias"] = sub["bias"]
      elif isinstance(sub, Mapping):
        out[name] = convert(sub, path)
      else:
        out[name] = sub
    return out

  new = convert(params, "")
  if not errors:
    raise ValueError(f"no Dense kernel matched {paths=}")
  return new, SvdReport(rank=rank, params_before=_count(params),
                        params_after=_count(new), rel_errors=errors,
                        shapes=shapes)


def relative_output_error(
    apply_a: Callable[..., Array], variables_a: Any,
    apply_b: Callable[..., Array], variables_b: Any, *args, **kwargs,
) -> float:
  """``||f_b(x) - f_a(x)||_F / ||f_a(x)||_F`` on one batch.

  ``apply_a``/``apply_b`` are e.g. ``model.apply`` of the dense and the
  converted model; ``args``/``kwargs`` (the batch) go to both.
  """
  ya = np.asarray(apply_a(variables_a, *args, **kwargs), np.float64)
  yb = np.asarray(apply_b(variables_b, *args, **kwargs), np.float64)
  return float(np.linalg.norm(yb - ya) / max(np.linalg.norm(ya), 1e-300))
