"""Strict test setup: 8 simulated CPU devices, rank promotion raises, fixed
seeds; with ``LONGSEQ_TYPECHECK=1`` the jaxtyping annotations of kernels/,
layers/ and models/ are checked at run time (beartype; at trace time under
jit)."""
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

# The hook the annotations are checked with (tests/typechecking.py). Opt-in:
# many tests assert the kernels' own ValueError messages for wrongly shaped
# inputs, and the annotation check raises its TypeCheckError before the
# function body runs. test_typecheck.py checks the hook in a subprocess.
TYPECHECKER = "typechecking.beartype_checker"
if os.environ.get("LONGSEQ_TYPECHECK", "0") == "1":
  # Must happen before any of these packages is imported: the hook decorates
  # every function of a module as it is loaded.
  jaxtyping.install_import_hook(["kernels", "layers", "models"], TYPECHECKER)

jax.config.update("jax_numpy_rank_promotion", "raise")


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
