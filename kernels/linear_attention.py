"""Linear attention (Katharopoulos et al., "Transformers are RNNs: Fast
Autoregressive Transformers with Linear Attention", ICML 2020).

With a positive feature map ``phi`` (applied by the layer: the kernel gets
``q = phi(Q)``, ``k = phi(K)``), per head, causal (eqs. 16-20):

  S_t = S_{t-1} + k_t v_t^T,   z_t = z_{t-1} + k_t,
  out_t = q_t^T S_t / (q_t . z_t + eps),

and non-causal (eq. 6) the same with ``S = sum_t k_t v_t^T``,
``z = sum_t k_t`` over the whole sequence for every query. ``eps`` is added
to the denominator, as in the official code (idiap/fast-transformers
``fast_transformers/attention/linear_attention.py``,
``causal_linear_attention.py`` and ``recurrent/attention/self_attention/
linear_attention.py``: ``Z = 1 / (Q . sum K + eps)``, default ``eps=1e-6``).

Forms (one signature; ``(out, (S, z))``):
  * ``linear_attention_recurrent``: the recurrence, ``lax.scan`` over ``t``
    (the reference, and the decode step).
  * ``linear_attention_quadratic``: the masked form
    ``((q k^T) o M) [v, 1]`` with the causal mask ``M``, ``O(t^2)``.
  * ``linear_attention_chunked``: quadratic inside chunks of ``chunk_size``
    tokens plus the state entering each chunk, ``O(t c)``.
The normaliser rides along as an extra value column: with ``v' = [v, 1]``
the state ``[S, z] = sum k v'^T`` gives numerator and denominator in one
product.

A state ``initial_state = (S_0 [b, h, p, pv], z_0 [b, h, p])`` continues a
sequence (causal) or is added to the global sums (non-causal). The final
state is ``(S_T, z_T)`` (the full sums, non-causal). Padded keys must have
``k = 0`` (the layer zeroes ``phi(K)`` there), which makes them contribute
nothing.

Shapes (jaxtyping names): ``b`` batch, ``t`` time, ``h`` heads, ``p``
feature (key) dim, ``pv`` value dim, ``c`` chunk. Computation is in float32;
outputs have ``q.dtype``, states are float32.
"""
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from kernels import Impl, register_op, resolve_impl

register_op("linear_attention")

_HI = jax.lax.Precision.HIGHEST

# Tokens per step of the chunked form's scan over blocks. Causal kernel,
# forward + backward, b=8 h=4 p=64 float32, this 2-core CPU: one block for
# the whole input costs 2.78 s at t=16384 (21-25x its cost at t=1024: the
# per-chunk states and scores outgrow the cache); blocks of 1024 tokens
# (each step the working set of a t=1024 input) 1.96 s, 512: 1.88 s,
# 2048: 2.07 s.
DEFAULT_BLOCK_SIZE = 1024

State = tuple[Float[Array, "b h p pv"], Float[Array, "b h p"]]


def _check(q, k, v, chunk_size, initial_state):
  if q.ndim != 4:
    raise ValueError(f"q must be [b, t, h, p]; got {q.shape=}")
  b, t, h, p = q.shape
  if k.shape != q.shape:
    raise ValueError(f"k must have q's shape {q.shape}; got {k.shape=}")
  if v.ndim != 4 or v.shape[:3] != (b, t, h):
    raise ValueError(f"v must be [b, t, h, pv] with {(b, t, h)=}; got "
                     f"{v.shape=}")
  pv = v.shape[3]
  if int(chunk_size) < 1:
    raise ValueError(f"{chunk_size=} must be >= 1")
  if initial_state is not None:
    S0, z0 = initial_state
    if S0.shape != (b, h, p, pv) or z0.shape != (b, h, p):
      raise ValueError(
          f"initial_state must be (S [b, h, p, pv] = {(b, h, p, pv)}, "
          f"z [b, h, p] = {(b, h, p)}); got {S0.shape=} {z0.shape=}")
  return b, t, h, p, pv


def _augmented_state(initial_state, b, h, p, pv):
  """``[S, z]`` as one ``[b, h, p, pv + 1]`` float32 array."""
  if initial_state is None:
    return jnp.zeros((b, h, p, pv + 1), jnp.float32)
  S0, z0 = initial_state
  return jnp.concatenate([S0.astype(jnp.float32),
                          z0.astype(jnp.float32)[..., None]], axis=-1)


def _split_state(Sz):
  return Sz[..., :-1], Sz[..., -1]


def _normalise(num_den, eps):
  """``[..., pv + 1]`` (numerator, denominator) -> ``num / (den + eps)``."""
  return num_den[..., :-1] / (num_den[..., -1:] + eps)


