"""Experiment configs (ml_collections) and their validation.

Each experiment file has ``get_config(preset)``; presets size the same
experiment for a pod (``full``), a laptop CPU (``cpu``) or CI (``test``):
``python -m train --config configs/lra_listops.py:cpu --workdir runs/x``.
"""
from configs.validate import validate_config

__all__ = ["validate_config"]
