"""The Random Hierarchy Model (RHM) of Sclocchi, Favero, Wyart et al."""

from __future__ import annotations

from typing import Any

import numpy as np

from hiergen.models.errors import GrammarError
from hiergen.models.grammar import Grammar, _check_size


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
    powers = v ** np.arange(s - 1, -1, -1, dtype=np.int64)  # base-v digits, most significant first
    for lev in range(L):
        n_parent = n_classes if lev == 0 else v
        codes = rng.choice(v**s, size=n_parent * m, replace=False)
        tuples = (codes[:, None] // powers[None, :]) % v  # (n_parent*m, s)
        rules.append(tuples.reshape(n_parent, m, s).astype(np.int64))
    return rules


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
        n_tuples = v**s
        for name, n_parent in (("n_classes", n_classes), ("v", v)):
            if n_parent * m > n_tuples:
                raise GrammarError(
                    f"infeasible RHM: {name} * m = {n_parent} * {m} = {n_parent * m} rules needed "
                    f"but only v**s = {v}**{s} = {n_tuples} distinct tuples exist"
                )
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
        """Exact number of distinct data of one class: ``m**((s**L - 1)/(s - 1))``."""
        return self.m ** sum(self.s**k for k in range(self.L))

    @property
    def params(self) -> dict[str, Any]:
        """The constructor arguments, as a dict."""
        return {"v": self.v, "n_classes": self.n_classes, "m": self.m, "s": self.s, "L": self.L, "seed": self.seed}

    def __repr__(self) -> str:
        p = self.params
        return "RHM(" + ", ".join(f"{k}={val}" for k, val in p.items()) + ")"
