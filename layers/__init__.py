"""Flax Linen modules: sequence mixers and their building blocks.

Every sequence mixer maps ``(batch, length, features) -> (batch, length, features)``
and takes an optional boolean padding ``mask`` of shape ``(batch, length)`` (True
for real tokens). Mixers are registered by name so that a config can say
``model.mixer = "s4"``: "s4" (S4 and S4D), "sgconv", "mamba2", and the attention
family: "attention" (full), "linear_attention", "linformer", "lowrank" (Low-Rank
Transformer), "longformer", "bigbird", "probsparse" (Informer). A mixer's module
declares everything about it (layers/registry.py); the list below, one line per
mixer module, is the registry.
"""
from layers.registry import MIXERS, SPECS, get_mixer, get_spec, register_mixer

# Importing the modules registers their mixers.
from layers import attention  # noqa: F401,E402
from layers import bigbird  # noqa: F401,E402
from layers import linear_attention  # noqa: F401,E402
from layers import linformer  # noqa: F401,E402
from layers import longformer  # noqa: F401,E402
from layers import lowrank  # noqa: F401,E402
from layers import mamba2  # noqa: F401,E402
from layers import probsparse  # noqa: F401,E402
from layers import s4  # noqa: F401,E402
from layers import sgconv  # noqa: F401,E402

__all__ = ["MIXERS", "SPECS", "get_mixer", "get_spec", "register_mixer"]
