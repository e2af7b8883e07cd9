"""Sequence classification: encoder, backbone, pooling, linear head.

Pairs of sequences (``inputs [b, 2, t]``, LRA Retrieval) go through the same
encoder and backbone as one batch of ``2b`` (the LRA two-tower model: one
shared encoder), are pooled to ``x1, x2``, and classified by LRA's dual head
(lra_benchmarks/models/layers/common_layers.py ``classifier_head_dual`` with
``interaction="NLI"``): ``[x1, x2, x1 * x2, x1 - x2]`` -> Dense(m) -> ReLU ->
Dense(m // 2) -> ReLU -> Dense(classes), ``m = model.pair_mlp_dim``.

Token inputs ``[b, t]`` go through an embedding, continuous inputs ``[b, t, c]``
through a Dense encoder (as the S4 LRA models do for pixels). Pooling:
  * ``mean``: average over real tokens (the LRA/S4 default);
  * ``last``: the output at the last real token (for causal mixers);
  * ``max``:  elementwise max over real tokens;
  * ``cls``:  a learned token prepended to the sequence; its output is the summary
    (meaningful for bidirectional mixers, which let it see the whole sequence).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from layers import get_spec
from models.backbone import Backbone

POOLS = ("mean", "last", "max", "cls")


def pool(x, mask, kind: str):
  """Pools ``x [b, t, d]`` over real positions (``mask [b, t]``) to ``[b, d]``."""
  m = mask[..., None].astype(x.dtype)
  if kind == "mean":
    return (x * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
  if kind == "max":
    return jnp.where(mask[..., None], x, jnp.finfo(x.dtype).min).max(axis=1)
  if kind == "last":
    last = jnp.maximum(mask.sum(axis=1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
  if kind == "cls":
    return x[:, 0]
  raise ValueError(f"model.pool={kind!r} is not one of {POOLS}")


def encode_inputs(inputs, *, input_kind: str, d_model: int,
                  vocab_size: int | None, dtype: Any, param_dtype: Any):
  """Token ids ``[b, t]`` -> Embed; continuous ``[b, t, c]`` -> Dense: ``[b, t, d]``.

  Call it inside a compact ``__call__``: its layers (``embed`` or ``encoder``)
  become the caller's submodules.
  """
  if input_kind == "tokens":
    if vocab_size is None:
      raise ValueError("token inputs need vocab_size")
    return nn.Embed(
        vocab_size, d_model, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("vocab", "embed")),
        name="embed")(inputs)
  if input_kind == "continuous":
    return nn.Dense(
        d_model, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, "embed")),
        name="encoder")(inputs)
  raise ValueError(f"{input_kind=} is not 'tokens' or 'continuous'")


class SequenceClassifier(nn.Module):
  """Encoder -> Backbone -> pool -> Dense(num_classes)."""
  num_classes: int
  input_kind: str  # "tokens" | "continuous"
  mixer: str
  mixer_kwargs: dict
  d_model: int
  n_layers: int
  vocab_size: int | None = None
  prenorm: bool = True
  norm: str = "layer"
  dropout: float = 0.0
  output: str = "glu"
  ff_mult: int = 0
  dense_rank: int | None = None
  pool: str = "mean"
  pair_mlp_dim: int | None = None  # Set: inputs are pairs (module docstring).
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, mask=None, *, train: bool = False):
    pairs = self.pair_mlp_dim is not None
    if pairs:  # [b, 2, t(, c)] -> [2b, t(, c)]: the first documents, then the second.
      b2 = inputs.shape[0]
      inputs = jnp.swapaxes(inputs, 0, 1).reshape((2 * b2,) + inputs.shape[2:])
      if mask is not None:
        mask = jnp.swapaxes(mask, 0, 1).reshape(2 * b2, -1)
    x = encode_inputs(
        inputs, input_kind=self.input_kind, d_model=self.d_model,
        vocab_size=self.vocab_size, dtype=self.dtype,
        param_dtype=self.param_dtype)
    b, t = x.shape[:2]
    if mask is None:
      mask = jnp.ones((b, t), dtype=bool)
    if self.pool == "cls":
      cls = self.param(
          "cls", nn.with_logical_partitioning(
              nn.initializers.normal(0.02), ("embed",)), (self.d_model,),
          self.param_dtype)
      x = jnp.concatenate(
          [jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.d_model)), x], axis=1)
      mask = jnp.concatenate([jnp.ones((b, 1), dtype=bool), mask], axis=1)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = Backbone(
        mixer=self.mixer, mixer_kwargs=self.mixer_kwargs, d_model=self.d_model,
        n_layers=self.n_layers, prenorm=self.prenorm, norm=self.norm,
        dropout=self.dropout, output=self.output, ff_mult=self.ff_mult,
        dense_rank=self.dense_rank, dtype=self.dtype,
        param_dtype=self.param_dtype, name="backbone")(
            x, mask, train=train)
    x = pool(x, mask, self.pool)
    dense = lambda n, name, axes: nn.Dense(
        n, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), axes), name=name)
    if pairs:
      x1, x2 = jnp.split(x, 2, axis=0)
      x = jnp.concatenate([x1, x2, x1 * x2, x1 - x2], axis=-1)
      x = nn.relu(dense(self.pair_mlp_dim, "pair_mlp", (None, "mlp"))(x))
      x = nn.relu(dense(self.pair_mlp_dim // 2, "pair_mlp2", ("mlp", None))(x))
    logits = dense(self.num_classes, "head",
                   (None if pairs else "embed", None))(x)
    return logits.astype(jnp.float32)


def mixer_kwargs_from_config(model_config: ml_collections.ConfigDict,
                             max_length: int, name: str | None = None) -> dict:
  """The module fields of the mixer ``name`` (default ``model.mixer``) from
  its sub-config ``model.<name>`` (its declared defaults if absent), with the
  length it must support filled in (layers/registry.py ``length_field``)."""
  name = model_config.mixer if name is None else name
  return get_spec(name).module_kwargs(model_config.get(name),
                                      max_length=max_length)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtypes(model_config: ml_collections.ConfigDict) -> dict:
  """``{"dtype", "param_dtype"}`` of ``model.dtype`` / ``model.param_dtype``."""
  out = {}
  for field in ("dtype", "param_dtype"):
    name = model_config.get(field, "float32")
    if name not in DTYPES:
      raise ValueError(f"model.{field}={name!r} is not one of {tuple(DTYPES)}")
    out[field] = DTYPES[name]
  return out


def build_model(model_config: ml_collections.ConfigDict, info) -> nn.Module:
  """Builds the model that ``model_config`` describes for a task's ``info``:
  a :class:`SequenceClassifier` for one label per sequence
  (``info.output_kind == "class"``), a :class:`models.lm.CausalLM` for one target
  token per position (``"tokens"``; ``model.pool`` is not used), the
  :class:`models.informer.Informer` encoder-decoder for forecasts
  (``"forecast"``; ``model.informer`` fields, ``model.mixer`` not used unless
  named by ``model.informer.encoder_mixer``)."""
  if getattr(info, "output_kind", "class") == "forecast":
    from models.informer import Informer  # pylint: disable=g-import-not-at-top
    inf = model_config.informer
    encoder_mixer = inf.get("encoder_mixer")
    return Informer(
        enc_in=info.input_channels,
        dec_in=info.input_channels,
        c_out=info.output_channels,
        seq_len=info.max_length,
        label_len=info.label_len,
        pred_len=info.pred_len,
        factor=inf.factor,
        d_model=model_config.d_model,
        n_heads=inf.n_heads,
        e_layers=inf.e_layers,
        d_layers=inf.d_layers,
        d_ff=inf.d_ff,
        dropout=model_config.dropout,
        attn=inf.attn,
        embed=inf.embed,
        activation=inf.activation,
        distil=inf.distil,
        mix=inf.mix,
        encoder_mixer=encoder_mixer,
        encoder_mixer_kwargs=(
            {} if encoder_mixer is None else mixer_kwargs_from_config(
                model_config, info.max_length, encoder_mixer)),
        **dtypes(model_config))
  if getattr(info, "output_kind", "class") == "tokens":
    from models.lm import CausalLM  # pylint: disable=g-import-not-at-top
    return CausalLM(
        vocab_size=info.num_classes,
        input_kind=info.input_kind,
        input_vocab_size=info.vocab_size,
        mixer=model_config.mixer,
        mixer_kwargs=mixer_kwargs_from_config(model_config, info.max_length),
        d_model=model_config.d_model,
        n_layers=model_config.n_layers,
        prenorm=model_config.prenorm,
        norm=model_config.norm,
        dropout=model_config.dropout,
        output=model_config.output,
        ff_mult=model_config.get("ff_mult", 0),
        dense_rank=model_config.get("dense_rank"),
        **dtypes(model_config))
  max_length = info.max_length + (1 if model_config.pool == "cls" else 0)
  return SequenceClassifier(
      num_classes=info.num_classes,
      input_kind=info.input_kind,
      vocab_size=info.vocab_size,
      mixer=model_config.mixer,
      mixer_kwargs=mixer_kwargs_from_config(model_config, max_length),
      d_model=model_config.d_model,
      n_layers=model_config.n_layers,
      prenorm=model_config.prenorm,
      norm=model_config.norm,
      dropout=model_config.dropout,
      output=model_config.output,
      ff_mult=model_config.get("ff_mult", 0),
      dense_rank=model_config.get("dense_rank"),
      pool=model_config.pool,
      pair_mlp_dim=(model_config.pair_mlp_dim
                    if getattr(info, "output_kind", "class") == "pair"
                    else None),
      **dtypes(model_config),
  )
