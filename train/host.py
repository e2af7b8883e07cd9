"""Process-level settings of the host: glibc malloc for XLA:CPU.

XLA:CPU allocates an executable's buffers afresh at every execution and frees
them at its end. With glibc's defaults a freed block above the mmap threshold
(dynamic, at most 32 MiB) goes back to the kernel, and so do the per-thread
arenas' heaps, so every training step page-faults its working set in again.
Measured on this project's 2-core CPU (glibc 2.36), forward + backward, batch
8, width 256:

  * Linformer at t=1024: 20.7k minor faults and 41 ms of system CPU time per
    step, 172 ms of wall time; with :func:`configure_malloc` applied first,
    0 faults and 146 ms;
  * Longformer at t=16384: 1.14M faults and 2.0 s of system time per step
    even with a 2 GiB mmap threshold (its 4.4 GiB of temporaries are one
    block); with these settings 0 faults, 5.1 s -> 4.0 s.

PyTorch's CPU tuning guides make the same point with jemalloc / tcmalloc
preloaded; this does it with glibc's own ``mallopt`` (see ``man mallopt``):

  * ``M_MMAP_MAX`` 0: no block is mmapped, every one comes from the heap;
  * ``M_TRIM_THRESHOLD`` -1: the heap is never trimmed, freed memory stays
    with the process (its RSS keeps its peak, as a caching allocator's does);
  * ``M_ARENA_MAX`` 1: every thread allocates from the main heap. A thread
    arena's heap is at most 64 MiB and mmaps what does not fit.

The arena limit only binds threads that have not allocated yet, so call
:func:`configure_malloc` before the first jax computation (before the backend
starts its thread pools): ``python -m train`` and the benchmarks do. In a
notebook, run it in the first cell.

``LONGSEQ_MALLOC`` chooses: ``auto`` (the default) applies it when jax will
run on the CPU (``JAX_PLATFORMS=cpu``, or no GPU/TPU plugin installed), ``1``
always, ``0`` never. Without glibc (macOS, musl) it does nothing.
"""
import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys

ENV = "LONGSEQ_MALLOC"

# mallopt parameters (glibc malloc.h) and their values.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1))


def accelerator_installed() -> bool:
  """Whether a GPU or TPU PJRT plugin for jax is installed (not imported)."""
  if importlib.util.find_spec("libtpu") is not None:
    return True
  if importlib.metadata.entry_points(group="jax_plugins"):
    return True
  try:  # CUDA / ROCm plugins are namespace packages jax_plugins.xla_*
    spec = importlib.util.find_spec("jax_plugins")
  except (ImportError, ValueError):
    spec = None
  if spec is None or spec.submodule_search_locations is None:
    return False
  return any(os.listdir(p) for p in spec.submodule_search_locations
             if os.path.isdir(p))


def wanted(environ=None) -> bool:
  """The ``LONGSEQ_MALLOC`` decision (see the module docstring)."""
  environ = os.environ if environ is None else environ
  mode = environ.get(ENV, "auto").strip().lower()
  if mode in ("1", "true", "on"):
    return True
  if mode in ("0", "false", "off"):
    return False
  if mode != "auto":
    raise ValueError(f"{ENV}={environ[ENV]!r}: use auto, 1 or 0")
  platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0] == "cpu"
  return not accelerator_installed()


def configure_malloc(environ=None) -> bool:
  """Applies the malloc settings if wanted; True if glibc took them all."""
  if not wanted(environ) or not sys.platform.startswith("linux"):
    return False
  name = ctypes.util.find_library("c") or "libc.so.6"
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return all([mallopt(param, value) == 1 for param, value in SETTINGS])
