"""Softmax attention: dense and blocked XLA forms against the reference.

Values and gradients (random cotangent) of q, k, v are compared with the
relative error of the difference against the reference's scale; the
reference itself is checked against a float64 numpy loop.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import Impl
from kernels import attention as attn
from kernels import attention_pallas as ap
from kernels.attention import (attention, attention_blocked, attention_dense,
                               attention_reference)
from kernels.attention_pallas import BlockSizes, attention_pallas
from numerics import rel_err


def _blocks(bq, bk):
  """``BlockSizes`` from loose ints; None keeps a default."""
  kw = dict(block_q=bq, block_k=bk)
  return BlockSizes(**{name: n for name, n in kw.items() if n is not None})



def _inputs(seed, b=2, t=13, s=None, h=2, p=4, pv=None):
  s = t if s is None else s
  pv = p if pv is None else pv
  rng = np.random.default_rng(seed)
  f32 = lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return f32((b, t, h, p)), f32((b, s, h, p)), f32((b, s, h, pv))


def _numpy_attention(q, k, v, allowed, scale):
  """float64 loops: ``allowed [b, t, s]``."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, h, _ = q.shape
  out = np.zeros((b, t, h, v.shape[-1]))
  for bi in range(b):
    for hi in range(h):
      for i in range(t):
        idx = np.nonzero(allowed[bi, i])[0]
        if idx.size == 0:
          continue
        sc = scale * k[bi, idx, hi] @ q[bi, i, hi]
        w = np.exp(sc - sc.max())
        out[bi, i, hi] = (w / w.sum()) @ v[bi, idx, hi]
  return out


def _masks(seed, b, t, s, segments):
  rng = np.random.default_rng(seed)
  kv_mask = rng.random((b, s)) < 0.8
  kv_mask[0, :] = False if b > 1 else kv_mask[0, :]  # a row with no keys
  if b > 1:
    kv_mask[0, 0] = True
  q_seg = kv_seg = None
  if segments:
    q_seg = np.sort(rng.integers(0, 3, size=(b, t)), axis=1).astype(np.int32)
    kv_seg = np.sort(rng.integers(0, 3, size=(b, s)), axis=1).astype(np.int32)
  return kv_mask, q_seg, kv_seg


def _allowed(b, t, s, causal, kv_mask, q_seg, kv_seg):
  allowed = np.ones((b, t, s), bool)
  if kv_mask is not None:
    allowed &= kv_mask[:, None, :]
  if q_seg is not None:
    allowed &= q_seg[:, :, None] == kv_seg[:, None, :]
  if causal:
    allowed &= np.tril(np.ones((t, s), bool))[None]
  return allowed


@pytest.mark.parametrize("causal,masked,segments", [
    (False, False, False), (True, False, False), (False, True, True),
    (True, True, True)])
def test_reference_matches_numpy(causal, masked, segments):
  b, t, h, p = 2, 9, 2, 3
  q, k, v = _inputs(0, b=b, t=t, h=h, p=p)
  kv_mask, q_seg, kv_seg = _masks(1, b, t, t, segments)
  if not masked:
    kv_mask = None
  out, state = attention_reference(
      q, k, v, causal=causal, kv_mask=kv_mask, q_segment_ids=q_seg,
      kv_segment_ids=kv_seg, scale=0.7)
  assert state is None
  want = _numpy_attention(q, k, v, _allowed(b, t, t, causal, kv_mask, q_seg,
                                            kv_seg), 0.7)
  assert rel_err(out, want) < 1e-5
  if masked:  # a query row with no allowed key gives exactly zero
    allowed = _allowed(b, t, t, causal, kv_mask, q_seg, kv_seg)
    empty = ~allowed.any(-1)
    assert empty.any()
    np.testing.assert_array_equal(np.asarray(out)[empty], 0.0)


def _compare(form, q, k, v, kw, tol_y=2e-6, tol_g=5e-6):
  fn = lambda *a: form(*a, **kw)[0]
  kw_ref = {k: w for k, w in kw.items()
            if k not in ("save_probs", "interpret", "block_sizes")}
  ref = lambda *a: attention_reference(*a, **kw_ref)[0]
  out, vjp = jax.vjp(jax.jit(fn), q, k, v)
  out_ref, vjp_ref = jax.vjp(jax.jit(ref), q, k, v)
  assert out.shape == out_ref.shape and out.dtype == out_ref.dtype
  assert rel_err(out, out_ref) < tol_y, rel_err(out, out_ref)
  ct = jnp.asarray(np.random.default_rng(7).normal(size=out.shape),
                   jnp.float32)
  for name, g, gr in zip("qkv", vjp(ct), vjp_ref(ct)):
    assert g.shape == gr.shape
    assert np.all(np.isfinite(np.asarray(g))), name
    assert rel_err(g, gr) < tol_g, (name, rel_err(g, gr))


