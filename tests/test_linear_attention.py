"""Linear attention: recurrent = quadratic = chunked (values, final state,
gradients), non-causal global form, decode step by step = full pass."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import Impl
from kernels.linear_attention import (linear_attention,
                                      linear_attention_chunked,
                                      linear_attention_quadratic,
                                      linear_attention_recurrent)
from numerics import rel_err

FORMS = {"chunked": linear_attention_chunked,
         "quadratic": linear_attention_quadratic,
         "recurrent": linear_attention_recurrent}


def _inputs(seed, b=2, t=13, h=2, p=3, pv=4, init=False):
  """Positive features (as after elu + 1) and an optional initial state."""
  rng = np.random.default_rng(seed)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  q = f32(rng.uniform(0.1, 2.0, size=(b, t, h, p)))
  k = f32(rng.uniform(0.1, 2.0, size=(b, t, h, p)))
  v = f32(rng.normal(size=(b, t, h, pv)))
  state = None
  if init:
    state = (f32(rng.normal(size=(b, h, p, pv))),
             f32(rng.uniform(0.5, 3.0, size=(b, h, p))))
  return q, k, v, state


def _numpy(q, k, v, state, causal, eps):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, h, p = q.shape
  S = np.zeros((b, h, p, v.shape[-1])) if state is None else np.asarray(
      state[0], np.float64)
  z = np.zeros((b, h, p)) if state is None else np.asarray(state[1],
                                                          np.float64)
  outs = []
  for i in range(t):
    S = S + np.einsum("bhp,bhv->bhpv", k[:, i], v[:, i])
    z = z + k[:, i]
    outs.append(np.einsum("bhp,bhpv->bhv", q[:, i], S) /
                (np.einsum("bhp,bhp->bh", q[:, i], z)[..., None] + eps))
  if not causal:
    outs = [np.einsum("bhp,bhpv->bhv", q[:, i], S) /
            (np.einsum("bhp,bhp->bh", q[:, i], z)[..., None] + eps)
            for i in range(t)]
  return np.stack(outs, 1), (S, z)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("init", [False, True])
def test_recurrent_matches_numpy(causal, init):
  q, k, v, state = _inputs(0, init=init)
  out, (S, z) = linear_attention_recurrent(q, k, v, causal=causal,
                                           initial_state=state, eps=0.1)
  want, (S_np, z_np) = _numpy(q, k, v, state, causal, 0.1)
  assert rel_err(out, want) < 1e-5
  assert rel_err(S, S_np) < 1e-5 and rel_err(z, z_np) < 1e-5


def _compare(form, args, kw, tol_y=1e-5, tol_g=2e-5):
  q, k, v, state = args
  diff = (q, k, v) + (() if state is None else (state,))

  def run(f):
    def fn(*a):
      return f(*a[:3], initial_state=a[3] if len(a) > 3 else None, **kw)
    return fn

  out, vjp = jax.vjp(jax.jit(run(form)), *diff)
  out_ref, vjp_ref = jax.vjp(jax.jit(run(linear_attention_recurrent)), *diff)
  flat, flat_ref = jax.tree.leaves(out), jax.tree.leaves(out_ref)
  for o, r in zip(flat, flat_ref):
    assert o.shape == r.shape and o.dtype == r.dtype
    assert rel_err(o, r) < tol_y, (rel_err(o, r), o.shape)
  rng = np.random.default_rng(1)
  cts = jax.tree.map(
      lambda o: jnp.asarray(rng.normal(size=o.shape), jnp.float32), out)
  for name, g, gr in zip(["q", "k", "v", "state"], vjp(cts), vjp_ref(cts)):
    for a, r in zip(jax.tree.leaves(g), jax.tree.leaves(gr)):
      assert rel_err(a, r) < tol_g, (name, rel_err(a, r))


@pytest.mark.parametrize("form,t,chunk,init", [
    ("chunked", 16, 4, False),    # chunk divides t
    ("chunked", 16, 8, True),     # with an initial state
    ("chunked", 13, 4, True),     # chunk does not divide t
    ("chunked", 13, 5, False),
    ("chunked", 5, 16, True),     # one partial chunk
    ("chunked", 9, 1, False),     # chunks of one token
    ("quadratic", 13, 4, True),
    ("quadratic", 9, 1, False),
])
def test_forms_match_recurrent(form, t, chunk, init):
  args = _inputs(t * 10 + chunk, t=t, init=init)
  _compare(FORMS[form], args, dict(chunk_size=chunk, causal=True))


@pytest.mark.parametrize("t,chunk,block,init", [
    (32, 4, 8, False),    # 4 blocks of 2 chunks
    (29, 4, 8, True),     # 8 chunks -> 4 blocks of 2; padded tail
    (23, 3, 7, True),     # 8 chunks, 2 per block -> 4 blocks
    (30, 4, 12, False),   # 8 chunks, 3 per block -> 3 blocks of 3 (9 chunks)
    (13, 4, 1, True),     # a block smaller than a chunk: one chunk per block
])
def test_chunked_scan_over_blocks_matches_recurrent(t, chunk, block, init):
  """The scan over blocks (state carried block to block) equals the
  recurrence: values, final state and gradients, also with an initial state
  and lengths that fill the last block partly."""
  form = functools.partial(linear_attention_chunked, block_size=block)
  _compare(form, _inputs(t + chunk + block, t=t, init=init),
           dict(chunk_size=chunk, causal=True))
  one = functools.partial(linear_attention_chunked, block_size=None)
  q, k, v, state = _inputs(1, t=t, init=init)
  a = form(q, k, v, chunk_size=chunk, initial_state=state)
  b = one(q, k, v, chunk_size=chunk, initial_state=state)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert rel_err(x, y) < 1e-6


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("init", [False, True])
def test_non_causal_global_form(form, init):
  q, k, v, state = _inputs(3, t=11, init=init)
  out, (S, z) = FORMS[form](q, k, v, causal=False, chunk_size=4,
                            initial_state=state)
  want, (S_np, z_np) = _numpy(q, k, v, state, False, 1e-6)
  assert rel_err(out, want) < 1e-5
  assert rel_err(S, S_np) < 1e-5 and rel_err(z, z_np) < 1e-5
  if form != "recurrent":
    _compare(FORMS[form], (q, k, v, state), dict(causal=False, chunk_size=4))


def test_decode_step_by_step_equals_full():
  q, k, v, _ = _inputs(4, t=10)
  full, final = linear_attention_chunked(q, k, v, chunk_size=4)
  state, outs = None, []
  step = jax.jit(lambda q, k, v, s: linear_attention_recurrent(
      q, k, v, initial_state=s))
  for i in range(10):
    if state is None:
      o, state = linear_attention_recurrent(q[:, i:i + 1], k[:, i:i + 1],
                                            v[:, i:i + 1])
    else:
      o, state = step(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], state)
    outs.append(o)
  assert rel_err(jnp.concatenate(outs, 1), full) < 1e-5
  assert (rel_err(state[0], final[0]) < 1e-5 and
          rel_err(state[1], final[1]) < 1e-5)
  # Prefill 6 tokens, then continue with the chunked form: one full run.
  o1, s1 = linear_attention_chunked(q[:, :6], k[:, :6], v[:, :6], chunk_size=4)
  o2, s2 = linear_attention_chunked(q[:, 6:], k[:, 6:], v[:, 6:], chunk_size=4,
                                    initial_state=s1)
  assert rel_err(jnp.concatenate([o1, o2], 1), full) < 1e-5
  assert rel_err(s2[0], final[0]) < 1e-5


def test_zero_keys_contribute_nothing():
  q, k, v, _ = _inputs(5, t=12)
  k = k.at[:, 8:].set(0.0)
  out, (S, z) = linear_attention_chunked(q, k, v, causal=False, chunk_size=5)
  ref, (S8, z8) = linear_attention_chunked(q[:, :8], k[:, :8], v[:, :8],
                                           causal=False, chunk_size=5)
  assert rel_err(out[:, :8], ref) < 1e-6
  assert rel_err(S, S8) < 1e-6 and rel_err(z, z8) < 1e-6


def test_dispatcher():
  q, k, v, state = _inputs(6, t=9, init=True)
  ref = linear_attention(q, k, v, initial_state=state, impl=Impl.REFERENCE)
  for impl in ("auto", "xla"):
    out = linear_attention(q, k, v, initial_state=state, impl=impl)
    assert rel_err(out[0], ref[0]) < 1e-5


@pytest.mark.shape_errors
def test_errors():
  q, k, v, state = _inputs(6, t=9, init=True)
  with pytest.raises(ValueError, match="impl="):
    linear_attention(q, k, v, impl="pallas")
  with pytest.raises(ValueError, match="initial_state must be"):
    linear_attention_chunked(q, k, v, initial_state=(state[0], state[0]))
  with pytest.raises(ValueError, match="chunk_size=0"):
    linear_attention_chunked(q, k, v, chunk_size=0)
  with pytest.raises(ValueError, match="block_size=0"):
    linear_attention_chunked(q, k, v, block_size=0)
  with pytest.raises(ValueError, match="k must have"):
    linear_attention_recurrent(q, k[:, :3], v)


def test_bfloat16_inputs():
  q, k, v, _ = _inputs(7, t=10)
  out, (S, _) = linear_attention_chunked(*(x.astype(jnp.bfloat16)
                                           for x in (q, k, v)), chunk_size=4)
  assert out.dtype == jnp.bfloat16 and S.dtype == jnp.float32
  assert rel_err(out.astype(jnp.float32),
              linear_attention_recurrent(q, k, v)[0]) < 2e-2
