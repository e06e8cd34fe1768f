"""hiergen — hierarchical generative grammars and exact inference on them.

Public names are imported lazily, so ``import hiergen`` stays light::

    from hiergen import RHM, BeliefPropagation

The sub-packages ``hiergen.models``, ``hiergen.inference`` and ``hiergen.imagenet`` live in
the repository's top-level folders ``models/``, ``inference/`` and ``imagenet/``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Grammar": "hiergen.models.grammar",
    "TreeSample": "hiergen.models.grammar",
    "RHM": "hiergen.models.rhm",
    "HiergenError": "hiergen.models.errors",
    "GrammarError": "hiergen.models.errors",
    "GrammarSyntaxError": "hiergen.models.errors",
    "EvidenceError": "hiergen.models.errors",
    "InconsistentEvidenceError": "hiergen.models.errors",
    "SizeLimitError": "hiergen.models.errors",
    "BackendError": "hiergen.models.errors",
    "ConfigError": "hiergen.models.errors",
    "BeliefPropagation": "hiergen.inference.bp",
    "Posterior": "hiergen.inference.bp",
    "GaussianDiffusion": "hiergen.models.noise",
    "UniformCorruption": "hiergen.models.noise",
    "Masking": "hiergen.models.noise",
}

_SUBMODULES = {"models", "inference", "imagenet", "experiments", "cli", "bench"}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"hiergen.{name}")
    raise AttributeError(f"module 'hiergen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)