@pytest.mark.parametrize("causal,t,s,bq,bk,save_probs", [
    (False, 16, 16, 4, 4, False),   # blocks divide the lengths
    (True, 16, 16, 4, 4, True),
    (True, 13, 13, 4, 8, False),    # they do not; bq != bk
    (False, 13, 13, 8, 3, True),
    (True, 13, 13, 8, 3, False),
    (True, 7, 7, 32, 32, False),    # blocks longer than the sequence
    (False, 12, 20, 5, 6, False),   # t != s (non-causal only)
    (False, 12, 20, 5, 6, True),
])
def test_blocked_matches_reference(causal, t, s, bq, bk, save_probs):
  q, k, v = _inputs(t + s + bq, t=t, s=s, pv=5)
  _compare(attention_blocked, q, k, v,
           dict(causal=causal, block_q=bq, block_k=bk, save_probs=save_probs))


def _blocked_saving(*a, **kw):
  return attention_blocked(*a, save_probs=True, **kw)


@pytest.mark.parametrize("form", [attention_blocked, _blocked_saving,
                                  attention_dense])
@pytest.mark.parametrize("causal", [False, True])
def test_masks_and_segments(form, causal):
  b, t = 3, 11
  q, k, v = _inputs(3, b=b, t=t)
  kv_mask, q_seg, kv_seg = _masks(4, b, t, t, True)
  _compare(form, q, k, v,
           dict(causal=causal, kv_mask=jnp.asarray(kv_mask),
                q_segment_ids=jnp.asarray(q_seg),
                kv_segment_ids=jnp.asarray(kv_seg), block_q=4, block_k=3))


@pytest.mark.parametrize("causal", [False, True])
def test_dense_matches_reference(causal):
  q, k, v = _inputs(5, t=10)
  _compare(attention_dense, q, k, v, dict(causal=causal, scale=0.3))


def test_dispatcher(monkeypatch):
  q, k, v = _inputs(6, t=9)
  ref = attention(q, k, v, impl="reference")[0]
  for impl in (Impl.AUTO, "xla"):
    assert rel_err(attention(q, k, v, impl=impl)[0], ref) < 2e-6
  # Above the dense size limit the XLA form is the blocked one.
  calls = []
  monkeypatch.setattr(attn, "DENSE_MAX_BYTES", 0)
  monkeypatch.setattr(attn, "attention_blocked",
                      lambda *a, **kw: calls.append(kw) or (ref, None))
  attn.attention(q, k, v, impl="xla", block_q=4)
  monkeypatch.setattr(attn, "SAVE_PROBS_MAX_BYTES", 1 << 20)
  attn.attention(q, k, v, impl="xla")
  assert calls[0]["block_q"] == 4 and not calls[0]["save_probs"]
  assert calls[1]["save_probs"]
  with pytest.raises(ValueError, match="impl="):
    attention(q, k, v, impl="nope")


@pytest.mark.parametrize("causal,t,s,bq,bk,masked,segments", [
    (False, 32, 32, 16, 16, False, False),  # blocks divide the lengths
    (True, 32, 32, 16, 16, False, False),
    (True, 40, 40, 16, 32, True, True),     # padded lengths; bq != bk
    (True, 40, 40, 32, 16, False, True),
    (False, 24, 40, 16, 16, True, False),   # t != s
    (False, 9, 9, None, None, True, True),  # default blocks, shrunk
])
def test_pallas_matches_reference(causal, t, s, bq, bk, masked, segments):
  """The Pallas kernels (forward, dQ, dK/dV) in interpret mode: values and
  gradients against the reference, with key masks (a batch row whose
  queries have almost no keys), segments and causal masking."""
  b = 2
  q, k, v = _inputs(t + s, b=b, t=t, s=s, p=16, pv=8)
  kv_mask, q_seg, kv_seg = _masks(t, b, t, s, segments)
  kw = dict(causal=causal, block_sizes=_blocks(bq, bk), interpret=True)
  if masked:
    kw.update(kv_mask=jnp.asarray(kv_mask))
  if segments:
    kw.update(q_segment_ids=jnp.asarray(q_seg),
              kv_segment_ids=jnp.asarray(kv_seg))
  _compare(attention_pallas, q, k, v, kw)


def test_pallas_dispatch_and_errors():
  q, k, v = _inputs(10, t=20, p=8)
  ref = attention(q, k, v, impl="reference", causal=True)[0]
  out = attention(q, k, v, impl="pallas_interpret", causal=True,
                  block_q=8, block_k=4)[0]
  assert rel_err(out, ref) < 2e-6
  with pytest.raises(ValueError, match="powers of two.*head dim p"):
    attention_pallas(*_inputs(11, t=8, p=12), interpret=True)
  with pytest.raises(ValueError, match="powers of two.*block_k"):
    attention_pallas(q, k, v, block_sizes=BlockSizes(block_k=6),
                     interpret=True)
  with pytest.raises(ValueError, match="block_q=24 is not"):
    BlockSizes(block_q=24)


