"""Computing posteriors on a grammar: exact BP (numpy/JAX/torch), other backends, theory.

Installed as ``hiergen.inference`` (the repository's top-level ``inference/`` folder).
Names are imported lazily so that optional dependencies load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hiergen._lazy import attach

if TYPE_CHECKING:
    from hiergen.inference.backends import get_ops as get_ops
    from hiergen.inference.bp import BeliefPropagation as BeliefPropagation
    from hiergen.inference.bp import MapEstimate as MapEstimate
    from hiergen.inference.bp import Posterior as Posterior
    from hiergen.inference.bp import PosteriorSample as PosteriorSample
    from hiergen.inference.bruteforce import brute_force_posterior as brute_force_posterior
    from hiergen.inference.bruteforce import enumerate_trees as enumerate_trees
    from hiergen.inference.compare import compare_backends as compare_backends
    from hiergen.inference.compare import save_comparison as save_comparison
    from hiergen.inference.meanfield_vi import MeanFieldVI as MeanFieldVI
    from hiergen.inference.numpyro_backend import GibbsSampler as GibbsSampler
    from hiergen.inference.numpyro_backend import NumPyroDiscreteSampler as NumPyroDiscreteSampler
    from hiergen.inference.numpyro_backend import NumPyroEnumeration as NumPyroEnumeration
    from hiergen.inference.pgmpy_backend import PgmpyInference as PgmpyInference
    from hiergen.inference.registry import available_backends as available_backends
    from hiergen.inference.registry import register_backend as register_backend
    from hiergen.inference.registry import run as run

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "bp": ["BeliefPropagation", "Posterior", "MapEstimate", "PosteriorSample"],
        "bruteforce": ["brute_force_posterior", "enumerate_trees"],
        "backends": ["get_ops"],
        "registry": ["run", "register_backend", "available_backends"],
        "compare": ["compare_backends", "save_comparison"],
        "pgmpy_backend": ["PgmpyInference"],
        "numpyro_backend": ["NumPyroEnumeration", "NumPyroDiscreteSampler", "GibbsSampler"],
        "meanfield_vi": ["MeanFieldVI"],
    },
)
