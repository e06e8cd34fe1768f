"""Exception types of hiergen.

Every error that bad user input can trigger is a :class:`HiergenError`, a subclass of
``ValueError`` so that generic ``except ValueError`` handlers keep working. The message
always says what is wrong and where (level, symbol, line/column, batch item, path...).
"""

from __future__ import annotations


class HiergenError(ValueError):
    """Base class of every error hiergen raises for bad input or impossible requests."""


class GrammarError(HiergenError):
    """A grammar declaration is invalid (sizes, rules, probabilities, symbols)."""


class GrammarSyntaxError(GrammarError):
    """The text form of a grammar cannot be parsed; carries ``line`` and ``column``."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        where = ""
        if line is not None:
            where = f" (line {line}" + (f", column {column}" if column is not None else "") + ")"
        super().__init__(message + where)
        self.line = line
        self.column = column


class EvidenceError(HiergenError):
    """Evidence (leaf likelihoods, noise parameters) has the wrong shape or invalid values."""


class InconsistentEvidenceError(EvidenceError):
    """No datum of the grammar can explain the evidence of some batch items.

    ``items`` lists the offending batch indices.
    """

    def __init__(self, message: str, items: list[int] | None = None):
        super().__init__(message)
        self.items = list(items or [])


class SizeLimitError(HiergenError):
    """A requested object (factor table, enumeration) would be too large to materialise."""


class BackendError(HiergenError):
    """An unknown or unavailable computation backend was requested."""


class ConfigError(HiergenError):
    """Invalid experiment / CLI configuration, or a missing or corrupt file."""


__all__ = [
    "HiergenError",
    "GrammarError",
    "GrammarSyntaxError",
    "EvidenceError",
    "InconsistentEvidenceError",
    "SizeLimitError",
    "BackendError",
    "ConfigError",
]
