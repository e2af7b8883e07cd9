"""The jaxtyping annotations are checked at run time (conftest.py's import
hook; ``LONGSEQ_TYPECHECK=0`` turns it off): a wrongly shaped array raises
before the body runs, also under jit, where the check runs at trace time.
Checked in this run, in a ``shape_errors`` test (checks off, the code's own
ValueError), and in a fresh interpreter with the hook installed, whatever this
run's setting."""
import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import conftest
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

from kernels import ssd

TESTS = pathlib.Path(__file__).resolve().parent

_SCRIPT = textwrap.dedent("""
    import jaxtyping
    jaxtyping.install_import_hook(["kernels", "layers", "models"],
                                  "typechecking.beartype_checker")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from kernels import ssd
    from layers.mamba2 import Mamba2

    rng = np.random.default_rng(0)
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    b, t, h, p, g, n = 2, 5, 2, 3, 1, 4
    x, dt, A = f32(b, t, h, p), jnp.abs(f32(b, t, h)), -jnp.abs(f32(h))
    B, C = f32(b, t, g, n), f32(b, t, g, n)
    y, _ = ssd.ssd_reference(x, dt, A, B, C)  # consistent shapes pass
    assert y.shape == x.shape

    def raises(f, *args):
      try:
        f(*args)
      except jaxtyping.TypeCheckError:
        return True
      return False

    # dt [b, t, h + 1] contradicts "b t h" with h bound by x (the kernel's own
    # check would raise a ValueError; the annotation check comes first).
    bad_dt = jnp.concatenate([dt, dt[..., :1]], axis=-1)
    print("eager", raises(ssd.ssd_reference, x, bad_dt, A, B, C))
    print("jit", raises(jax.jit(ssd.ssd_reference), x, bad_dt, A, B, C))
    print("dtype", raises(ssd.ssd_reference, x, dt, A, B.astype(jnp.int32), C))
    layer = Mamba2(d_model=8, head_dim=4, d_state=4, chunk_size=4)
    xl = jnp.ones((2, 6, 8), jnp.float32)
    v = jax.jit(layer.init)(jax.random.key(0), xl)
    print("layer", raises(layer.apply, v, xl, jnp.ones((2, 5), bool)))
    print("layer_ok", layer.apply(v, xl, jnp.ones((2, 6), bool)).shape)
""")


def test_typechecker_installed():
  assert importlib.util.find_spec("beartype") is not None, (
      "beartype is missing, so the annotations cannot be checked: "
      "pip install -e '.[dev]'")


def test_wrong_shapes_raise_a_typecheck_error_with_the_hook():
  root = TESTS.parent
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(root), str(TESTS)])}
  r = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=root,
                     capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  got = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
  assert got == {"eager": "True", "jit": "True", "dtype": "True",
                 "layer": "True", "layer_ok": "(2, 6, 8)"}, r.stdout


def _dt_one_head_too_many():
  rng = np.random.default_rng(0)
  f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  b, t, h, p, g, n = 2, 5, 2, 3, 1, 4
  x, A = f32(b, t, h, p), -jnp.abs(f32(h))
  return x, jnp.abs(f32(b, t, h + 1)), A, f32(b, t, g, n), f32(b, t, g, n)


def test_this_run_checks_the_annotations_as_configured():
  """With the hook (the default) a wrong shape is a TypeCheckError before the
  body runs; with LONGSEQ_TYPECHECK=0 it is the kernel's own ValueError."""
  expected = jaxtyping.TypeCheckError if conftest.TYPECHECK else ValueError
  with pytest.raises(expected):
    ssd.ssd_reference(*_dt_one_head_too_many())


@pytest.mark.shape_errors
def test_shape_errors_tests_see_the_code_s_own_error():
  with pytest.raises(ValueError, match=r"dt.shape=\(2, 5, 3\)"):
    ssd.ssd_reference(*_dt_one_head_too_many())
