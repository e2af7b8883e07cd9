"""Cauchy matrix-vector product, the core of the S4 (DPLR) kernel.

  r[..., l] = sum_n v[..., n] / (z[l] - w[..., n])
with ``conj=True`` adding the conjugate-pair terms
  + sum_n conj(v[..., n]) / (z[l] - conj(w[..., n])),
which is what S4 needs because only one of each conjugate pair is stored.

Shapes (legend of kernels/: ``l`` evaluation nodes, ``n`` state; the jaxtyping
annotations write ``*vb`` for the whole leading shape ``*vb, *wb`` of v):
  v: ``[*vb, *wb, n]`` complex. A leading batch ``vb`` of numerators shares the
     denominators of w (S4 has four: B/P times C/Q).
  z: ``[l]`` complex nodes.
  w: ``[*wb, n]`` complex poles.
  r: ``[*vb, *wb, l]`` complex.

Implementations (one signature, ``impl`` picks):
  * ``cauchy_reference``: the explicit broadcast sum ``[..., n, l]``.
  * ``cauchy_xla``: computes ``1/(z - w)`` once per ``(wb, n, l)`` chunk and
    contracts it with every numerator by a batched matmul; a custom VJP
    recomputes the denominators, so memory is O(|wb| n chunk) and no
    ``[.., n, l]`` residual is stored.
  * ``cauchy_pallas``: a Pallas kernel in real arithmetic (split re/im) tiled
    over (channels ``m = prod(wb)``, ``l``) blocks and reducing over ``n``
    with 2-D ``[block_m, block_l]`` tiles and a static loop over the poles
    (the numerator batch and n are padded to powers of two for Triton).
    Custom VJP with a Pallas backward kernel: one program per ``block_m``
    slab loops over the l blocks, so no two programs write the same output
    (safe on a GPU's parallel grid). Only checked in interpret mode so far
    (``kernels.NATIVE_VALIDATED``).

Gradients follow JAX's complex convention (the VJP of a holomorphic map is
multiplication by its derivative; of ``conj`` it is ``conj``).
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, Complex

from kernels import Impl, register_op, resolve_impl

# native_validated: the backends where the Pallas kernel has passed its test
# class natively (none yet, so AUTO is the XLA form everywhere).
register_op("cauchy", pallas="cauchy", native_validated=frozenset())


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Pallas tile sizes: ``block_m`` channels (flattened ``wb``) by ``block_l`` nodes."""
  block_m: int = 8
  block_l: int = 128

  def __post_init__(self):
    block_m, block_l = self.block_m, self.block_l
    if block_m < 1:
      raise ValueError(f"{block_m=} must be positive")
    if block_l < 1:
      raise ValueError(f"{block_l=} must be positive")


def _split_batch(v, w):
  """Returns (v [j, m, n], w [m, n], vb shape, wb shape) after validating."""
  if w.ndim < 1 or v.ndim < w.ndim:
    raise ValueError(f"{v.shape=} must end with {w.shape=} (w needs an n axis)")
  k = v.ndim - w.ndim
  if tuple(v.shape[k:]) != tuple(w.shape):
    raise ValueError(f"trailing dims of {v.shape=} must equal {w.shape=}")
  vb, wb, n = tuple(v.shape[:k]), tuple(w.shape[:-1]), w.shape[-1]
  j, m = math.prod(vb), math.prod(wb)
  return v.reshape(j, m, n), w.reshape(m, n), vb, wb


def _check_z(z):
  if z.ndim != 1:
    raise ValueError(f"{z.shape=} must be 1-D [l]")


def _common_dtype(v, z, w):
  return jnp.result_type(v.dtype, z.dtype, w.dtype, jnp.complex64)


