"""train/host.py: the LONGSEQ_MALLOC decision and what the settings do."""
import ctypes.util
import os
import subprocess
import sys
import textwrap

import pytest

from train import host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("environ, expected", [
    ({"LONGSEQ_MALLOC": "0"}, False),
    ({"LONGSEQ_MALLOC": "off", "JAX_PLATFORMS": "cpu"}, False),
    ({"LONGSEQ_MALLOC": "1", "JAX_PLATFORMS": "cuda"}, True),
    ({"JAX_PLATFORMS": "cpu"}, True),
    ({"LONGSEQ_MALLOC": "auto", "JAX_PLATFORMS": "cpu"}, True),
    ({"JAX_PLATFORMS": "cuda"}, False),
    ({"JAX_PLATFORMS": "tpu,cpu"}, False),
])
def test_wanted(environ, expected):
  assert host.wanted(environ) is expected


def test_wanted_auto_without_platforms_follows_the_installed_plugins():
  assert host.wanted({}) is (not host.accelerator_installed())


def test_bad_value_names_the_variable():
  with pytest.raises(ValueError, match="LONGSEQ_MALLOC='yes please'"):
    host.wanted({"LONGSEQ_MALLOC": "yes please"})


_FAULTS = textwrap.dedent("""
    import ctypes, ctypes.util, os, resource, sys
    sys.path.insert(0, {repo!r})
    from train import host
    applied = host.configure_malloc()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 64 << 20
    faults = []
    for _ in range(4):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      ptr = libc.malloc(size)
      ctypes.memset(ptr, 1, size)
      libc.free(ptr)
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, max(faults[1:]))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or "musl" in (ctypes.util.find_library("c") or ""),
                    reason="glibc only")
@pytest.mark.parametrize("mode", ["1", "0"])
def test_freed_large_blocks_are_reused_only_when_tuned(mode):
  """A 64 MiB block malloc'd, written and freed four times: glibc's defaults
  mmap it afresh each time (16384 4-KiB pages fault in again); tuned, the
  second and later rounds reuse the heap pages without a fault."""
  env = dict(os.environ, LONGSEQ_MALLOC=mode)
  out = subprocess.run([sys.executable, "-c", _FAULTS.format(repo=REPO)],
                       env=env, capture_output=True, text=True, check=True)
  applied, faults = out.stdout.split()
  if mode == "1":
    assert applied == "True"
    assert int(faults) < 100, out.stdout
  else:
    assert applied == "False"
    # Huge pages (THP "always") would fault in 32 pages instead of 16384.
    assert int(faults) >= 32, out.stdout