def _pallas_grad_fn():
  def loss(q, k, v, mask, seg):
    out = attention_pallas(q, k, v, causal=True, kv_mask=mask,
                           q_segment_ids=seg, kv_segment_ids=seg)[0]
    return jnp.sum(out ** 2)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _pallas_arg_shapes(sharding=None):
  b, t, h, p = 2, 1000, 4, 64                 # t padded to the 128 blocks
  spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
  x = spec((b, t, h, p), jnp.float32)
  return x, x, x, spec((b, t), jnp.bool_), spec((b, t), jnp.int32)


def test_pallas_lowers_to_triton_for_gpu(monkeypatch):
  """Forward, dQ and dK/dV lower to three Triton kernels for CUDA (lowering
  only: the Triton IR is built here; PTX needs a GPU)."""
  from jax.experimental.pallas import triton as pl_triton
  monkeypatch.setattr(ap, "_pl_compiler_params",
                      lambda: pl_triton.CompilerParams(num_warps=4,
                                                       num_stages=2))
  text = _pallas_grad_fn().trace(*_pallas_arg_shapes()).lower(
      lowering_platforms=("cuda",)).as_text()
  assert text.count("custom_call @__gpu$xla.gpu.triton") == 3


def test_pallas_compiles_for_tpu(monkeypatch):
  """Ahead-of-time Mosaic compile for an abstract TPU v5p chip (needs
  libtpu: ``pip install -e .[tpu]``)."""
  pytest.importorskip("libtpu")
  from jax.experimental import topologies
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
  topo = topologies.get_topology_desc(platform="tpu",
                                      topology_name="v5p:2x2x1")
  shd = jax.sharding.SingleDeviceSharding(topo.devices[0])
  compiled = _pallas_grad_fn().trace(*_pallas_arg_shapes(shd)).lower(
  ).compile()
  assert compiled.memory_analysis().temp_size_in_bytes > 0


def test_pallas_benchmark_dry_run(tmp_path):
  """``benchmarks/bench_flash_pallas.py`` (the native check for a GPU/TPU)
  runs end to end in interpret mode: its check passes and it writes a row
  per form, mode and length."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, "benchmarks/bench_flash_pallas.py", "--interpret",
       "--lengths", "128", "256", "--batch", "1", "--heads", "2",
       "--repeats", "1", "--warmup", "0", "--min-time", "0",
       f"--out={out}"],
      cwd=repo, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "OK" in proc.stdout
  report = json.loads(out.read_text())
  assert max(report["check"].values()) < 1e-4
  assert [(r["form"], r["mode"], r["t"]) for r in report["rows"]] == [
      (f, m, t) for t in (128, 256) for m in ("fwd", "fwdbwd")
      for f in ("pallas", "xla")]
  assert all(r["median_s"] > 0 for r in report["rows"])


def test_large_logits_are_stable():
  q, k, v = _inputs(8, t=12)
  q = q * 200.0
  pallas = lambda *a, block_q, block_k: attention_pallas(
      *a, block_sizes=_blocks(block_q, block_k), interpret=True)
  for form in (attention_blocked, _blocked_saving, attention_dense, pallas):
    out = form(q, k, v, block_q=4, block_k=4)[0]
    assert rel_err(out, attention_reference(q, k, v)[0]) < 1e-5


def test_bfloat16_inputs():
  q, k, v = (x.astype(jnp.bfloat16) for x in _inputs(9, t=10))
  out = attention_blocked(q, k, v, block_q=4, block_k=4)[0]
  assert out.dtype == jnp.bfloat16
  ref = attention_reference(q, k, v)[0]
  assert rel_err(out.astype(jnp.float32), ref.astype(jnp.float32)) < 1e-2


@pytest.mark.shape_errors
def test_bad_shapes_raise():
  q, k, v = _inputs(0, t=6, s=8)
  with pytest.raises(ValueError, match="causal attention needs t == s"):
    attention_reference(q, k, v, causal=True)
  with pytest.raises(ValueError, match="kv_mask must be"):
    attention_blocked(q, k, v, kv_mask=jnp.ones((2, 6), bool))
  with pytest.raises(ValueError, match="both q_segment_ids"):
    attention_dense(q, k, v, q_segment_ids=jnp.zeros((2, 6), jnp.int32))
  with pytest.raises(ValueError, match="block_q=0"):
    attention_blocked(q, k, v, block_q=0)
