"""Hierarchical grammars on a fixed-shape tree.

Level 0 is the root (the class), level ``L`` the leaves (the data). Level ``l`` has an
alphabet of ``v_l`` symbols (``v_0 = n_classes``) and ``n_l = s_0 * ... * s_{l-1}`` nodes;
node ``i`` of level ``l`` has children ``i*s_l ... i*s_l + s_l - 1`` at level ``l+1``.
Each symbol of level ``l < L`` has production rules: ``s_l``-tuples of level-``l+1``
symbols with probabilities.

Internally the rules of level ``l`` are stored *padded* so that every algorithm can work
with dense arrays:

- ``children[l]``: int64 ``(v_l, m_l, s_l)`` — rule ``r`` of parent symbol ``a`` produces
  ``children[l][a, r]``; padding rules point to symbol 0.
- ``probs[l]``: float64 ``(v_l, m_l)`` — rule probabilities, 0 on padding.
- ``n_rules[l]``: int64 ``(v_l,)`` — how many real rules each symbol has.

where ``m_l`` is the largest number of rules of any symbol of level ``l``. For the RHM,
``m_l = m`` and there is no padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from hiergen.models.errors import GrammarError, SizeLimitError

_PROB_TOL = 1e-8


def _check_size(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as a Python int, or raise GrammarError if it is no integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            raise GrammarError(f"{name} must be an integer, got the float {value!r}")
        raise GrammarError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise GrammarError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True)
class TreeSample:
    """Samples of a grammar with their whole latent tree.

    Attributes
    ----------
    leaves : (n, d) int64
        The data: leaf symbols, ``d = grammar.d``.
    symbols : list of L+1 arrays, level l of shape (n, n_l) int64
        Symbols of every node; ``symbols[0][:, 0]`` is the class, ``symbols[L] is leaves``.
    rules : list of L arrays, level l of shape (n, n_l) int64
        Index (into ``grammar.children[l][parent]``) of the rule each node of level l used.
    """

    leaves: np.ndarray
    symbols: list[np.ndarray]
    rules: list[np.ndarray]

    @property
    def labels(self) -> np.ndarray:
        """(n,) int64 — the class (root symbol) of each sample."""
        return self.symbols[0][:, 0]

    def __len__(self) -> int:
        return int(self.leaves.shape[0])


class Grammar:
    """A hierarchical generative grammar on a fixed-shape tree.

    Parameters
    ----------
    vocab_sizes : sequence of L+1 ints
        Alphabet size per level, root first: ``(n_classes, v_1, ..., v_L)``.
    branching : int or sequence of L ints
        Number of children ``s_l`` of every node of level ``l`` (``l = 0..L-1``).
    rules : sequence of L entries
        Production rules of level ``l``: either an int array ``(v_l, m, s_l)`` (every symbol
        has ``m`` rules) or, for symbols with different numbers of rules, a list over the
        ``v_l`` parent symbols of lists of ``s_l``-tuples.
    rule_probs : None or sequence of L entries
        Rule probabilities with the same layout as ``rules`` (``(v_l, m)`` arrays or ragged
        lists). ``None`` (or a ``None`` entry for a level) means uniform over each symbol's rules.
    root_prior : None or (v_0,) array
        Prior of the class; uniform when ``None``.
    symbol_names : None or sequence of L+1 sequences of str
        Optional names of the symbols of each level (used by the text form and plots).
    allow_unreachable : bool
        By default a symbol that no rule of a reachable parent can produce is an error (it is
        usually a typo); set True to allow it (the RHM does, as random rules may miss symbols).
    """

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        branching: int | Sequence[int],
        rules: Sequence[Any],
        rule_probs: Sequence[Any] | None = None,
        root_prior: Sequence[float] | np.ndarray | None = None,
        symbol_names: Sequence[Sequence[str]] | None = None,
        allow_unreachable: bool = False,
    ) -> None:
        if isinstance(vocab_sizes, (int, np.integer)) or not isinstance(
            vocab_sizes, (Sequence, np.ndarray)
        ):
            raise GrammarError(
                f"vocab_sizes must be a sequence of L+1 integers (root first), got {vocab_sizes!r}"
            )
        sizes = tuple(_check_size(v, f"vocab_sizes[{i}]") for i, v in enumerate(vocab_sizes))
        if len(sizes) < 2:
            raise GrammarError(
                f"a grammar needs at least two levels (root and leaves): vocab_sizes={sizes}"
            )
        depth = len(sizes) - 1
        if isinstance(branching, (int, np.integer)) and not isinstance(branching, bool):
            branch = (_check_size(branching, "branching"),) * depth
        else:
            if not isinstance(branching, (Sequence, np.ndarray)) or len(branching) != depth:
                raise GrammarError(
                    f"branching must be an int or a sequence of L={depth} ints, got {branching!r}"
                )
            branch = tuple(_check_size(s, f"branching[{i}]") for i, s in enumerate(branching))
        if not isinstance(rules, (Sequence, np.ndarray)) or len(rules) != depth:
            raise GrammarError(
                f"rules must have one entry per level 0..L-1 (L={depth}), got "
                f"{len(rules) if isinstance(rules, (Sequence, np.ndarray)) else type(rules).__name__}"
            )
        if rule_probs is not None and (
            not isinstance(rule_probs, (Sequence, np.ndarray)) or len(rule_probs) != depth
        ):
            raise GrammarError(f"rule_probs must be None or have one entry per level (L={depth})")

        self._vocab_sizes = sizes
        self._branching = branch
        children: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        for lev in range(depth):
            lev_probs = None if rule_probs is None else rule_probs[lev]
            ch, pr, nr = _normalise_level(
                lev, rules[lev], lev_probs, sizes[lev], sizes[lev + 1], branch[lev]
            )
            children.append(ch)
            probs.append(pr)
            counts.append(nr)
        self.children: list[np.ndarray] = children
        self.probs: list[np.ndarray] = probs
        self.n_rules: list[np.ndarray] = counts
        for arr in (*children, *probs, *counts):
            arr.setflags(write=False)

        if root_prior is None:
            prior = np.full(sizes[0], 1.0 / sizes[0])
        else:
            prior = np.asarray(root_prior, dtype=np.float64)
            if prior.shape != (sizes[0],):
                raise GrammarError(
                    f"root_prior must have shape ({sizes[0]},) (one entry per class), got {prior.shape}"
                )
            if not np.all(np.isfinite(prior)) or np.any(prior < 0):
                raise GrammarError("root_prior has negative or non-finite entries")
            if abs(prior.sum() - 1.0) > _PROB_TOL * max(1, sizes[0]):
                raise GrammarError(f"root_prior must sum to 1, sums to {prior.sum():.12g}")
            prior = prior / prior.sum()
        prior.setflags(write=False)
        self.root_prior: np.ndarray = prior

        self.symbol_names = _check_names(symbol_names, sizes)
        self.allow_unreachable = bool(allow_unreachable)
        if not allow_unreachable:
            missing = self.unreachable_symbols()
            if any(len(x) for x in missing):
                parts = [
                    f"level {lev}: {self._describe_symbols(lev, idx)}"
                    for lev, idx in enumerate(missing)
                    if len(idx)
                ]
                raise GrammarError(
                    "unreachable symbols (produced by no rule of a reachable parent): "
                    + "; ".join(parts)
                    + " — remove them, or pass allow_unreachable=True"
                )

    # ------------------------------------------------------------------ basic properties
    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        """Alphabet size per level, ``(v_0, ..., v_L)``; ``v_0 = n_classes``."""
        return self._vocab_sizes

    @property
    def branching(self) -> tuple[int, ...]:
        """Children per node per level, ``(s_0, ..., s_{L-1})``."""
        return self._branching

    @property
    def L(self) -> int:  # noqa: N802 — the paper's name
        """Depth of the tree (number of production steps)."""
        return len(self._branching)

    @property
    def depth(self) -> int:
        """Alias of :attr:`L`."""
        return self.L

    @property
    def n_classes(self) -> int:
        """Number of root symbols (classes)."""
        return self._vocab_sizes[0]

    @property
    def d(self) -> int:
        """Input dimension: number of leaves, ``prod(s_l)``."""
        return self.n_nodes(self.L)

    def n_nodes(self, level: int) -> int:
        """Number of nodes at ``level`` (1 at the root)."""
        if not 0 <= level <= self.L:
            raise GrammarError(f"level must be in 0..{self.L}, got {level}")
        return int(math.prod(self._branching[:level]))

    @property
    def nodes_per_level(self) -> tuple[int, ...]:
        """``(n_0, ..., n_L)``: number of nodes at every level."""
        return tuple(self.n_nodes(lev) for lev in range(self.L + 1))

    @property
    def rules(self) -> list[np.ndarray]:
        """Production rules per level, int arrays ``(v_l, m_l, s_l)`` (padded; see ``n_rules``)."""
        return self.children

    @property
    def rule_mask(self) -> list[np.ndarray]:
        """Per level, bool ``(v_l, m_l)``: True for real rules, False for padding."""
        return [np.arange(ch.shape[1])[None, :] < nr[:, None] for ch, nr in zip(self.children, self.n_rules)]

    def rule_list(self, level: int, symbol: int) -> list[tuple[tuple[int, ...], float]]:
        """The rules of ``symbol`` at ``level`` as ``[(children_tuple, probability), ...]``."""
        if not 0 <= level < self.L:
            raise GrammarError(f"level must be in 0..{self.L - 1}, got {level}")
        if not 0 <= symbol < self._vocab_sizes[level]:
            raise GrammarError(f"symbol {symbol} out of range for level {level} (v={self._vocab_sizes[level]})")
        k = int(self.n_rules[level][symbol])
        return [
            (tuple(int(c) for c in self.children[level][symbol, r]), float(self.probs[level][symbol, r]))
            for r in range(k)
        ]

    @property
    def is_uniform(self) -> bool:
        """True when every symbol's rules are equiprobable and the root prior is uniform."""
        for pr, nr in zip(self.probs, self.n_rules):
            for a in range(pr.shape[0]):
                k = nr[a]
                if not np.allclose(pr[a, :k], 1.0 / k, rtol=0, atol=1e-12):
                    return False
        return bool(np.allclose(self.root_prior, 1.0 / self.n_classes, rtol=0, atol=1e-12))

    @cached_property
    def is_unambiguous(self) -> bool:
        """True when no tuple is produced by two different rules of the same level.

        Then every datum has exactly one derivation: the leaves determine the whole tree.
        """
        for lev in range(self.L):
            seen: set[tuple[int, ...]] = set()
            for a in range(self._vocab_sizes[lev]):
                for r in range(int(self.n_rules[lev][a])):
                    if self.probs[lev][a, r] <= 0:
                        continue
                    t = tuple(int(c) for c in self.children[lev][a, r])
                    if t in seen:
                        return False
                    seen.add(t)
        return True

    def unreachable_symbols(self) -> list[np.ndarray]:
        """Per level, the symbols that cannot occur (no positive-probability derivation)."""
        reach = [self.root_prior > 0]
        for lev in range(self.L):
            live = (self.probs[lev] > 0) & reach[lev][:, None]
            nxt = np.zeros(self._vocab_sizes[lev + 1], dtype=bool)
            nxt[np.unique(self.children[lev][live])] = True
            reach.append(nxt)
        return [np.flatnonzero(~r) for r in reach]

    def n_derivations(self, cls: int | None = None) -> int:
        """Exact number of distinct latent trees (derivations) with positive probability.

        For an unambiguous grammar this is the number of distinct data. ``cls`` restricts
        to one class; ``None`` sums over classes with positive prior.
        """
        counts = [1] * self._vocab_sizes[self.L]
        for lev in reversed(range(self.L)):
            new = []
            for a in range(self._vocab_sizes[lev]):
                tot = 0
                for r in range(int(self.n_rules[lev][a])):
                    if self.probs[lev][a, r] > 0:
                        tot += math.prod(counts[int(c)] for c in self.children[lev][a, r])
                new.append(tot)
            counts = new
        if cls is not None:
            if not 0 <= cls < self.n_classes:
                raise GrammarError(f"class {cls} out of range 0..{self.n_classes - 1}")
            return counts[cls]
        return sum(c for c, p in zip(counts, self.root_prior) if p > 0)

    def _describe_symbols(self, level: int, idx: Sequence[int]) -> str:
        if self.symbol_names is not None:
            return ", ".join(self.symbol_names[level][int(i)] for i in idx)
        return ", ".join(str(int(i)) for i in idx)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_sizes={self._vocab_sizes}, branching={self._branching}, "
            f"max_rules={[int(c.shape[1]) for c in self.children]}, unambiguous={self.is_unambiguous})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grammar):
            return NotImplemented
        if self._vocab_sizes != other._vocab_sizes or self._branching != other._branching:
            return False
        if not np.allclose(self.root_prior, other.root_prior, rtol=0, atol=1e-12):
            return False
        for lev in range(self.L):
            if not np.array_equal(self.n_rules[lev], other.n_rules[lev]):
                return False
            mask = self.rule_mask[lev]
            if self.children[lev].shape != other.children[lev].shape:
                return False
            if not np.array_equal(self.children[lev][mask], other.children[lev][mask]):
                return False
            if not np.allclose(self.probs[lev], other.probs[lev], rtol=0, atol=1e-12):
                return False
        return (self.symbol_names or None) == (other.symbol_names or None)

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        n: int,
        seed: int | np.random.Generator | None = 0,
        classes: int | Sequence[int] | np.ndarray | None = None,
    ) -> TreeSample:
        """Draw ``n`` data with their latent trees.

        Parameters
        ----------
        n : number of samples.
        seed : int or ``numpy.random.Generator``; the same seed gives the same samples.
        classes : None (class drawn from ``root_prior``), an int (all samples of that class)
            or an ``(n,)`` int array (class-conditional sampling).

        Returns
        -------
        TreeSample with ``leaves (n, d)``, ``symbols`` per level ``(n, n_l)`` and ``rules``.
        """
        n = _check_size(n, "n", minimum=0)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        if classes is None:
            root = rng.choice(self.n_classes, size=n, p=self.root_prior)
        else:
            root = np.broadcast_to(np.asarray(classes), (n,)).astype(np.int64, copy=True)
            bad = (root < 0) | (root >= self.n_classes)
            if np.any(bad):
                raise GrammarError(
                    f"classes out of range 0..{self.n_classes - 1}: {np.unique(root[bad]).tolist()}"
                )
        symbols = [root.astype(np.int64).reshape(n, 1)]
        rules = []
        for lev in range(self.L):
            parent = symbols[-1]  # (n, n_l)
            cdf = np.cumsum(self.probs[lev][parent], axis=-1)  # (n, n_l, m)
            u = rng.random(parent.shape + (1,))
            r = np.minimum((u * cdf[..., -1:] > cdf).sum(-1), self.n_rules[lev][parent] - 1)
            child = self.children[lev][parent, r]  # (n, n_l, s)
            rules.append(r.astype(np.int64))
            symbols.append(child.reshape(n, -1).astype(np.int64))
        return TreeSample(leaves=symbols[-1], symbols=symbols, rules=rules)

    def one_hot(self, leaves: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """One-hot encode leaves ``(..., d)`` into ``(..., d, v_L)``."""
        leaves = np.asarray(leaves)
        v = self._vocab_sizes[-1]
        if leaves.size and (leaves.min() < 0 or leaves.max() >= v):
            raise GrammarError(f"leaf symbols must be in 0..{v - 1}")
        return np.eye(v, dtype=dtype)[leaves]

    def enumerate_data(self, cls: int | None = None, max_count: int = 200_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All derivations of a small grammar, with their probabilities.

        Returns ``(leaves (N, d), classes (N,), prob (N,))``; ``prob`` is the joint
        probability of the derivation (class prior included). For an ambiguous grammar the
        same leaves may appear in several rows (sum them to get ``p(leaves)``).
        Raises SizeLimitError when there would be more than ``max_count`` rows.
        """
        total = self.n_derivations(cls)
        if total > max_count:
            raise SizeLimitError(
                f"enumeration would produce {total} derivations (> max_count={max_count})"
            )
        # expansions[a] at current level: list of (leaf tuple, prob)
        table: list[list[tuple[tuple[int, ...], float]]] = [
            [((c,), 1.0)] for c in range(self._vocab_sizes[self.L])
        ]
        for lev in reversed(range(self.L)):
            new = []
            for a in range(self._vocab_sizes[lev]):
                rows: list[tuple[tuple[int, ...], float]] = []
                for r in range(int(self.n_rules[lev][a])):
                    p = float(self.probs[lev][a, r])
                    if p <= 0:
                        continue
                    parts: list[tuple[tuple[int, ...], float]] = [((), p)]
                    for c in self.children[lev][a, r]:
                        parts = [(x + y, px * py) for x, px in parts for y, py in table[int(c)]]
                    rows.extend(parts)
                new.append(rows)
            table = new
        classes = range(self.n_classes) if cls is None else [cls]
        leaves, labels, probs = [], [], []
        for c in classes:
            pc = self.root_prior[c] if cls is None else 1.0
            if pc <= 0:
                continue
            for x, p in table[c]:
                leaves.append(x)
                labels.append(c)
                probs.append(p * pc)
        return (
            np.asarray(leaves, dtype=np.int64).reshape(-1, self.d),
            np.asarray(labels, dtype=np.int64),
            np.asarray(probs, dtype=np.float64),
        )

    # ------------------------------------------------------------------ views and I/O
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict describing the grammar exactly (see :func:`Grammar.from_dict`)."""
        from hiergen.models.serialize import grammar_to_dict

        return grammar_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grammar:
        """Rebuild a grammar from :meth:`to_dict` output."""
        from hiergen.models.serialize import grammar_from_dict

        return grammar_from_dict(data)

    def save(self, path: str) -> None:
        """Write the grammar as JSON (``.json``) or YAML (``.yaml``/``.yml``)."""
        from hiergen.models.serialize import save_grammar

        save_grammar(self, path)

    @classmethod
    def load(cls, path: str) -> Grammar:
        """Read a grammar written by :meth:`save` (JSON or YAML, never pickle)."""
        from hiergen.models.serialize import load_grammar

        return load_grammar(path)

    @classmethod
    def from_text(cls, text: str) -> Grammar:
        """Parse the readable rule syntax (see :mod:`hiergen.models.text`)."""
        from hiergen.models.text import grammar_from_text

        return grammar_from_text(text)

    def to_text(self) -> str:
        """Render the grammar in the readable rule syntax (inverse of :meth:`from_text`)."""
        from hiergen.models.text import grammar_to_text

        return grammar_to_text(self)

    def to_networkx(self) -> Any:
        """Bipartite factor graph (variable and factor nodes) of the tree; see graphs module."""
        from hiergen.models.graphs import grammar_to_networkx

        return grammar_to_networkx(self)

    def to_pgmpy(self, max_table_size: int = 5_000_000) -> Any:
        """A pgmpy model of the grammar (see :mod:`hiergen.models.pgmpy_view`)."""
        from hiergen.models.pgmpy_view import grammar_to_pgmpy

        return grammar_to_pgmpy(self, max_table_size=max_table_size)


def _check_names(names: Sequence[Sequence[str]] | None, sizes: tuple[int, ...]) -> list[list[str]] | None:
    if names is None:
        return None
    if len(names) != len(sizes):
        raise GrammarError(f"symbol_names must have one list per level ({len(sizes)}), got {len(names)}")
    out = []
    seen: dict[str, int] = {}
    for lev, (lst, v) in enumerate(zip(names, sizes)):
        lst = [str(x) for x in lst]
        if len(lst) != v:
            raise GrammarError(f"symbol_names[{lev}] has {len(lst)} names but level {lev} has {v} symbols")
        for name in lst:
            if name in seen:
                raise GrammarError(f"symbol name {name!r} used twice (levels {seen[name]} and {lev})")
            seen[name] = lev
        out.append(lst)
    return out


def _normalise_level(
    lev: int, rules: Any, probs: Any, v_parent: int, v_child: int, s: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate one level's rules and return padded ``(children, probs, n_rules)``."""
    ragged: list[list[tuple[int, ...]]]
    if isinstance(rules, np.ndarray):
        if rules.ndim != 3:
            raise GrammarError(
                f"rules of level {lev} must be an array (v_{lev}, m, s_{lev}) = ({v_parent}, m, {s}),"
                f" got shape {rules.shape}"
            )
        if not np.issubdtype(rules.dtype, np.integer):
            raise GrammarError(f"rules of level {lev} must be integers, got dtype {rules.dtype}")
        if rules.shape[0] != v_parent:
            raise GrammarError(
                f"rules of level {lev} have {rules.shape[0]} parent symbols, level {lev} has {v_parent}"
            )
        if rules.shape[2] != s:
            raise GrammarError(
                f"rules of level {lev} produce tuples of length {rules.shape[2]}, branching s_{lev} = {s}"
            )
        ragged = [[tuple(int(c) for c in t) for t in rules[a]] for a in range(v_parent)]
    else:
        if not isinstance(rules, Sequence) or len(rules) != v_parent:
            raise GrammarError(
                f"rules of level {lev} must list the rules of each of its {v_parent} symbols"
            )
        ragged = []
        for a, lst in enumerate(rules):
            if not isinstance(lst, (Sequence, np.ndarray)):
                raise GrammarError(f"level {lev}, symbol {a}: rules must be a list of tuples")
            row = []
            for r, t in enumerate(lst):
                if isinstance(t, (int, np.integer)) or not isinstance(t, (Sequence, np.ndarray)):
                    raise GrammarError(f"level {lev}, symbol {a}, rule {r}: expected a tuple of {s} symbols, got {t!r}")
                if len(t) != s:
                    raise GrammarError(
                        f"level {lev}, symbol {a}, rule {r}: tuple {tuple(t)} has length {len(t)},"
                        f" branching s_{lev} = {s}"
                    )
                tt = []
                for c in t:
                    if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                        raise GrammarError(f"level {lev}, symbol {a}, rule {r}: symbol {c!r} is not an integer")
                    tt.append(int(c))
                row.append(tuple(tt))
            ragged.append(row)

    for a, row in enumerate(ragged):
        if len(row) == 0:
            raise GrammarError(f"level {lev}, symbol {a} has no production rules")
        if len(set(row)) != len(row):
            dup = next(t for t in row if row.count(t) > 1)
            raise GrammarError(f"level {lev}, symbol {a}: rule {dup} is listed twice")
        for r, t in enumerate(row):
            for c in t:
                if not 0 <= c < v_child:
                    raise GrammarError(
                        f"level {lev}, symbol {a}, rule {r}: child symbol {c} out of range 0..{v_child - 1}"
                    )

    m = max(len(row) for row in ragged)
    children = np.zeros((v_parent, m, s), dtype=np.int64)
    prob = np.zeros((v_parent, m), dtype=np.float64)
    counts = np.array([len(row) for row in ragged], dtype=np.int64)
    for a, row in enumerate(ragged):
        children[a, : len(row)] = np.asarray(row, dtype=np.int64).reshape(len(row), s)

    if probs is None:
        for a, row in enumerate(ragged):
            prob[a, : len(row)] = 1.0 / len(row)
    else:
        if isinstance(probs, np.ndarray) and probs.ndim == 2:
            if probs.shape[0] != v_parent or probs.shape[1] < m:
                raise GrammarError(f"rule_probs of level {lev} must have shape ({v_parent}, {m}), got {probs.shape}")
            rows = [list(probs[a, : len(ragged[a])]) for a in range(v_parent)]
        else:
            if not isinstance(probs, (Sequence, np.ndarray)) or len(probs) != v_parent:
                raise GrammarError(f"rule_probs of level {lev} must give probabilities for each of its {v_parent} symbols")
            rows = [list(np.atleast_1d(np.asarray(p, dtype=np.float64))) for p in probs]
        for a, (row, p) in enumerate(zip(ragged, rows)):
            p = np.asarray(p, dtype=np.float64)
            if p.shape != (len(row),):
                raise GrammarError(
                    f"level {lev}, symbol {a}: {p.size} probabilities for {len(row)} rules"
                )
            if not np.all(np.isfinite(p)) or np.any(p < 0):
                raise GrammarError(f"level {lev}, symbol {a}: rule probabilities {p.tolist()} must be finite and >= 0")
            if abs(p.sum() - 1.0) > 1e-6:
                raise GrammarError(
                    f"level {lev}, symbol {a}: rule probabilities sum to {p.sum():.10g}, not 1"
                )
            prob[a, : len(row)] = p / p.sum()
    return children, prob, counts
