"""Strict test setup: 8 simulated CPU devices, rank promotion raises, fixed
seeds, and the jaxtyping annotations of kernels/, layers/ and models/ checked
at run time (beartype; at trace time under jit). ``LONGSEQ_TYPECHECK=0``
turns the annotation checks off for a run."""
import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jaxtyping  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The hook the annotations are checked with (tests/typechecking.py). A test
# that checks the code's own errors for wrongly shaped inputs (what a user
# sees without the hook) is marked ``shape_errors``: the annotation checks
# are off while it runs, since they would raise their TypeCheckError before
# the function body. test_typecheck.py checks the hook in a subprocess.
TYPECHECKER = "typechecking.beartype_checker"
TYPECHECK = os.environ.get("LONGSEQ_TYPECHECK", "1") != "0"
if TYPECHECK:
  # Must happen before any of these packages is imported: the hook decorates
  # every function of a module as it is loaded.
  jaxtyping.install_import_hook(["kernels", "layers", "models"], TYPECHECKER)

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _annotation_checks(request):
  """Off during a ``shape_errors`` test (jaxtyping reads the flag per call)."""
  off = request.node.get_closest_marker("shape_errors") is not None
  before = jaxtyping.config.jaxtyping_disable
  jaxtyping.config.update("jaxtyping_disable", off or before)
  yield
  jaxtyping.config.update("jaxtyping_disable", before)


@pytest.fixture(autouse=True)
def _fixed_seed():
  np.random.seed(0)
  yield


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def key():
  return jax.random.key(0)
