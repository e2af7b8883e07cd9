"""Long convolution along time by FFT (the convolution step of S4/S4D).

Convention (``u [b, t, d]``, kernels ``[d, t_k]``):

  causal:        y_i = sum_{s=0}^{min(i, t_k-1)} k_s u_{i-s}
  bidirectional: y_i = (causal part) + sum_{s=1}^{t_k} k_reverse_{s-1} u_{i+s}

The anti-causal half follows the official S4 "bidirectional" option
(state-spaces/s4, ``FFTConv``): the kernel is split into a forward and a
backward half and the backward half is applied to the time-reversed
sequence, starting one step in the future (``k_reverse_0`` multiplies
``u_{i+1}``, so the lag-0 term is the forward kernel's alone). Kernel entries
beyond ``t`` never touch the sequence and are ignored.
"""
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from kernels import Impl, register_op, resolve_impl

register_op("fftconv")


def fft_size(n: int) -> int:
  """Smallest 5-smooth integer (2^a 3^b 5^c) >= n: fast for ducc, cuFFT, TPU."""
  if n < 1:
    raise ValueError(f"{n=} must be >= 1")
  best = 1 << (n - 1).bit_length()
  p5 = 1
  while p5 < best:
    p35 = p5
    while p35 < best:
      p = p35
      while p < n:
        p *= 2
      best = min(best, p)
      p35 *= 3
    p5 *= 5
  return best


def _check(u, k, k_reverse):
  if u.ndim != 3:
    raise ValueError(f"u must be [b, t, d]; got {u.shape=}")
  if k.ndim != 2 or k.shape[0] != u.shape[2]:
    raise ValueError(f"k must be [d, t_k] with d={u.shape[2]}; got {k.shape=}")
  if k_reverse is not None and k_reverse.shape != k.shape:
    raise ValueError(f"{k_reverse.shape=} must equal {k.shape=}")


def _compute_dtype(u):
  return jnp.promote_types(u.dtype, jnp.float32)


def fftconv_reference(
    u: Float[Array, "b t d"],
    k: Float[Array, "d tk"],
    *,
    k_reverse: Float[Array, "d tk"] | None = None,
) -> Float[Array, "b t d"]:
  """Direct O(t^2) sum of the convention in the module docstring."""
  _check(u, k, k_reverse)
  t, t_k = u.shape[1], k.shape[1]
  dtype = _compute_dtype(u)
  lag = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]  # [i, j] = i - j
  causal = (lag >= 0) & (lag < t_k)
  toeplitz = jnp.where(causal[None], k.astype(dtype)[:, jnp.clip(lag, 0, t_k - 1)],
                       0.0)
  if k_reverse is not None:
    anti = (lag <= -1) & (lag >= -t_k)
    toeplitz += jnp.where(
        anti[None], k_reverse.astype(dtype)[:, jnp.clip(-lag - 1, 0, t_k - 1)],
        0.0)
  y = jnp.einsum("dij,bjd->bid", toeplitz, u.astype(dtype),
                 precision=jax.lax.Precision.HIGHEST)
  return y.astype(u.dtype)


def fftconv_xla(
    u: Float[Array, "b t d"],
    k: Float[Array, "d tk"],
    *,
    k_reverse: Float[Array, "d tk"] | None = None,
) -> Float[Array, "b t d"]:
  """rFFT convolution, zero-padded to a 5-smooth size (``fft_size``).

  With ``t_k`` clipped to ``t``, the causal case needs ``n >= t + t_k - 1``
  (the linear convolution's length). The bidirectional case uses
  ``n >= t + t_k``: lags in ``(-t, t)`` then map to distinct indices, the
  causal half occupying ``[0, t_k)`` and the anti-causal half
  ``[n - t_k, n)``, so the circular convolution equals the linear one on
  outputs ``0..t-1``.
  """
  _check(u, k, k_reverse)
  t = u.shape[1]
  dtype = _compute_dtype(u)
  t_k = min(k.shape[1], t)
  k = k[:, :t_k].astype(dtype)
  n = fft_size(t + t_k if k_reverse is not None else t + t_k - 1)
  if k_reverse is not None:
    # Place k_reverse_{s-1} at index n - s (lag -s), s = 1..t_k.
    k_rev = k_reverse[:, :t_k].astype(dtype)[:, ::-1]
    k = jnp.concatenate(
        [k, jnp.zeros((k.shape[0], n - 2 * t_k), dtype), k_rev], axis=1)
  # FFTs run along the minor axis: transposing u (and y) explicitly once is
  # much cheaper than FFTs over axis 1, whose transposes XLA repeats on the
  # 2x-padded arrays, in the backward pass especially.
  k_f = jnp.fft.rfft(k, n=n, axis=-1)  # [d, n//2+1]
  u_f = jnp.fft.rfft(jnp.swapaxes(u.astype(dtype), 1, 2), n=n, axis=-1)
  y = jnp.fft.irfft(u_f * k_f[None], n=n, axis=-1)[..., :t]  # [b, d, t]
  y = jnp.swapaxes(y, 1, 2)
  return y.astype(u.dtype)


def fftconv(
    u: Float[Array, "b t d"],
    k: Float[Array, "d tk"],
    *,
    k_reverse: Float[Array, "d tk"] | None = None,
    impl: Impl | str = Impl.AUTO,
) -> Float[Array, "b t d"]:
  """Causal (or, with ``k_reverse``, bidirectional) convolution of ``u`` by ``k``.

  Args:
    u: input ``[b, t, d]``; computed in float32 (or wider), returned in
      ``u.dtype``.
    k: causal kernel ``[d, t_k]``; any ``t_k >= 1`` (entries past ``t`` unused).
    k_reverse: optional anti-causal kernel ``[d, t_k]``; see the module
      docstring for the convention.
    impl: ``Impl.REFERENCE`` (direct sum) or the XLA form (AUTO); there is no
      Pallas kernel for this op, so asking for one raises a ValueError.
  """
  impl = resolve_impl(impl, op="fftconv")
  if impl is Impl.REFERENCE:
    return fftconv_reference(u, k, k_reverse=k_reverse)
  return fftconv_xla(u, k, k_reverse=k_reverse)