def cauchy_reference(v: Complex[Array, "*vb n"], z: Complex[Array, "l"],
                     w: Complex[Array, "*wb n"], *,
                     conj: bool = False) -> Complex[Array, "*vb l"]:
  """Explicit Cauchy product ``sum_n v / (z - w)`` (+ conjugate pairs).

  Args:
    v: ``[*vb, *wb, n]`` numerators.
    z: ``[l]`` nodes.
    w: ``[*wb, n]`` poles.
    conj: also add ``conj(v) / (z - conj(w))``.

  Returns:
    ``[*vb, *wb, l]``.
  """
  _check_z(z)
  v3, w2, vb, wb = _split_batch(v, w)
  dt = _common_dtype(v, z, w)
  v3, w2, z = v3.astype(dt), w2.astype(dt), z.astype(dt)
  if conj:
    v3 = jnp.concatenate([v3, jnp.conj(v3)], axis=-1)
    w2 = jnp.concatenate([w2, jnp.conj(w2)], axis=-1)
  terms = v3[:, :, :, None] / (z[None, None, None, :] - w2[None, :, :, None])
  return jnp.sum(terms, axis=2).reshape(*vb, *wb, z.shape[0])


# ----------------------------------------------------------------------------
# XLA form.


def _recip(d):
  """``1/d`` for complex d through real arithmetic (no overflow guards needed)."""
  inv = 1.0 / (jnp.real(d) ** 2 + jnp.imag(d) ** 2)
  return jax.lax.complex(jnp.real(d) * inv, -jnp.imag(d) * inv)


# The sums are contracted by matmuls, which GPUs run in TF32 at the default
# precision: measured on an H200, the XLA form then missed the reference by
# 3.7e-4 (relative) against the 2e-5 the float32 tests allow. S4 kernels are
# sensitive to that error, so these contractions ask for full float32.
_HIGHEST = jax.lax.Precision.HIGHEST


def _xla_power_chunk(v, z, w, conj, power):
  """``sum_n v / (z - w)^power`` for one chunk of z; v [j,m,n], w [m,n], z [c]."""
  g = _recip(z[None, None, :] - w[:, :, None])  # [m, n, c]
  if power == 2:
    g = g * g
  out = jnp.einsum("jmn,mnc->jmc", v, g, precision=_HIGHEST)
  if conj:
    g2 = _recip(z[None, None, :] - jnp.conj(w)[:, :, None])
    if power == 2:
      g2 = g2 * g2
    out = out + jnp.einsum("jmn,mnc->jmc", jnp.conj(v), g2, precision=_HIGHEST)
  return out


def _xla_bwd_chunk(ct, v, z, w, conj):
  """Per-chunk sums ``a = sum_c ct g`` and ``b = sum_c ct g^2`` (conj folded in)."""
  g = _recip(z[None, None, :] - w[:, :, None])  # [m, n, c]
  a = jnp.einsum("jmc,mnc->jmn", ct, g, precision=_HIGHEST)
  b = jnp.einsum("jmc,mnc->jmn", ct, g * g, precision=_HIGHEST)
  if conj:
    g2 = _recip(z[None, None, :] - jnp.conj(w)[:, :, None])
    a = a + jnp.conj(jnp.einsum("jmc,mnc->jmn", ct, g2, precision=_HIGHEST))
    b = b + jnp.conj(jnp.einsum("jmc,mnc->jmn", ct, g2 * g2, precision=_HIGHEST))
  return a, b


