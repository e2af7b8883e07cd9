"""A residual stack of sequence mixers.

One block (``prenorm=True``)::

  x -> norm -> mixer -> dropout -> output (Dense 2d + GLU | Dense d | none) -> dropout -> + x
    [-> norm -> feed-forward (Dense ff_mult*d, GELU, dropout, Dense d) -> dropout -> + x]

With ``prenorm=False`` the norm follows each residual sum instead (post-norm), and the
backbone then has no final norm. This is the block of the S4 LRA models: the mixer ends
with its activation, the position-wise output linear with a GLU follows it. A mixer
that ends with its own output projection (Mamba-2) is used with ``output="none"`` and
``norm="rms"``, the Mamba-2 language-model block.

Shapes: ``x`` is ``[b, t, d]``; ``mask`` is bool ``[b, t]`` (True = real token).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from layers import get_spec

NORMS = ("layer", "batch", "rms")
# "none": the mixer ends with its own output projection (Mamba-2).
OUTPUTS = ("glu", "linear", "none")


def _dense(features: int, name: str, dtype: Any, param_dtype: Any,
           rank: int | None = None) -> nn.Module:
  """A Dense layer, or with ``rank`` the Low-Rank Transformer's factorised
  ``x E D + bias`` (layers.lowrank.LowRankDense)."""
  if rank is not None:
    from layers.lowrank import LowRankDense  # pylint: disable=g-import-not-at-top
    return LowRankDense(features, rank=rank, dtype=dtype,
                        param_dtype=param_dtype, name=name)
  return nn.Dense(
      features,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), ("embed", "mlp")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
      name=name,
  )


class Norm(nn.Module):
  """LayerNorm, RMSNorm or BatchNorm over features; BatchNorm statistics skip
  padding."""
  kind: str = "layer"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, *, train: bool = False):
    if self.kind == "layer":
      return nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype)(x)
    if self.kind == "rms":
      return nn.RMSNorm(epsilon=1e-5, dtype=self.dtype,
                        param_dtype=self.param_dtype)(x)
    if self.kind == "batch":
      bn_mask = None if mask is None else mask[..., None]
      return nn.BatchNorm(
          use_running_average=not train, momentum=0.9, epsilon=1e-5,
          dtype=self.dtype, param_dtype=self.param_dtype)(x, mask=bn_mask)
    raise ValueError(f"model.norm={self.kind!r} is not one of {NORMS}")


class ResidualBlock(nn.Module):
  """Norm, mixer, output projection and dropout around a residual connection."""
  mixer: str
  mixer_kwargs: dict
  d_model: int
  prenorm: bool = True
  norm: str = "layer"
  dropout: float = 0.0
  output: str = "glu"
  ff_mult: int = 0
  dense_rank: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, *, train: bool = False):
    d = self.d_model
    rank = self.dense_rank
    drop = nn.Dropout(self.dropout, deterministic=not train)

    z = Norm(self.norm, self.dtype, self.param_dtype, name="norm")(
        x, mask, train=train) if self.prenorm else x
    z = get_spec(self.mixer).module(
        d_model=d, **self.mixer_kwargs, dtype=self.dtype,
        param_dtype=self.param_dtype, name="mixer")(
            z, mask=mask, deterministic=not train)
    z = drop(z)
    if self.output == "glu":
      z = nn.glu(_dense(2 * d, "out", self.dtype, self.param_dtype, rank)(z),
                 axis=-1)
    elif self.output == "linear":
      z = _dense(d, "out", self.dtype, self.param_dtype, rank)(z)
    elif self.output != "none":
      raise ValueError(f"model.output={self.output!r} is not one of {OUTPUTS}")
    x = x + drop(z)
    if not self.prenorm:
      x = Norm(self.norm, self.dtype, self.param_dtype, name="norm")(
          x, mask, train=train)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    if self.ff_mult > 0:
      z = Norm(self.norm, self.dtype, self.param_dtype, name="ff_norm")(
          x, mask, train=train) if self.prenorm else x
      z = _dense(self.ff_mult * d, "ff_in", self.dtype, self.param_dtype,
                 rank)(z)
      z = drop(nn.gelu(z))
      z = _dense(d, "ff_out", self.dtype, self.param_dtype, rank)(z)
      x = x + drop(z)
      if not self.prenorm:
        x = Norm(self.norm, self.dtype, self.param_dtype, name="ff_norm")(
            x, mask, train=train)
    return x


class Backbone(nn.Module):
  """``n_layers`` residual blocks, with a final norm when ``prenorm``."""
  mixer: str
  mixer_kwargs: dict
  d_model: int
  n_layers: int
  prenorm: bool = True
  norm: str = "layer"
  dropout: float = 0.0
  output: str = "glu"
  ff_mult: int = 0
  dense_rank: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, *, train: bool = False):
    mixer_kwargs = dict(self.mixer_kwargs)
    # A mixer may share parameters across layers (Linformer's layerwise
    # projection): the backbone owns that module and hands it to every block.
    make_shared = get_spec(self.mixer).shared
    if make_shared is not None:
      shared = make_shared(self.d_model, **self.mixer_kwargs,
                           param_dtype=self.param_dtype)
      if shared is not None:
        mixer_kwargs["shared"] = shared
    for i in range(self.n_layers):
      x = ResidualBlock(
          mixer=self.mixer, mixer_kwargs=mixer_kwargs, d_model=self.d_model,
          prenorm=self.prenorm, norm=self.norm, dropout=self.dropout,
          output=self.output, ff_mult=self.ff_mult,
          dense_rank=self.dense_rank, dtype=self.dtype,
          param_dtype=self.param_dtype, name=f"block_{i}")(x, mask, train=train)
    if self.prenorm:
      x = Norm(self.norm, self.dtype, self.param_dtype, name="final_norm")(
          x, mask, train=train)
    return x
