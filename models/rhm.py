"""The Random Hierarchy Model (RHM) of Sclocchi, Favero, Wyart et al."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from hiergen.models._validate import check_int
from hiergen.models.errors import GrammarError, HiergenError, SizeLimitError
from hiergen.models.grammar import (
    MAX_EXACT_DIGITS,
    MAX_RULE_ENTRIES,
    MAX_VOCAB_SIZE,
    Grammar,
    _check_size,
    format_count,
    format_log10_count,
)

#: Largest RHM depth accepted (one rule table per level).
MAX_DEPTH = 10_000
_INT64_CODES = 2**62  # below this many tuples, codes are drawn with numpy's choice (int64)


def random_rhm_rules(
    v: int, n_classes: int, m: int, s: int, L: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Draw the RHM's production rules, root level first.

    For every level, ``n_parent * m`` distinct ``s``-tuples are drawn uniformly without
    replacement among the ``v**s`` possible ones and dealt ``m`` per parent symbol, so no
    tuple is produced by two symbols of the same level (the grammar is unambiguous).

    Returns a list of ``L`` int64 arrays of shape ``(n_parent, m, s)``.
    """
    rules = []
    n_tuples = v**s
    for lev in range(L):
        n_parent = n_classes if lev == 0 else v
        if n_tuples < _INT64_CODES:
            powers = v ** np.arange(s - 1, -1, -1, dtype=np.int64)  # base-v digits, most significant first
            codes = rng.choice(n_tuples, size=n_parent * m, replace=False)
            tuples = (codes[:, None] // powers[None, :]) % v  # (n_parent*m, s)
        else:
            tuples = _distinct_tuples(v, s, n_parent * m, rng)
        rules.append(tuples.reshape(n_parent, m, s).astype(np.int64))
    return rules


def _distinct_tuples(v: int, s: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct ``s``-tuples of ``0..v-1``, uniform without replacement, ``(k, s)`` int64.

    For ``v**s`` too large to number the tuples in int64: tuples are drawn digit by digit,
    i.i.d. uniform, and repeats are dropped (keeping first occurrences, which is sampling
    without replacement); with ``k << v**s`` repeats are rare and a few rounds suffice.
    """
    out = np.empty((0, s), dtype=np.int64)
    while len(out) < k:
        draw = rng.integers(0, v, size=(k - len(out), s), dtype=np.int64)
        both = np.concatenate([out, draw])
        _, first = np.unique(both, axis=0, return_index=True)
        out = both[np.sort(first)]
    return out


def check_rhm_feasible(v: int, n_classes: int, m: int, s: int) -> None:
    """GrammarError unless the rules fit: ``n_classes * m <= v**s`` and ``v * m <= v**s``
    (each symbol of a level needs ``m`` tuples of its own among the ``v**s``)."""
    for name, n_parent in (("n_classes", n_classes), ("v", v)):
        # compare logs first, so that a huge v**s is never formed
        if s * math.log2(v) < math.log2(n_parent * m) + 1 and n_parent * m > v**s:
            raise GrammarError(
                f"infeasible RHM: {name} * m = {n_parent} * {m} = {n_parent * m} rules needed "
                f"but only v**s = {v}**{s} = {v**s} distinct tuples exist "
                f"(m = {m} is too large: need m <= {v**s // n_parent})"
            )


#: the RHM parameters of a sweep's ``rhm_params`` and the least value of each
RHM_PARAM_MINIMA = {"v": 2, "n_classes": 1, "m": 1, "s": 2, "L": 1}


def check_rhm_params(params: Any, keys: tuple[str, ...] = tuple(RHM_PARAM_MINIMA),
                     label: str = "RHM", error: type[HiergenError] = GrammarError
                     ) -> dict[str, int]:
    """``params`` (a mapping with exactly ``keys``, a subset of ``v, n_classes, m, s, L``) as
    ints; ``error`` naming a missing, unknown or bad parameter, a :class:`GrammarError` for an
    infeasible grammar and a :class:`SizeLimitError` for one too large (when ``L`` is among
    ``keys``). ``label`` starts the messages (``"RHM m must be >= 1"``)."""
    if not isinstance(params, Mapping):
        raise error(f"{label} parameters must be a mapping with the keys {list(keys)}, "
                           f"got {type(params).__name__}")
    missing = [k for k in keys if k not in params]
    unknown = sorted(set(params) - set(keys))
    if missing or unknown:
        raise error(f"{label} parameters need exactly the keys {list(keys)}; "
                           f"missing {missing}, unknown {unknown}")
    p = {k: check_int(params[k], f"{label} {k}", RHM_PARAM_MINIMA[k], error=error)
         for k in keys}
    check_rhm_feasible(p["v"], p["n_classes"], p["m"], p["s"])
    if "L" in p:
        check_rhm_size(p["v"], p["n_classes"], p["m"], p["s"], p["L"])
    return p


def check_rhm_size(v: int, n_classes: int, m: int, s: int, L: int) -> None:
    """SizeLimitError when an RHM's rule tables would be too large to build.

    Checked with exact integer arithmetic before anything is allocated: depth ``L`` at most
    ``MAX_DEPTH``, ``v`` and ``n_classes`` at most ``MAX_VOCAB_SIZE``, and the total number of
    rule-table entries ``(n_classes + (L-1) v) m s`` at most ``MAX_RULE_ENTRIES``.
    """
    if L > MAX_DEPTH:
        raise SizeLimitError(f"RHM depth L={format_count(L)} exceeds the limit MAX_DEPTH={MAX_DEPTH:,}")
    for name, value in (("v", v), ("n_classes", n_classes)):
        if value > MAX_VOCAB_SIZE:
            raise SizeLimitError(
                f"RHM {name}={format_count(value)} exceeds the limit of {MAX_VOCAB_SIZE:,} symbols per level"
            )
    entries = (n_classes + (L - 1) * v) * m * s
    if entries > MAX_RULE_ENTRIES:
        raise SizeLimitError(
            f"the RHM rule tables would hold (n_classes + (L-1) v) m s = {format_count(entries)} "
            f"entries (> MAX_RULE_ENTRIES = {MAX_RULE_ENTRIES:,})"
        )


class RHM(Grammar):
    """Random Hierarchy Model: a uniform, unambiguous grammar with random rules.

    Parameters
    ----------
    v : vocabulary size of every level below the root.
    n_classes : number of classes (root symbols).
    m : number of production rules per symbol (synonyms).
    s : branching factor (tuple length).
    L : depth; the data have ``d = s**L`` leaves.
    seed : seed of the rule draw; the same seed gives the same grammar.

    Feasibility requires ``n_classes * m <= v**s`` and ``v * m <= v**s``.
    """

    def __init__(self, v: int, n_classes: int, m: int, s: int, L: int, seed: int = 0,
                 _rules: list[np.ndarray] | None = None) -> None:
        v = _check_size(v, "v")
        n_classes = _check_size(n_classes, "n_classes")
        m = _check_size(m, "m")
        s = _check_size(s, "s")
        L = _check_size(L, "L")
        seed = _check_size(seed, "seed", minimum=0)
        check_rhm_size(v, n_classes, m, s, L)
        check_rhm_feasible(v, n_classes, m, s)
        self.v, self.m, self.s, self.seed = v, m, s, seed
        rules = _rules if _rules is not None else random_rhm_rules(
            v, n_classes, m, s, L, np.random.default_rng(seed)
        )
        if _rules is not None:
            if len(_rules) != L:
                raise GrammarError(f"RHM rules: expected {L} levels, got {len(_rules)}")
            for lev, r in enumerate(_rules):
                want = (n_classes if lev == 0 else v, m, s)
                if np.shape(r) != want:
                    raise GrammarError(
                        f"RHM rules of level {lev} must have shape {want} (n_parent, m, s), "
                        f"got {np.shape(r)}"
                    )
        super().__init__(
            vocab_sizes=(n_classes,) + (v,) * L,
            branching=s,
            rules=rules,
            allow_unreachable=True,
        )
        if _rules is not None and not self.is_unambiguous:
            raise GrammarError("RHM rules must be unambiguous (no tuple produced twice in a level)")

    @property
    def f(self) -> float:
        """Fraction of tuples that are compatible with some symbol: ``m / v**(s-1)``."""
        return self.m / self.v ** (self.s - 1)

    @property
    def n_data_per_class(self) -> int:
        """Exact number of distinct data of one class: ``m**((s**L - 1)/(s - 1))``.

        Raises SizeLimitError above ``MAX_EXACT_DIGITS`` decimal digits; see
        :attr:`log10_n_data_per_class` for a float that always works.
        """
        log10 = self.log10_n_data_per_class
        if log10 >= MAX_EXACT_DIGITS:
            raise SizeLimitError(
                f"n_data_per_class is {format_log10_count(log10)}, more than MAX_EXACT_DIGITS="
                f"{MAX_EXACT_DIGITS:,} digits; use log10_n_data_per_class"
            )
        return self.m ** self._n_internal_nodes

    @property
    def log10_n_data_per_class(self) -> float:
        """``log10`` of :attr:`n_data_per_class` as a float (``inf`` beyond ``1e308``)."""
        if self.m == 1:
            return 0.0
        try:
            return float(self._n_internal_nodes) * math.log10(self.m)
        except OverflowError:
            return math.inf

    @property
    def _n_internal_nodes(self) -> int:
        """``(s**L - 1)/(s - 1)``: internal nodes of the tree (each picks one of m rules)."""
        return self.L if self.s == 1 else (self.s**self.L - 1) // (self.s - 1)

    @property
    def params(self) -> dict[str, Any]:
        """The constructor arguments, as a dict."""
        return {"v": self.v, "n_classes": self.n_classes, "m": self.m, "s": self.s, "L": self.L, "seed": self.seed}

    def __repr__(self) -> str:
        p = self.params
        return "RHM(" + ", ".join(f"{k}={val}" for k, val in p.items()) + ")"
