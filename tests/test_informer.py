"""Informer layers and model: shapes, official arithmetic, mixer interface,
decoder dependence structure, training."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special

from layers import informer as inf
from layers import probsparse
from layers.registry import MIXERS
from models.informer import Informer
from numerics import assert_close, rel_err

SEQ, LABEL, PRED, C, NT = 24, 12, 6, 3, 4


def _model(**kw):
  return Informer(**{**dict(enc_in=C, dec_in=C, c_out=C, seq_len=SEQ,
                            label_len=LABEL, pred_len=PRED, factor=2,
                            d_model=16, n_heads=2, e_layers=2, d_layers=1,
                            d_ff=32, dropout=0.0), **kw})


def _batch(seed=0, b=2):
  ks = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(ks[0], (b, SEQ, C))
  return dict(
      inputs=x,
      inputs_time=jax.random.uniform(ks[1], (b, SEQ, NT)) - 0.5,
      decoder_inputs=x[:, -LABEL:],
      decoder_time=jax.random.uniform(ks[2], (b, LABEL + PRED, NT)) - 0.5)


@functools.cache
def _jit_init(model):
  return jax.jit(lambda k, batch: model.init({"params": k, "sample": k},
                                             **batch))


@functools.cache
def _jit_apply(model):
  return jax.jit(lambda v, batch, k: model.apply(v, **batch,
                                                 rngs={"sample": k}))


def test_forward_shapes_params_and_collections():
  model = _model()
  batch = _batch()
  v = _jit_init(model)(jax.random.key(0), batch)
  assert set(v) == {"params", "batch_stats"}
  assert set(v["batch_stats"]) == {"distil_0"}
  p = v["params"]
  assert set(p) == {"enc_embedding", "dec_embedding", "encoder_0", "encoder_1",
                    "distil_0", "encoder_norm", "decoder_0", "decoder_norm",
                    "projection"}
  att = p["encoder_0"]["attention"]
  assert set(att) == {"query", "key", "value", "out"}
  assert att["query"]["kernel"].names == ("embed", "heads")
  assert p["enc_embedding"]["token"]["kernel"].value.shape == (3, C, 16)
  y = _jit_apply(model)(v, batch, jax.random.key(1))
  assert y.shape == (2, PRED, C) and y.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(y)))
  # ProbSparse draws a new sample per call; "full" attention does not sample.
  y2 = _jit_apply(model)(v, batch, jax.random.key(2))
  assert rel_err(y2, y) > 0
  # An all-True mask (as the ETT pipeline gives) changes nothing.
  mask = jnp.ones((2, SEQ), bool)
  y_m = jax.jit(lambda v, batch: model.apply(
      v, mask=mask, **batch, rngs={"sample": jax.random.key(1)}))(v, batch)
  assert rel_err(y_m, y) < 1e-6


def test_full_attention_and_encoder_mixer():
  batch = _batch()
  full = _model(attn="full", e_layers=1, mix=False)
  vf = _jit_init(full)(jax.random.key(0), batch)
  yf = jax.jit(lambda v: full.apply(v, **batch))(vf)  # no "sample" rng needed
  assert yf.shape == (2, PRED, C)
  # Any registered mixer can replace the encoder self-attention.
  model = _model(attn="full", e_layers=1, encoder_mixer="probsparse",
                 encoder_mixer_kwargs=dict(n_heads=4, attention="full"))
  v = jax.jit(lambda k: model.init(k, **batch))(jax.random.key(0))
  q = v["params"]["encoder_0"]["mixer"]["query"]["kernel"].value
  assert q.shape == (16, 16)
  y = jax.jit(lambda v: model.apply(v, **batch))(v)
  assert y.shape == (2, PRED, C) and np.all(np.isfinite(np.asarray(y)))


def _np_layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _np_dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _np_gelu(x):
  return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def test_encoder_mixer_values():
  """``encoder_mixer`` replaces every encoder self-attention, in place.

  With the registered full-attention mixer ("attention") the model is the
  attn="full" Informer, given the same parameters (the trees match). With
  linear attention, whose outputs differ from full attention's, each encoder
  layer's output is ``norm2(x1 + ffn(x1))`` with ``x1 = norm1(x + mixer(x,
  mask))`` in numpy, the mixer applied on its own to the layer's captured
  input and (pooled) padding mask.
  """
  batch = _batch(3)
  mask = jnp.arange(SEQ)[None, :] < jnp.asarray([SEQ, 17])[:, None]
  run = lambda model, v: jax.jit(functools.partial(
      model.apply, mask=mask, capture_intermediates=True,
      mutable=["intermediates"]))(v, **batch)
  full = _model(attn="full")
  v = jax.jit(lambda k: full.init(k, **batch))(jax.random.key(0))
  y_full, _ = run(full, v)
  mixed = _model(attn="full", encoder_mixer="attention",
                 encoder_mixer_kwargs=dict(n_heads=2))
  # A registered mixer is the encoder layer's "mixer" submodule (where the
  # mixer's optimizer groups find it); the built-in attention is "attention".
  def as_mixer(tree):
    return {name: ({"mixer" if k == "attention" else k: sub
                    for k, sub in layer.items()}
                   if name.startswith("encoder_") else layer)
            for name, layer in tree.items()}
  v_mixed = {col: as_mixer(tree) for col, tree in v.items()}
  shapes = lambda tree: jax.tree.map(lambda a: a.shape, nn.unbox(tree))
  assert shapes(jax.eval_shape(lambda k: mixed.init(k, **batch),
                               jax.random.key(0))) == shapes(v_mixed)
  assert_close(run(mixed, v_mixed)[0], y_full, rtol=1e-5,
               what='encoder_mixer="attention" vs attn="full"')

  mixer_kwargs = dict(n_heads=2)
  linear = _model(attn="full", encoder_mixer="linear_attention",
                  encoder_mixer_kwargs=mixer_kwargs)
  y, state = run(linear, v_mixed)  # the same parameters: the mixer matters
  assert rel_err(y, y_full) > 1e-2
  p = jax.tree.map(np.asarray, nn.unbox(v_mixed["params"]))
  acts = state["intermediates"]
  mixer = MIXERS["linear_attention"](d_model=16, **mixer_kwargs)
  layer_inputs = [acts["enc_embedding"]["__call__"][0],
                  acts["distil_0"]["__call__"][0]]
  masks = [mask, inf.pool_mask(mask)]
  for i, (x, m) in enumerate(zip(layer_inputs, masks)):
    pe = p[f"encoder_{i}"]
    a = mixer.apply({"params": pe["mixer"]}, x, m)
    x, a = np.asarray(x, np.float64), np.asarray(a, np.float64)
    x1 = _np_layer_norm(x + a, pe["norm1"])
    ffn = _np_dense(_np_gelu(_np_dense(x1, pe["ffn"]["conv1"])),
                    pe["ffn"]["conv2"])
    want = _np_layer_norm(x1 + ffn, pe["norm2"])
    assert_close(acts[f"encoder_{i}"]["__call__"][0], want, rtol=1e-5,
                 what=f"encoder_{i}")


def test_missing_sample_rng_and_bad_shapes_raise():
  model = _model()
  batch = _batch()
  v = _jit_init(model)(jax.random.key(0), batch)
  with pytest.raises(ValueError, match="'sample'"):
    model.apply(v, **batch)
  with pytest.raises(ValueError, match="decoder_inputs"):
    model.apply(v, **{**batch, "decoder_inputs": batch["inputs"]},
                rngs={"sample": jax.random.key(0)})


@pytest.mark.parametrize("t,want", [(96, 48), (48, 24), (49, 25), (24, 12),
                                    (7, 4), (2, 1)])
def test_distil_lengths_official_arithmetic(t, want):
  # MaxPool1d(3, 2, padding=1) after a length-preserving circular conv
  # (padding 1 for torch >= 1.5): floor((t + 2 - 3) / 2) + 1.
  assert want == (t + 2 - 3) // 2 + 1
  x = jax.random.normal(jax.random.key(0), (2, t, 5))
  y = inf.max_pool_3_2(x)
  assert y.shape == (2, want, 5)
  xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (0, 0)), constant_values=-np.inf)
  ref = np.stack([xp[:, 2 * i:2 * i + 3].max(1) for i in range(want)], 1)
  np.testing.assert_array_equal(np.asarray(y), ref)


def test_circular_conv_matches_numpy():
  conv = inf.CircularConv1d(4)
  x = jax.random.normal(jax.random.key(0), (2, 9, 3))
  v = conv.init(jax.random.key(1), x)
  w = np.asarray(v["params"]["kernel"].value)  # [3, c_in, c_out]
  bias = np.asarray(v["params"]["bias"].value)
  xn = np.asarray(x)
  ref = bias + sum(np.roll(xn, 1 - j, axis=1) @ w[j] for j in range(3))
  assert rel_err(conv.apply(v, x), ref) < 1e-6


def test_positional_table_official_values():
  table = inf.sinusoid_table(50, 8)
  assert table[0, 0] == 0 and table[0, 1] == 1
  np.testing.assert_allclose(table[7, 2], np.sin(7 * 10000 ** (-2 / 8)),
                             rtol=1e-6)
  np.testing.assert_allclose(table[7, 3], np.cos(7 * 10000 ** (-2 / 8)),
                             rtol=1e-6)


def test_registered_mixer_in_classifier_with_padding():
  from models.classifier import SequenceClassifier  # pylint: disable=g-import-not-at-top
  assert MIXERS["probsparse"] is probsparse.ProbSparseAttention
  model = SequenceClassifier(
      num_classes=3, input_kind="tokens", vocab_size=11, mixer="probsparse",
      mixer_kwargs=dict(n_heads=2, factor=2), d_model=8, n_layers=2,
      output="none", ff_mult=2)
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 1, 11)
  # ceil(ln 12) == ceil(ln 16): the same sample sizes with and without padding.
  mask = jnp.arange(16)[None, :] < jnp.asarray([16, 12])[:, None]
  rngs = {"params": jax.random.key(1), "sample": jax.random.key(2)}
  v = jax.jit(model.init)(rngs, tokens, mask)
  apply = jax.jit(lambda v, t, m: model.apply(
      v, t, m, rngs={"sample": jax.random.key(3)}))
  logits = apply(v, tokens, mask)
  assert logits.shape == (2, 3) and np.all(np.isfinite(np.asarray(logits)))
  short = apply(v, tokens[1:, :12], jnp.ones((1, 12), bool))
  assert rel_err(logits[1:], short) < 1e-5


def test_mixer_zeroes_padded_rows_and_full_attention_dropout():
  layer = inf.ProbSparseAttention(d_model=8, n_heads=2, attention="full",
                                  attn_dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (2, 10, 8))
  mask = jnp.arange(10)[None, :] < jnp.asarray([10, 6])[:, None]
  v = layer.init(jax.random.key(1), x, mask)
  y = layer.apply(v, x, mask)
  assert np.all(np.asarray(y[1, 6:]) == 0)
  short = layer.apply(v, x[1:, :6])
  assert rel_err(y[1:, :6], short) < 1e-6
  y_drop = layer.apply(v, x, mask, deterministic=False,
                       rngs={"dropout": jax.random.key(2)})
  assert rel_err(y_drop, y) > 1e-3


def _decoder_sensitivity(model, v, batch, key):
  """|d out[:, j] / d decoder_time[:, i]| summed: [PRED, LABEL + PRED]."""
  def f(dt):
    out = model.apply(v, **{**batch, "decoder_time": dt}, rngs={"sample": key})
    return out[0].sum(-1)
  jac = jax.jit(jax.jacrev(f))(batch["decoder_time"])  # [PRED, b, L + P, NT]
  return np.abs(np.asarray(jac[:, 0])).sum(-1)


def test_decoder_dependence_structure():
  """What holds for the official decoder (full attention; ProbSparse adds a
  data-dependent choice of active queries that has no gradient): without
  mix, horizon step j (position LABEL + j) never depends on the time features
  of later positions. With mix=True one layer's mixing reads row t from head
  t // (L / h) at positions (t mod (L / h)) h .. + h - 1, which for the last
  rows lies at or before t (so one decoder layer keeps the horizon causal;
  also for the ETTh1 shapes L = 72, h = 8), but the label rows read later
  positions, and a second decoder layer carries that to the horizon."""
  batch = _batch()  # shapes (and the init) shared with the test above
  key = jax.random.key(0)
  L = LABEL + PRED

  base = _model(attn="full", e_layers=1, mix=False)
  v1 = _jit_init(base)(jax.random.key(0), batch)

  def sens(**kw):
    model = base.clone(**kw)
    v = v1 if model.d_layers == 1 else _jit_init(model)(jax.random.key(0),
                                                        batch)
    return _decoder_sensitivity(model, v, batch, key)

  def later(s):
    return [bool(np.any(s[j, LABEL + j + 1:L] > 0)) for j in range(PRED)]

  s_plain = sens(mix=False)
  assert not any(later(s_plain))
  assert all(s_plain[j, LABEL + j] > 0 for j in range(PRED))
  assert not any(later(sens(mix=True)))
  assert any(later(sens(mix=True, d_layers=2)))


def test_hash_dropout_rate_scale_and_fresh_masks():
  drop = inf.HashDropout(0.25)
  x = jnp.ones((64, 512))
  f = jax.jit(lambda k: drop.apply({}, x, deterministic=False,
                                   rngs={"dropout": k}))
  y1, y2 = f(jax.random.key(0)), f(jax.random.key(1))
  kept = np.asarray(y1) != 0
  assert abs(kept.mean() - 0.75) < 0.01
  np.testing.assert_allclose(np.asarray(y1)[kept], 1 / 0.75, rtol=1e-6)
  assert np.mean(kept == (np.asarray(y2) != 0)) < 0.7  # new mask per key
  # Neighbouring elements are independent (no stripes from the counter).
  assert abs(np.mean(kept[:, 1:] & kept[:, :-1]) - 0.75**2) < 0.01
  assert drop.apply({}, x) is x


def test_training_steps_lower_mse():
  model = _model()  # dropout in the step: see the attention/hash tests
  t = np.arange(400, dtype=np.float32)
  series = np.stack([np.sin(t / 5 + c) for c in range(C)], -1)
  starts = np.arange(0, 400 - SEQ - PRED, 7)[:16]
  x = np.stack([series[s:s + SEQ] for s in starts])
  y = np.stack([series[s + SEQ:s + SEQ + PRED] for s in starts])
  tfeat = np.broadcast_to(np.linspace(-.5, .5, SEQ + PRED)[None, :, None],
                          (len(starts), SEQ + PRED, NT)).astype(np.float32)
  batch = dict(inputs=jnp.asarray(x), inputs_time=jnp.asarray(tfeat[:, :SEQ]),
               decoder_inputs=jnp.asarray(x[:, -LABEL:]),
               decoder_time=jnp.asarray(tfeat[:, SEQ - LABEL:]))
  v = _jit_init(model)(jax.random.key(0), batch)
  params, stats = v["params"], v["batch_stats"]
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, stats, opt_state, key):
    def loss_fn(params):
      out, upd = model.apply(
          {"params": params, "batch_stats": stats}, **batch, train=True,
          rngs={"dropout": key, "sample": jax.random.fold_in(key, 1)},
          mutable=["batch_stats"])
      return jnp.mean((out - y) ** 2), upd["batch_stats"]
    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt_state = opt.update(g, opt_state)
    return optax.apply_updates(params, upd), stats, opt_state, loss

  losses = []
  for i in range(25):
    params, stats, opt_state, loss = step(params, stats, opt_state,
                                          jax.random.key(i))
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:3]), losses
  # Running BatchNorm statistics moved off their init.
  assert float(jnp.abs(stats["distil_0"]["norm"]["mean"]).max()) > 0
