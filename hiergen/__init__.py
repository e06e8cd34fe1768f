"""hiergen — hierarchical generative grammars and exact inference on them.

Public names are imported lazily, so ``import hiergen`` stays light::

    from hiergen import RHM, BeliefPropagation

The sub-packages ``hiergen.models``, ``hiergen.inference`` and ``hiergen.imagenet`` live in
the repository's top-level folders ``models/``, ``inference/`` and ``imagenet/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hiergen._lazy import attach

__version__ = "0.1.0"

if TYPE_CHECKING:
    from hiergen.inference.bp import BeliefPropagation as BeliefPropagation
    from hiergen.inference.bp import Posterior as Posterior
    from hiergen.models.errors import BackendError as BackendError
    from hiergen.models.errors import ConfigError as ConfigError
    from hiergen.models.errors import EvidenceError as EvidenceError
    from hiergen.models.errors import GrammarError as GrammarError
    from hiergen.models.errors import GrammarSyntaxError as GrammarSyntaxError
    from hiergen.models.errors import HiergenError as HiergenError
    from hiergen.models.errors import InconsistentEvidenceError as InconsistentEvidenceError
    from hiergen.models.errors import SizeLimitError as SizeLimitError
    from hiergen.models.grammar import Grammar as Grammar
    from hiergen.models.grammar import TreeSample as TreeSample
    from hiergen.models.noise import GaussianDiffusion as GaussianDiffusion
    from hiergen.models.noise import Masking as Masking
    from hiergen.models.noise import UniformCorruption as UniformCorruption
    from hiergen.models.rhm import RHM as RHM

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "hiergen.models.grammar": ["Grammar", "TreeSample"],
        "hiergen.models.rhm": ["RHM"],
        "hiergen.models.errors": [
            "HiergenError", "GrammarError", "GrammarSyntaxError", "EvidenceError",
            "InconsistentEvidenceError", "SizeLimitError", "BackendError", "ConfigError",
        ],
        "hiergen.inference.bp": ["BeliefPropagation", "Posterior"],
        "hiergen.models.noise": ["GaussianDiffusion", "UniformCorruption", "Masking"],
    },
    submodules=["models", "inference", "imagenet", "experiments", "cli", "bench"],
    extra=["__version__"],
)
