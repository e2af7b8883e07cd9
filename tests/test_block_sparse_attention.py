"""Longformer and BigBird kernels: fast forms against the dense references.

Values and gradients (a random cotangent) of the blocked / block-sparse forms
are compared with the dense masked softmax (relative error of the difference
against the reference's scale); the patterns themselves are checked against
brute-force numpy definitions, and the fast forms are checked never to build a
``t x t`` array.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import Impl
from kernels import bigbird_attention as bb
from kernels import longformer_attention as lf
from numerics import rel_err

B, H, P = 2, 2, 4


def _arrays(seed, n, t):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(B, t, H, P)), jnp.float32)
          for _ in range(n)]


@functools.cache
def _value_and_vjp(fn):
  def run(args, ct):
    y, vjp = jax.vjp(lambda *a: fn(*a)[0], *args)
    return y, vjp(ct)
  return jax.jit(run)


def _compare(fast, ref, args, tol=1e-5):
  ct = jax.random.normal(jax.random.key(7), args[0].shape[:3] +
                         args[2].shape[3:])
  y, grads = _value_and_vjp(fast)(args, ct)
  y_ref, grads_ref = _value_and_vjp(ref)(args, ct)
  assert rel_err(y, y_ref) < tol
  for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
    assert rel_err(g, g_ref) < tol, i


# ---------------------------------------------------------------- Longformer
def test_longformer_band_is_the_definition():
  t = 23
  for w, d, causal in [(2, 1, False), (3, 2, False), (2, 3, True)]:
    band = lf.longformer_band(t, window=w, dilation=d, causal=causal)
    for i in range(t):
      ms = range(-w, 1) if causal else range(-w, w + 1)
      want = {i + m * d for m in ms} & set(range(t))
      assert set(np.nonzero(band[i])[0]) == want


# window, dilation, causal, block_size, globals; t = 29 is not a multiple of
# any block size or dilation here.
LONGFORMER_CASES = {
    "w3": (3, 1, False, 4, False),
    "w3_globals_one_block": (3, 1, False, None, True),
    "w5_block2_globals": (5, 1, False, 2, True),
    "dilated_globals": (2, 3, False, 3, True),
    "causal_dilated_globals": (3, 2, True, 4, True),
    "causal_w1": (1, 1, True, 5, False),
}


@pytest.mark.parametrize("name", LONGFORMER_CASES)
def test_longformer_blocked_matches_reference(name):
  w, d, causal, block, use_global = LONGFORMER_CASES[name]
  t = 29
  kv_mask = jnp.arange(t)[None, :] < jnp.asarray([t, 21])[:, None]
  # Row 0: globals at 0 and 11; row 1: one at 4 and one in the padding
  # (padded tokens are never global).
  global_mask = (jnp.zeros((B, t), bool).at[0, jnp.asarray([0, 11])].set(True)
                 .at[1, jnp.asarray([4, 25])].set(True))
  n = 6 if use_global else 3
  args = _arrays(1, n, t)
  common = dict(window=w, dilation=d, causal=causal, kv_mask=kv_mask)

  def with_globals(a):
    if not use_global:
      return {}
    return dict(global_mask=global_mask, q_global=a[3], k_global=a[4],
                v_global=a[5])

  fast = lambda *a: lf.longformer_blocked(
      *a[:3], block_size=block, max_global=2, **common, **with_globals(a))
  ref = lambda *a: lf.longformer_reference(*a[:3], **common,
                                           **with_globals(a))
  _compare(fast, ref, args)


def test_longformer_global_rows_and_columns():
  """A global query sees every real key; every query sees a global key."""
  t = 16
  q, k, v = _arrays(2, 3, t)
  g = jnp.zeros((B, t), bool).at[:, 0].set(True)
  f = jax.jit(lambda v: lf.longformer_reference(q, k, v, window=1,
                                                global_mask=g)[0])
  y = f(v)
  # Perturbing the value of a far key changes the global row and the rows
  # whose window holds it; perturbing the global token's value changes all.
  changed = np.any(np.asarray(f(v.at[:, t - 1].add(1.0)) != y), axis=(0, 2, 3))
  assert list(np.nonzero(changed)[0]) == [0, t - 2, t - 1]
  assert np.all(np.any(np.asarray(f(v.at[:, 0].add(1.0)) != y),
                       axis=(0, 2, 3)))


def test_longformer_traced_global_mask_needs_max_global():
  q, k, v = _arrays(3, 3, 8)
  g = jnp.zeros((B, 8), bool).at[:, 0].set(True)
  f = jax.jit(lambda g: lf.longformer_blocked(q, k, v, window=2,
                                              global_mask=g)[0])
  with pytest.raises(ValueError, match="max_global"):
    f(g)


def test_longformer_dispatcher():
  q, k, v = _arrays(4, 3, 12)
  f = functools.partial(lf.longformer_attention, window=2, block_size=4)
  y_ref, _ = jax.jit(functools.partial(f, impl=Impl.REFERENCE))(q, k, v)
  y, state = jax.jit(f)(q, k, v)
  assert state is None and rel_err(y, y_ref) < 1e-5


def _max_intermediate(fn, *args):
  jaxpr = jax.make_jaxpr(fn)(*args)
  sizes = []

  def visit(jp):
    for eqn in jp.eqns:
      sizes.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars)
      for sub in jax.core.jaxprs_in_params(eqn.params):
        visit(sub)
  visit(jaxpr.jaxpr)
  return max(sizes)


def test_fast_forms_build_no_t_by_t_array():
  t = 1024
  q, k, v = [jnp.zeros((1, t, 1, 4)) for _ in range(3)]
  g = jnp.zeros((1, t), bool).at[:, 0].set(True)
  for fn in (
      lambda q, k, v: lf.longformer_blocked(q, k, v, window=16, block_size=32,
                                            global_mask=g)[0],
      lambda q, k, v: bb.bigbird_block_sparse(q, k, v, block_size=16,
                                              num_rand_blocks=2)[0]):
    grad = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))
    assert _max_intermediate(grad, q, k, v) < t * t // 8


# ------------------------------------------------------------------- BigBird
def test_bigbird_random_blocks_follow_the_official_rules():
  nb, r, h = 12, 3, 3
  rand = bb.bigbird_random_blocks(nb, num_rand_blocks=r, num_heads=h,
                                  seed=5)
  assert rand.shape == (h, nb, r)
  assert np.all(rand[:, 0] == -1) and np.all(rand[:, -1] == -1)  # global
  for head in range(h):
    for i in range(1, nb - 1):
      row = rand[head, i]
      assert np.all(row >= 0) and len(set(row)) == r
      assert not set(row) & {i - 1, i, i + 1, 0, nb - 1}
      if i == 1:
        assert nb - 2 not in row
      if i == nb - 2:
        assert 1 not in row
  assert not np.array_equal(rand[0], rand[1])  # per head
  again = bb.bigbird_random_blocks(nb, num_rand_blocks=r, num_heads=h,
                                   seed=5)
  np.testing.assert_array_equal(again, rand)
  bb.bigbird_random_blocks.cache_clear()
  np.testing.assert_array_equal(
      bb.bigbird_random_blocks(nb, num_rand_blocks=r, num_heads=h, seed=5),
      rand)
  other = bb.bigbird_random_blocks(nb, num_rand_blocks=r, num_heads=h,
                                   seed=6)
  assert not np.array_equal(other, rand)
  # Too few legal blocks: the row keeps what there is, the rest is -1.
  short = bb.bigbird_random_blocks(6, num_rand_blocks=3, num_heads=1,
                                   seed=0)
  np.testing.assert_array_equal(short[0, 1:5, 0], [3, 4, 1, 2])
  assert np.all(short[0, :, 1:] == -1)


def test_bigbird_block_mask_is_window_global_random():
  nb, r, h = 10, 2, 2
  mask = bb.bigbird_block_mask(nb, num_rand_blocks=r, num_heads=h, seed=1,
                               global_left=2, global_right=1)
  rand = bb.bigbird_random_blocks(nb, num_rand_blocks=r, num_heads=h,
                                  seed=1, global_left=2, global_right=1)
  for head in range(h):
    for i in range(nb):
      if i < 2 or i == nb - 1:
        want = set(range(nb))
      else:
        want = ({i - 1, i, i + 1, 0, 1, nb - 1} | set(rand[head, i])) - {-1}
      assert set(np.nonzero(mask[head, i])[0]) == want, (head, i)


# block_size, r, global_left, global_right, causal, padding
BIGBIRD_CASES = {
    "itc": (4, 2, 1, 1, False, False),
    "itc_padding": (4, 3, 1, 1, False, True),
    "causal": (3, 2, 1, 1, True, True),
    "first_globals_only": (3, 1, 2, 0, False, True),
    "no_random": (5, 0, 1, 1, False, False),
    "left_global_only": (3, 2, 1, 0, True, True),  # 7 rows: groups of 3 pad
    "right_global_only": (4, 2, 0, 1, False, True),
    "no_globals": (4, 2, 0, 0, True, False),
}


@pytest.mark.parametrize("rows", [None, 1, 3])
@pytest.mark.parametrize("name", BIGBIRD_CASES)
def test_bigbird_block_sparse_matches_reference(name, rows):
  """All rows at once (None) and the scan over groups of 1 or 3 row blocks
  (``rows_tokens``), the last group padded where the rows do not divide."""
  bs, r, gl, gr, causal, padding = BIGBIRD_CASES[name]
  t = 8 * bs
  kv_mask = (jnp.arange(t)[None, :] < jnp.asarray([t, t - bs - 2])[:, None]
             if padding else None)
  kw = dict(block_size=bs, num_rand_blocks=r, global_left=gl,
            global_right=gr, seed=3, causal=causal, kv_mask=kv_mask)
  fast = lambda *a: bb.bigbird_block_sparse(  # noqa: E731
      *a, rows_tokens=None if rows is None else rows * bs, **kw)
  args = _arrays(5, 3, t)
  _compare(fast, lambda *a: bb.bigbird_reference(*a, **kw), args)
  # The forward alone (no vjp: the grouped form's primal rule).
  assert rel_err(jax.jit(fast)(*args)[0],
                 bb.bigbird_reference(*args, **kw)[0]) < 1e-5


def test_bigbird_dropout_is_unbiased():
  """With attention dropout (rate 0.3) the mean over 2048 draws of the output
  and of the gradients tends to the dropout-free values (error ~ 1/sqrt(n):
  about 0.02 here; a missing 1/(1 - rate) gives 0.3). ``rows_tokens`` is set
  and ignored: dropout runs all rows at once."""
  bs = 4
  t = 8 * bs
  kv_mask = jnp.arange(t)[None, :] < jnp.asarray([t, t - bs - 2])[:, None]
  kw = dict(block_size=bs, num_rand_blocks=2, seed=3, causal=True,
            rows_tokens=bs, kv_mask=kv_mask)
  q, k, v = _arrays(11, 3, t)
  ct = jax.random.normal(jax.random.key(7), q.shape)

  def loss(q, k, v, rng, rate):
    y, _ = bb.bigbird_block_sparse(q, k, v, dropout_rate=rate,
                                   dropout_rng=rng, **kw)
    return jnp.sum(y * ct), y

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  (_, y0), g0 = grad(q, k, v, None, 0.0)
  rngs = jax.random.split(jax.random.key(0), 2048)
  (_, ys), gs = jax.jit(jax.vmap(lambda r: grad(q, k, v, r, 0.3)))(rngs)
  assert rel_err(ys[0], y0) > 0.3                 # one draw: far from the mean
  assert rel_err(ys.mean(0), y0) < 0.05
  for g, g_ref in zip(gs, g0):
    assert rel_err(g.mean(0), g_ref) < 0.05


def test_bigbird_all_global_and_dispatcher():
  q, k, v = _arrays(6, 3, 8)
  kw = dict(block_size=4, num_rand_blocks=2)
  f = functools.partial(bb.bigbird_attention, **kw)
  y_ref, _ = jax.jit(functools.partial(f, impl="reference"))(q, k, v)
  y, state = jax.jit(f)(q, k, v)  # 2 blocks, both global
  assert state is None and rel_err(y, y_ref) < 1e-5


def test_bigbird_length_must_be_a_multiple_of_the_block():
  q, k, v = _arrays(7, 3, 10)
  with pytest.raises(ValueError, match="seq_len=10 is not a multiple of "
                     "block_size=4"):
    bb.bigbird_block_sparse(q, k, v, block_size=4)