def _bhtp(x):
  """``[b, t, h, p]`` float32 -> ``[b, h, t, p]``."""
  return jnp.transpose(x.astype(jnp.float32), (0, 2, 1, 3))


def _with_ones(v):
  """``[b, h, t, pv] -> [b, h, t, pv + 1]``, the value augmented by 1."""
  return jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)


def _global(q, k, v, Sz0, eps, out_dtype):
  """Non-causal: every query reads the full sums (plus the initial state)."""
  Sz = Sz0 + jnp.einsum("bhtp,bhtv->bhpv", k, _with_ones(v), precision=_HI)
  out = _normalise(jnp.einsum("bhtp,bhpv->bhtv", q, Sz, precision=_HI), eps)
  return jnp.transpose(out, (0, 2, 1, 3)).astype(out_dtype), _split_state(Sz)


def linear_attention_recurrent(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b t h p"],
    v: Float[Array, "b t h pv"],
    *,
    causal: bool = True,
    chunk_size: int = 64,
    initial_state: State | None = None,
    eps: float = 1e-6,
) -> tuple[Float[Array, "b t h pv"], State]:
  """The recurrence (eqs. 18-20), one token at a time: the reference.

  ``chunk_size`` is accepted for a common signature and ignored.
  Returns ``(out [b, t, h, pv], (S [b, h, p, pv], z [b, h, p]))``.
  """
  b, t, h, p, pv = _check(q, k, v, chunk_size, initial_state)
  out_dtype = q.dtype
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  S0 = (jnp.zeros((b, h, p, pv), jnp.float32) if initial_state is None
        else initial_state[0].astype(jnp.float32))
  z0 = (jnp.zeros((b, h, p), jnp.float32) if initial_state is None
        else initial_state[1].astype(jnp.float32))

  def step(carry, inp):
    S, z = carry
    q_t, k_t, v_t = inp                                   # [b, h, p|pv]
    S = S + k_t[..., :, None] * v_t[..., None, :]
    z = z + k_t
    if causal:
      num = jnp.einsum("bhp,bhpv->bhv", q_t, S, precision=_HI)
      den = jnp.sum(q_t * z, axis=-1)
      out_t = num / (den[..., None] + eps)
    else:
      out_t = None
    return (S, z), out_t

  tm = lambda x: jnp.moveaxis(x, 1, 0)
  (S, z), out = jax.lax.scan(step, (S0, z0), (tm(q), tm(k), tm(v)))
  if not causal:
    num = jnp.einsum("bthp,bhpv->bthv", q, S, precision=_HI)
    den = jnp.einsum("bthp,bhp->bth", q, z, precision=_HI)
    return (num / (den[..., None] + eps)).astype(out_dtype), (S, z)
  return jnp.moveaxis(out, 0, 1).astype(out_dtype), (S, z)


def linear_attention_quadratic(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b t h p"],
    v: Float[Array, "b t h pv"],
    *,
    causal: bool = True,
    chunk_size: int = 64,
    initial_state: State | None = None,
    eps: float = 1e-6,
) -> tuple[Float[Array, "b t h pv"], State]:
  """The masked "attention" form ``((q k^T) o M) [v, 1] + q [S_0, z_0]``.

  ``O(t^2)`` time and memory; a test and benchmark form. Arguments and
  returns as ``linear_attention_recurrent`` (``chunk_size`` ignored).
  """
  b, t, h, p, pv = _check(q, k, v, chunk_size, initial_state)
  out_dtype = q.dtype
  q, k, v = _bhtp(q), _bhtp(k), _bhtp(v)
  Sz0 = _augmented_state(initial_state, b, h, p, pv)
  if not causal:
    return _global(q, k, v, Sz0, eps, out_dtype)
  va = _with_ones(v)
  scores = jnp.einsum("bhtp,bhsp->bhts", q, k, precision=_HI)
  scores = jnp.where(jnp.tril(jnp.ones((t, t), bool))[None, None], scores, 0.0)
  num_den = (jnp.einsum("bhts,bhsv->bhtv", scores, va, precision=_HI) +
             jnp.einsum("bhtp,bhpv->bhtv", q, Sz0, precision=_HI))
  out = jnp.transpose(_normalise(num_den, eps), (0, 2, 1, 3))
  Sz = Sz0 + jnp.einsum("bhtp,bhtv->bhpv", k, va, precision=_HI)
  return out.astype(out_dtype), _split_state(Sz)


