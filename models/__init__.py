"""Generative models of data: grammars, the RHM, noise/evidence processes, graph views.

Installed as ``hiergen.models`` (the repository's top-level ``models/`` folder). Names are
imported lazily (``import hiergen.models`` loads nothing heavy)::

    from hiergen.models import RHM, Grammar, GrammarError
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hiergen._lazy import attach

if TYPE_CHECKING:
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
    from hiergen.models.rhm import RHM as RHM

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "grammar": ["Grammar", "TreeSample"],
        "rhm": ["RHM"],
        "errors": [
            "HiergenError", "GrammarError", "GrammarSyntaxError", "EvidenceError",
            "InconsistentEvidenceError", "SizeLimitError", "BackendError", "ConfigError",
        ],
    },
)