def _chunks(l, chunk):
  chunk = max(1, min(chunk, l))
  return chunk, -(-l // chunk)


def _map_over_l(fn, z, chunk):
  """Applies ``fn(z_chunk) -> [..., c]`` over chunks of z and concatenates."""
  l = z.shape[0]
  chunk, nchunks = _chunks(l, chunk)
  if nchunks == 1:
    return fn(z)
  pad = nchunks * chunk - l
  # Padding nodes at 1 + 0j: Re(w) < 0 for a stable SSM keeps them regular,
  # and their outputs are dropped.
  zp = jnp.concatenate([z, jnp.ones((pad,), z.dtype)]) if pad else z
  out = jax.lax.map(fn, zp.reshape(nchunks, chunk))  # [k, ..., c]
  out = jnp.moveaxis(out, 0, -2)
  return out.reshape(*out.shape[:-2], nchunks * chunk)[..., :l]


def _sum_over_l(fn, z, ct, chunk):
  """Sums ``fn(ct_chunk, z_chunk)`` (a pytree) over chunks of (ct, z)."""
  l = z.shape[0]
  chunk, nchunks = _chunks(l, chunk)
  if nchunks == 1:
    return fn(ct, z)
  pad = nchunks * chunk - l
  if pad:
    z = jnp.concatenate([z, jnp.ones((pad,), z.dtype)])
    ct = jnp.concatenate([ct, jnp.zeros((*ct.shape[:-1], pad), ct.dtype)], -1)
  zs = z.reshape(nchunks, chunk)
  cts = jnp.moveaxis(ct.reshape(*ct.shape[:-1], nchunks, chunk), -2, 0)

  def body(acc, xs):
    out = fn(xs[0], xs[1])
    return jax.tree.map(jnp.add, acc, out), None

  init = jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, cts[0], zs[0]))
  acc, _ = jax.lax.scan(body, init, (cts, zs))
  return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _cauchy_xla_core(v, z, w, conj, chunk):
  return _map_over_l(lambda zc: _xla_power_chunk(v, zc, w, conj, 1), z, chunk)


def _cauchy_xla_fwd(v, z, w, conj, chunk):
  return _cauchy_xla_core(v, z, w, conj, chunk), (v, z, w)


def _cauchy_xla_bwd(conj, chunk, res, ct):
  v, z, w = res
  a, b = _sum_over_l(lambda c, zc: _xla_bwd_chunk(c, v, zc, w, conj), z, ct,
                     chunk)
  dv = a
  dw = jnp.sum(v * b, axis=0)
  # dz[l] = -sum_{j,m} ct * sum_n v/(z-w)^2 (+conj); dead code unless z is
  # differentiated (S4's nodes are constants).
  r2 = _map_over_l(lambda zc: _xla_power_chunk(v, zc, w, conj, 2), z, chunk)
  dz = -jnp.sum(ct * r2, axis=(0, 1))
  return dv, dz, dw


_cauchy_xla_core.defvjp(_cauchy_xla_fwd, _cauchy_xla_bwd)