def _chunked_block(qc, kc, vc, Sz0):
  """One block of ``c`` chunks of ``Q`` tokens: ``qc, kc [b, h, c, Q, p]``,
  ``vc [b, h, c, Q, pv + 1]`` (augmented), ``Sz0 [b, h, p, pv + 1]`` the
  state entering the block. Returns ``(num_den [b, h, c, Q, pv + 1], Sz)``,
  ``Sz`` the state after the block."""
  Q = qc.shape[3]
  # Per-chunk states and the state entering each chunk.
  chunk_sums = jnp.einsum("bhcjp,bhcjv->bhcpv", kc, vc, precision=_HI)
  totals = jnp.cumsum(chunk_sums, axis=2)
  states_in = Sz0[:, :, None] + totals - chunk_sums         # exclusive
  scores = jnp.einsum("bhcip,bhcjp->bhcij", qc, kc, precision=_HI)
  scores = jnp.where(jnp.tril(jnp.ones((Q, Q), bool))[None, None, None],
                     scores, 0.0)
  num_den = (jnp.einsum("bhcij,bhcjv->bhciv", scores, vc, precision=_HI) +
             jnp.einsum("bhcip,bhcpv->bhciv", qc, states_in, precision=_HI))
  return num_den, Sz0 + totals[:, :, -1]


def linear_attention_chunked(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b t h p"],
    v: Float[Array, "b t h pv"],
    *,
    causal: bool = True,
    chunk_size: int = 64,
    initial_state: State | None = None,
    eps: float = 1e-6,
    block_size: int | None = DEFAULT_BLOCK_SIZE,
) -> tuple[Float[Array, "b t h pv"], State]:
  """Chunked form: quadratic inside each chunk of ``c`` tokens, plus the
  state entering the chunk (an exclusive cumulative sum of the chunks'
  ``k^T [v, 1]``); ``O(t c)`` time, ``O(t / c)`` states.

  Long inputs run as a ``lax.scan`` over blocks of about ``block_size``
  tokens (whole chunks) that carries the state from block to block, so each
  step's working set is that of a ``block_size``-token input and stays in
  cache whatever ``t`` is (``None``: one block). The result is the same.

  ``chunk_size`` need not divide ``t``: the tail is padded with ``k = 0``
  (no contribution) and cut. Arguments and returns as
  ``linear_attention_recurrent``.
  """
  b, t, h, p, pv = _check(q, k, v, chunk_size, initial_state)
  if block_size is not None and int(block_size) < 1:
    raise ValueError(f"{block_size=} must be >= 1 (or None)")
  out_dtype = q.dtype
  q, k, v = _bhtp(q), _bhtp(k), _bhtp(v)
  Sz0 = _augmented_state(initial_state, b, h, p, pv)
  if not causal:
    return _global(q, k, v, Sz0, eps, out_dtype)
  Q = min(int(chunk_size), t)
  n_chunks = -(-t // Q)
  # nb blocks of c chunks each; c is chosen so that padding stays < nb chunks.
  per_block = n_chunks if block_size is None else max(1, int(block_size) // Q)
  nb = -(-n_chunks // per_block)
  c = -(-n_chunks // nb)
  T = nb * c * Q
  pad = lambda x: jnp.pad(x, [(0, 0), (0, 0), (0, T - t), (0, 0)])
  va = _with_ones(v)
  if nb == 1:
    blocks = lambda x: pad(x).reshape(b, h, c, Q, x.shape[-1])
    num_den, Sz = _chunked_block(blocks(q), blocks(k), blocks(va), Sz0)
    out = _normalise(num_den, eps).reshape(b, h, T, pv)
  else:
    blocks = lambda x: jnp.moveaxis(
        pad(x).reshape(b, h, nb, c, Q, x.shape[-1]), 2, 0)

    def step(Sz, xs):
      num_den, Sz = _chunked_block(*xs, Sz)
      return Sz, _normalise(num_den, eps)

    Sz, out = jax.lax.scan(step, Sz0, (blocks(q), blocks(k), blocks(va)))
    out = jnp.moveaxis(out, 0, 2).reshape(b, h, T, pv)
  out = jnp.transpose(out[:, :, :t], (0, 2, 1, 3))
  return out.astype(out_dtype), _split_state(Sz)


def linear_attention(
    q: Float[Array, "b t h p"],
    k: Float[Array, "b t h p"],
    v: Float[Array, "b t h pv"],
    *,
    causal: bool = True,
    chunk_size: int = 64,
    initial_state: State | None = None,
    eps: float = 1e-6,
    impl: Impl | str = Impl.AUTO,
) -> tuple[Float[Array, "b t h pv"], State]:
  """Linear attention ``(out, (S, z))``; see the module docstring.

  ``impl``: ``Impl.REFERENCE`` (the recurrence) or the XLA chunked form
  (AUTO); no Pallas kernel (asking for one raises a ValueError).
  """
  impl = resolve_impl(impl, op="linear_attention")
  kwargs = dict(causal=causal, chunk_size=chunk_size,
                initial_state=initial_state, eps=eps)
  if impl is Impl.REFERENCE:
    return linear_attention_recurrent(q, k, v, **kwargs)
  return linear_attention_chunked(q, k, v, **kwargs)
