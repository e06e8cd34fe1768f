"""Generative models of data: grammars, the RHM, noise/evidence processes, graph views.

Installed as ``hiergen.models`` (the repository's top-level ``models/`` folder).
"""

from hiergen.models.errors import (
    BackendError,
    ConfigError,
    EvidenceError,
    GrammarError,
    GrammarSyntaxError,
    HiergenError,
    InconsistentEvidenceError,
    SizeLimitError,
)
from hiergen.models.grammar import Grammar, TreeSample
from hiergen.models.rhm import RHM

__all__ = [
    "Grammar",
    "TreeSample",
    "RHM",
    "HiergenError",
    "GrammarError",
    "GrammarSyntaxError",
    "EvidenceError",
    "InconsistentEvidenceError",
    "SizeLimitError",
    "BackendError",
    "ConfigError",
]