def cauchy_xla(v: Complex[Array, "*vb n"], z: Complex[Array, "l"],
               w: Complex[Array, "*wb n"], *, conj: bool = False,
               chunk_size: int | None = None) -> Complex[Array, "*vb l"]:
  """Cauchy product, XLA form: shared denominators, chunked over l.

  Args:
    v: ``[*vb, *wb, n]`` numerators (the ``vb`` batch shares denominators).
    z: ``[l]`` nodes.
    w: ``[*wb, n]`` poles.
    conj: also add ``conj(v) / (z - conj(w))``.
    chunk_size: nodes per chunk; ``None`` picks one so that a chunk's
      ``[m, n, chunk]`` denominators stay around 2^21 complex numbers.

  Returns:
    ``[*vb, *wb, l]``.
  """
  _check_z(z)
  v3, w2, vb, wb = _split_batch(v, w)
  dt = _common_dtype(v, z, w)
  m, n = w2.shape
  l = z.shape[0]
  if chunk_size is None:
    chunk_size = max(64, (1 << 21) // max(1, m * n))
  if chunk_size < 1:
    raise ValueError(f"{chunk_size=} must be positive")
  out = _cauchy_xla_core(v3.astype(dt), z.astype(dt), w2.astype(dt), bool(conj),
                         int(chunk_size))
  return out.reshape(*vb, *wb, l)


# ----------------------------------------------------------------------------
# Pallas kernel (real arithmetic).


def _recip_ri(dr, di):
  inv = 1.0 / (dr * dr + di * di)
  return dr * inv, -di * inv


def _sq_ri(gr, gi):
  return gr * gr - gi * gi, 2.0 * gr * gi


def _pallas_fwd_kernel(vr_ref, vi_ref, wr_ref, wi_ref, zr_ref, zi_ref,
                       or_ref, oi_ref, *, conj, power, nj, n):
  """One (block_m, block_l) tile: out[j] = sum_n v[j, :, n] g_n (+ conj terms).

  2-D ``[bm, bl]`` tiles only; a static loop over n keeps one pole column
  ``[bm, 1]`` against the node row ``[1, bl]`` at a time.
  """
  zr = zr_ref[...]  # [1, bl]
  zi = zi_ref[...]
  shape = (or_ref.shape[1], or_ref.shape[2])
  acc = [[jnp.zeros(shape, or_ref.dtype) for _ in range(2)] for _ in range(nj)]
  for k in range(n):
    wr = wr_ref[:, pl.ds(k, 1)]  # [bm, 1]
    wi = wi_ref[:, pl.ds(k, 1)]
    gr, gi = _recip_ri(zr - wr, zi - wi)  # [bm, bl]
    if power == 2:
      gr, gi = _sq_ri(gr, gi)
    if conj:
      hr, hi = _recip_ri(zr - wr, zi + wi)
      if power == 2:
        hr, hi = _sq_ri(hr, hi)
    for j in range(nj):
      vr = vr_ref[j, :, pl.ds(k, 1)]  # [bm, 1]
      vi = vi_ref[j, :, pl.ds(k, 1)]
      tr = vr * gr - vi * gi
      ti = vr * gi + vi * gr
      if conj:  # conj(v) * h
        tr = tr + vr * hr + vi * hi
        ti = ti + vr * hi - vi * hr
      acc[j][0] = acc[j][0] + tr
      acc[j][1] = acc[j][1] + ti
  for j in range(nj):
    or_ref[j] = acc[j][0].astype(or_ref.dtype)
    oi_ref[j] = acc[j][1].astype(oi_ref.dtype)


def _pallas_bwd_kernel(cr_ref, ci_ref, wr_ref, wi_ref, zr_ref, zi_ref,
                       ar_ref, ai_ref, br_ref, bi_ref, *, conj, nj, n, bl, nl):
  """One block_m slab; loops over the l blocks (no cross-program accumulation).

  a[j, :, k] = sum_l ct[j] g_k,  b[j, :, k] = sum_l ct[j] g_k^2, plus the
  conjugates of the conj-pair sums. Static loop over the pole column k, inner
  loop over l blocks with ``[bm, 1]`` accumulators.
  """
  bm = ar_ref.shape[1]
  for k in range(n):
    wr = wr_ref[:, pl.ds(k, 1)]  # [bm, 1]
    wi = wi_ref[:, pl.ds(k, 1)]

    def body(t, acc, wr=wr, wi=wi):
      start = pl.multiple_of(t * bl, bl)
      zr = zr_ref[:, pl.ds(start, bl)]  # [1, bl]
      zi = zi_ref[:, pl.ds(start, bl)]
      gr, gi = _recip_ri(zr - wr, zi - wi)  # [bm, bl]
      g2r, g2i = _sq_ri(gr, gi)
      if conj:
        hr, hi = _recip_ri(zr - wr, zi + wi)
        h2r, h2i = _sq_ri(hr, hi)
      new = []
      for j in range(nj):
        cr = cr_ref[j, :, pl.ds(start, bl)]  # [bm, bl]
        ci = ci_ref[j, :, pl.ds(start, bl)]
        ar = cr * gr - ci * gi
        ai = cr * gi + ci * gr
        br = cr * g2r - ci * g2i
        bi = cr * g2i + ci * g2r
        if conj:  # + conj(ct * h)
          ar = ar + (cr * hr - ci * hi)
          ai = ai - (cr * hi + ci * hr)
          br = br + (cr * h2r - ci * h2i)
          bi = bi - (cr * h2i + ci * h2r)
        new.append(tuple(x + jnp.sum(y, axis=1, keepdims=True)
                         for x, y in zip(acc[j], (ar, ai, br, bi))))
      return tuple(new)

    zeros = jnp.zeros((bm, 1), ar_ref.dtype)
    acc = jax.lax.fori_loop(0, nl, body,
                            tuple((zeros,) * 4 for _ in range(nj)))
    for j in range(nj):
      for ref, x in zip((ar_ref, ai_ref, br_ref, bi_ref), acc[j]):
        ref[j, :, pl.ds(k, 1)] = x.astype(ref.dtype)


def _tiles(m, l, block_sizes):
  bm, bl = min(block_sizes.block_m, m), min(block_sizes.block_l, l)
  if m % bm:
    raise ValueError(f"channels {m=} is not a multiple of {bm=} (block_m)")
  if l % bl:
    raise ValueError(f"nodes {l=} is not a multiple of {bl=} (block_l)")
  return bm, bl


def _next_pow2(x):
  return 1 << max(0, (x - 1).bit_length())


def _real_dtype(cdt):
  return jnp.finfo(cdt).dtype


def _pallas_fwd_call(v, z, w, conj, power, block_sizes, interpret):
  nj, m, n = v.shape
  l = z.shape[0]
  bm, bl = _tiles(m, l, block_sizes)
  rdt = _real_dtype(v.dtype)
  kernel = functools.partial(_pallas_fwd_kernel, conj=conj, power=power,
                             nj=nj, n=n)
  v_spec = pl.BlockSpec((nj, bm, n), lambda i, k: (0, i, 0))
  w_spec = pl.BlockSpec((bm, n), lambda i, k: (i, 0))
  z_spec = pl.BlockSpec((1, bl), lambda i, k: (0, k))
  o_spec = pl.BlockSpec((nj, bm, bl), lambda i, k: (0, i, k))
  out_shape = jax.ShapeDtypeStruct((nj, m, l), rdt)
  zr = jnp.real(z).reshape(1, l)
  zi = jnp.imag(z).reshape(1, l)
  outr, outi = pl.pallas_call(
      kernel,
      grid=(m // bm, l // bl),
      in_specs=[v_spec, v_spec, w_spec, w_spec, z_spec, z_spec],
      out_specs=[o_spec, o_spec],
      out_shape=[out_shape, out_shape],
      interpret=interpret,
      name=f"cauchy_fwd_p{power}",
  )(jnp.real(v), jnp.imag(v), jnp.real(w), jnp.imag(w), zr, zi)
  return jax.lax.complex(outr, outi)


def _pallas_bwd_call(ct, z, w, conj, block_sizes, interpret):
  nj, m, l = ct.shape
  n = w.shape[-1]
  bm, bl = _tiles(m, l, block_sizes)
  rdt = _real_dtype(w.dtype)
  kernel = functools.partial(_pallas_bwd_kernel, conj=conj, nj=nj, n=n,
                             bl=bl, nl=l // bl)
  c_spec = pl.BlockSpec((nj, bm, l), lambda i: (0, i, 0))
  w_spec = pl.BlockSpec((bm, n), lambda i: (i, 0))
  z_spec = pl.BlockSpec((1, l), lambda i: (0, 0))
  o_spec = pl.BlockSpec((nj, bm, n), lambda i: (0, i, 0))
  out_shape = jax.ShapeDtypeStruct((nj, m, n), rdt)
  ar, ai, br, bi = pl.pallas_call(
      kernel,
      grid=(m // bm,),
      in_specs=[c_spec, c_spec, w_spec, w_spec, z_spec, z_spec],
      out_specs=[o_spec] * 4,
      out_shape=[out_shape] * 4,
      interpret=interpret,
      name="cauchy_bwd",
  )(jnp.real(ct).astype(rdt), jnp.imag(ct).astype(rdt), jnp.real(w),
    jnp.imag(w), jnp.real(z).reshape(1, l), jnp.imag(z).reshape(1, l))
  return jax.lax.complex(ar, ai), jax.lax.complex(br, bi)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _cauchy_pallas_core(v, z, w, conj, block_sizes, interpret):
  return _pallas_fwd_call(v, z, w, conj, 1, block_sizes, interpret)


def _cauchy_pallas_fwd(v, z, w, conj, block_sizes, interpret):
  out = _pallas_fwd_call(v, z, w, conj, 1, block_sizes, interpret)
  return out, (v, z, w)


def _cauchy_pallas_bwd(conj, block_sizes, interpret, res, ct):
  v, z, w = res
  ct = ct.astype(v.dtype)
  a, b = _pallas_bwd_call(ct, z, w, conj, block_sizes, interpret)
  dw = jnp.sum(v * b, axis=0)
  r2 = _pallas_fwd_call(v, z, w, conj, 2, block_sizes, interpret)
  dz = -jnp.sum(ct * r2, axis=(0, 1))
  return a, dz, dw


_cauchy_pallas_core.defvjp(_cauchy_pallas_fwd, _cauchy_pallas_bwd)


def cauchy_pallas(v: Complex[Array, "*vb n"], z: Complex[Array, "l"],
                  w: Complex[Array, "*wb n"], *, conj: bool = False,
                  interpret: bool = False,
                  block_sizes: BlockSizes = BlockSizes(),
                  ) -> Complex[Array, "*vb l"]:
  """Cauchy product as a Pallas kernel (real arithmetic), with a Pallas VJP.

  Args:
    v: ``[*vb, *wb, n]`` numerators.
    z: ``[l]`` nodes.
    w: ``[*wb, n]`` poles.
    conj: also add ``conj(v) / (z - conj(w))``.
    interpret: run the kernel in the Pallas interpreter (CPU tests).
    block_sizes: tile sizes; a block larger than its dimension is clamped to
      it, otherwise ``m = prod(wb)`` and ``l`` must be multiples of the blocks.

  Returns:
    ``[*vb, *wb, l]``.

  Raises:
    ValueError: if the shapes cannot be tiled by ``block_sizes``.
  """
  _check_z(z)
  v3, w2, vb, wb = _split_batch(v, w)
  _tiles(w2.shape[0], z.shape[0], block_sizes)
  dt = _common_dtype(v, z, w)
  v3, w2, z = v3.astype(dt), w2.astype(dt), z.astype(dt)
  # Triton needs power-of-two array sizes: pad the numerator batch with zero
  # numerators and n with zero numerators over a copy of a real pole (finite
  # wherever the unpadded product is).
  nj, n = v3.shape[0], v3.shape[-1]
  pj, pn = _next_pow2(nj) - nj, _next_pow2(n) - n
  if pj or pn:
    v3 = jnp.pad(v3, ((0, pj), (0, 0), (0, pn)))
    w2 = jnp.concatenate([w2, jnp.repeat(w2[:, :1], pn, axis=1)], axis=1)
  out = _cauchy_pallas_core(v3, z, w2, bool(conj), block_sizes, bool(interpret))
  return out[:nj].reshape(*vb, *wb, z.shape[0])


def cauchy(v: Complex[Array, "*vb n"], z: Complex[Array, "l"],
           w: Complex[Array, "*wb n"], *, conj: bool = False,
           impl: Impl | str = Impl.AUTO,
           block_sizes: BlockSizes = BlockSizes()) -> Complex[Array, "*vb l"]:
  """Cauchy product ``sum_n v / (z - w)`` (+ conj pairs); see module docstring.

  Args:
    v: ``[*vb, *wb, n]`` numerators.
    z: ``[l]`` nodes.
    w: ``[*wb, n]`` poles.
    conj: also add ``conj(v) / (z - conj(w))``.
    impl: ``Impl``; AUTO picks the Pallas kernel only on a backend where it
      has passed natively (``kernels.NATIVE_VALIDATED``), else the XLA form.
    block_sizes: Pallas tiles (ignored by the other implementations).

  Returns:
    ``[*vb, *wb, l]``.
  """
  impl = resolve_impl(impl, op="cauchy")
  if impl is Impl.REFERENCE:
    return cauchy_reference(v, z, w, conj=conj)
  if impl is Impl.XLA:
    return cauchy_xla(v, z, w, conj=conj)
  return cauchy_pallas(v, z, w, conj=conj, block_sizes=block_sizes,
                       interpret=impl is Impl.PALLAS_INTERPRET)
