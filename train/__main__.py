"""``python -m train --config configs/lra_listops.py:cpu --workdir runs/x``.

Any config field can be overridden: ``--config.model.d_model=128``; a field
that the config does not have is an error that names it.
"""
import logging as std_logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with ':preset'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics, TensorBoard.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv):
  """absl flag parsing, with a clear message for unknown config fields."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # A locked ConfigDict rejects a field it lacks: AttributeError("'x'").
    found = re.search(r"'([A-Za-z_][A-Za-z0-9_]*)", str(e))
    key = found.group(1) if found else str(e)
    hint = re.search(r'Did you mean "([^"]+)"', str(e))
    paths = [a.split("=")[0][len("--config."):] for a in argv[1:]
             if a.startswith("--config.")]
    culprits = [p for p in paths if key in p.split(".")]
    field = culprits[0] if culprits else key
    sys.stderr.write(
        f"FATAL Flags parsing error: --config.{field}: the config has no "
        f"field {field!r}"
        + (f' (did you mean "{hint.group(1)}"?)' if hint else "") + ".\n")
    sys.exit(1)
  except flags.Error as e:
    # A value of the wrong type (--config.model.d_model=abc) or a missing flag:
    # absl's own message names the flag; a traceback adds nothing.
    sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
    sys.exit(1)


class _QuietLibraryInfo(std_logging.Filter):
  """Drops orbax's and grain's per-checkpoint INFO lines (kept: warnings)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = any(f"{os.sep}{lib}{os.sep}" in record.pathname
                for lib in ("orbax", "grain"))
    return record.levelno >= std_logging.WARNING or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraryInfo())
  # Before jax starts its thread pools (train/host.py; LONGSEQ_MALLOC=0: off).
  from train import host  # pylint: disable=g-import-not-at-top
  if host.configure_malloc():
    logging.info("glibc malloc: large blocks from the heap, kept after free, "
                 "one arena (%s=0 turns this off)", host.ENV)
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  # Imported after flags are parsed so that --config errors come first.
  from train import trainer  # pylint: disable=g-import-not-at-top
  logging.info("config:\n%s", _CONFIG.value)
  from train import interrupts  # pylint: disable=g-import-not-at-top
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except interrupts.Interrupted as e:
    sys.stderr.write(f"{e}\n")
    sys.exit(128 + e.signum)  # As a process the signal ended.
  except trainer.RUN_ERRORS as e:
    # The message names the cause; the traceback would bury it.
    logging.error("%s: %s", type(e).__name__, e)
    sys.stderr.write(f"FATAL {type(e).__name__}: {e}\n")
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
