"""Computing posteriors on a grammar: exact BP (numpy/JAX/torch), other backends, theory.

Installed as ``hiergen.inference`` (the repository's top-level ``inference/`` folder).
Names are imported lazily so that optional dependencies load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BeliefPropagation": "hiergen.inference.bp",
    "Posterior": "hiergen.inference.bp",
    "MapEstimate": "hiergen.inference.bp",
    "PosteriorSample": "hiergen.inference.bp",
    "brute_force_posterior": "hiergen.inference.bruteforce",
    "enumerate_trees": "hiergen.inference.bruteforce",
    "get_ops": "hiergen.inference.backends",
    "run": "hiergen.inference.registry",
    "register_backend": "hiergen.inference.registry",
    "available_backends": "hiergen.inference.registry",
    "compare_backends": "hiergen.inference.compare",
    "save_comparison": "hiergen.inference.compare",
    "PgmpyInference": "hiergen.inference.pgmpy_backend",
    "NumPyroEnumeration": "hiergen.inference.numpyro_backend",
    "NumPyroDiscreteSampler": "hiergen.inference.numpyro_backend",
    "GibbsSampler": "hiergen.inference.numpyro_backend",
    "MeanFieldVI": "hiergen.inference.numpyro_backend",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hiergen.inference' has no attribute {name!r}")
