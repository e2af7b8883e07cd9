"""The entry point: ``python -m train --config CONFIG[:PRESET] --workdir DIR``.

``train.trainer.train_and_evaluate(config, workdir)`` is the loop (notebooks
import it too); train/ is the only package that touches files, the device mesh
and the clock.
"""
