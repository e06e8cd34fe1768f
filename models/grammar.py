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

from hiergen.models._validate import check_int
from hiergen.models.errors import GrammarError, SizeLimitError

#: Tolerance on ``|sum - 1|`` for the root prior and every symbol's rule probabilities;
#: within it the probabilities are renormalised, beyond it GrammarError.
PROB_TOL = 1e-6
#: Largest alphabet of a level (symbols are dense indices into tables of this size).
MAX_VOCAB_SIZE = 2**24
#: Largest padded rule table ``v_l * m_l * s_l`` of one level (int64 entries).
MAX_RULE_ENTRIES = 50_000_000
#: Default memory limit of :meth:`Grammar.sample` (bytes of the arrays it returns and uses).
MAX_SAMPLE_BYTES = 8 * 2**30
#: Largest exact count (in decimal digits) :meth:`Grammar.n_derivations` computes.
MAX_EXACT_DIGITS = 100_000
_CHUNK_ELEMENTS = 2**22  # temporaries of the rule draw in Grammar.sample
_EXACT_TOL = 1e-13  # a probability sum this close to 1 is rounding error: no renormalisation


def log10_int(n: int) -> float:
    """``log10(n)`` of a (possibly huge) positive Python int, as a float."""
    return math.log10(n)


def format_count(n: int) -> str:
    """A readable exact count: plain digits up to 15 digits, else ``2.3e+230 (exact: 231 digits)``.

    Never converts a huge int to a decimal string (which is slow, and refused by Python above
    4300 digits).
    """
    n = int(n)
    if n < 0:
        return "-" + format_count(-n)
    if n < 10**15:
        return str(n)
    x = log10_int(n)
    exp = math.floor(x)
    if n.bit_length() < 200_000:  # exact digit count, cheap at this size
        if n >= 10 ** (exp + 1):
            exp += 1
        elif n < 10**exp:
            exp -= 1
        mant = n / 10**exp  # exact int division, correctly rounded
        return f"{_mantissa(mant, exp)} (exact: {exp + 1:,} digits)"
    return f"{_mantissa(10 ** (x - exp), exp)} (about {exp + 1:,} digits)"


def format_log10_count(x: float) -> str:
    """A readable count given only its ``log10``, e.g. ``9.9e+992914257000 (about ... digits)``."""
    x = float(x)
    if not math.isfinite(x):
        return "more than 10^(1.8e+308)" if x > 0 else "0"
    if x < 15:
        return str(round(10**x))
    exp = math.floor(x)
    if x < 1e13:
        return f"{_mantissa(10 ** (x - exp), exp)} (about {exp + 1:,} digits)"
    return f"10^{x:.6g} (about {x:.4g} digits)"


def _mantissa(mant: float, exp: int) -> str:
    mant = round(mant, 1)
    if mant >= 10:
        mant, exp = mant / 10, exp + 1
    return f"{mant:.1f}e+{exp}"


def _float_vector(value: Any, what: str) -> np.ndarray:
    """``value`` as a 1-d float64 array; GrammarError unless it is a sequence of real numbers.

    Strict: strings, bools, None and nested containers are refused (no silent conversion).
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf" or value.ndim != 1:
            raise GrammarError(
                f"{what} must be a 1-d array of real numbers, got dtype {value.dtype} shape {value.shape}"
            )
        return value.astype(np.float64)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise GrammarError(f"{what} must be a list of numbers, got {_short(value)}")
    for i, x in enumerate(value):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
            raise GrammarError(f"{what}[{i}] must be a number, got {_short(x)}")
    return np.array([float(x) for x in value], dtype=np.float64)


def _short(value: Any) -> str:
    """repr of ``value`` for an error message, cut to 60 characters, with its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _renormalise(p: np.ndarray) -> np.ndarray:
    """``p / p.sum()``, except when the sum is 1 up to rounding: then ``p`` unchanged, so that
    re-reading a written grammar gives back the very same floats (idempotent)."""
    total = p.sum()
    return p.copy() if abs(total - 1.0) <= _EXACT_TOL else p / total


def _check_probabilities(p: np.ndarray, what: str) -> np.ndarray:
    """Check finite, >= 0 and summing to 1 within PROB_TOL; return ``p`` renormalised."""
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise GrammarError(f"{what} {p.tolist()[:20]} must be finite and >= 0")
    total = math.fsum(p.tolist())
    if abs(total - 1.0) > PROB_TOL:
        raise GrammarError(f"{what} sum to {total:.10g}, not 1 (tolerance {PROB_TOL:g})")
    return _renormalise(p)


def _check_size(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as a Python int, or raise GrammarError if it is no integer >= minimum."""
    return check_int(value, name, minimum, error=GrammarError)


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
        sizes, branch = _check_shape_args(vocab_sizes, branching, rules, rule_probs)
        depth = len(branch)
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

        prior = _root_prior(root_prior, sizes[0])
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
            live = (self.probs[lev] > 0) & self.rule_mask[lev]  # (v_l, m_l)
            tuples = self.children[lev][live]  # (K, s_l)
            if len(np.unique(tuples, axis=0)) != len(tuples):
                return False
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

    def log10_n_derivations(self, cls: int | None = None) -> float:
        """``log10`` of :meth:`n_derivations`, computed in floating point (never huge ints).

        Fast for any depth; ``inf`` only beyond ``10**(1.8e308)``.
        """
        logc = np.zeros(self._vocab_sizes[self.L])  # log10 count of each symbol's subtrees
        for lev in reversed(range(self.L)):
            per_rule = logc[self.children[lev]].sum(axis=-1)  # (v_l, m_l)
            live = (self.probs[lev] > 0) & self.rule_mask[lev]
            logc = _log10_sum(np.where(live, per_rule, -np.inf), axis=1)
        if cls is not None:
            self._check_class(cls)
            return float(logc[cls])
        return float(_log10_sum(np.where(self.root_prior > 0, logc, -np.inf), axis=0))

    def n_derivations(self, cls: int | None = None, max_digits: int = MAX_EXACT_DIGITS) -> int:
        """Exact number of distinct latent trees (derivations) with positive probability.

        For an unambiguous grammar this is the number of distinct data. ``cls`` restricts
        to one class; ``None`` sums over classes with positive prior. Raises SizeLimitError
        when the count has more than ``max_digits`` decimal digits (use
        :meth:`log10_n_derivations`, or :func:`format_count` to print it).
        """
        log10 = self.log10_n_derivations(cls)
        if log10 >= max_digits:
            raise SizeLimitError(
                f"the number of derivations is about {format_log10_count(log10)}, more than "
                f"max_digits={max_digits:,} digits; use log10_n_derivations()"
            )
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
            return counts[cls]
        return sum(c for c, p in zip(counts, self.root_prior) if p > 0)

    def _check_class(self, cls: Any) -> None:
        if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)) or not 0 <= cls < self.n_classes:
            raise GrammarError(f"class {cls!r} out of range 0..{self.n_classes - 1}")

    def _describe_symbols(self, level: int, idx: Sequence[int], limit: int = 20) -> str:
        """Names (or indices) of the symbols ``idx`` of ``level``, at most ``limit`` of them."""
        shown = [int(i) for i in idx[:limit]]
        if self.symbol_names is not None:
            text = ", ".join(self.symbol_names[level][i] for i in shown)
        else:
            text = ", ".join(str(i) for i in shown)
        return text + (f", ... ({len(idx)} in all)" if len(idx) > limit else "")

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

    def _with_options(self, symbol_names: Sequence[Sequence[str]] | None, allow_unreachable: bool) -> Grammar:
        """A copy sharing the (read-only) rule arrays, with other names / allow_unreachable.

        The caller guarantees that ``allow_unreachable=False`` holds (no unreachable symbol).
        """
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.symbol_names = _check_names(symbol_names, self._vocab_sizes)
        new.allow_unreachable = bool(allow_unreachable)
        return new

    # ------------------------------------------------------------------ sampling
    def sample_nbytes(self, n: int) -> int:
        """Bytes :meth:`sample` needs for ``n`` data (exact int; returned arrays included)."""
        internal = sum(self.n_nodes(lev) for lev in range(self.L))
        widest = max(self.n_nodes(lev) for lev in range(self.L + 1))
        # symbols (all levels) + rules (internal levels) + uniforms and reshape copy per level
        return 8 * int(n) * (2 * internal + self.d + 2 * widest) + 24 * _CHUNK_ELEMENTS

    def sample(
        self,
        n: int,
        seed: int | np.random.Generator | None = 0,
        classes: int | Sequence[int] | np.ndarray | None = None,
        max_bytes: int = MAX_SAMPLE_BYTES,
    ) -> TreeSample:
        """Draw ``n`` data with their latent trees.

        Parameters
        ----------
        n : number of samples.
        seed : int or ``numpy.random.Generator``; the same seed gives the same samples.
        classes : None (class drawn from ``root_prior``), an int (all samples of that class)
            or an ``(n,)`` int array (class-conditional sampling).
        max_bytes : memory limit; when :meth:`sample_nbytes` exceeds it, SizeLimitError is
            raised before anything is allocated.

        Returns
        -------
        TreeSample with ``leaves (n, d)``, ``symbols`` per level ``(n, n_l)`` and ``rules``.
        """
        n = _check_size(n, "n", minimum=0)
        need = self.sample_nbytes(n)
        if need > max_bytes:
            raise SizeLimitError(
                f"sampling n={n} data of d={format_count(self.d)} leaves (L={self.L}) would need about "
                f"{format_count(need)} bytes, more than max_bytes={format_count(int(max_bytes))}; "
                "use a smaller n or a smaller grammar"
            )
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
            u = rng.random(parent.shape + (1,))  # (n, n_l, 1)
            r = self._draw_rules(lev, parent, u)
            child = self.children[lev][parent, r]  # (n, n_l, s)
            rules.append(r)
            symbols.append(child.reshape(n, -1).astype(np.int64))
        return TreeSample(leaves=symbols[-1], symbols=symbols, rules=rules)

    def _draw_rules(self, lev: int, parent: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Rule index ``(n, n_l)`` of every node given its symbol ``parent`` and uniform ``u``.

        Works on chunks of samples so the ``(chunk, n_l, m)`` temporaries stay small.
        """
        cdf_table = np.cumsum(self.probs[lev], axis=-1)  # (v_l, m)
        n, width = parent.shape
        m = cdf_table.shape[1]
        step = max(1, _CHUNK_ELEMENTS // max(1, width * m))
        r = np.empty((n, width), dtype=np.int64)
        for i in range(0, n, step):
            cdf = cdf_table[parent[i : i + step]]  # (k, n_l, m)
            hit = (u[i : i + step] * cdf[..., -1:] > cdf).sum(-1)
            r[i : i + step] = np.minimum(hit, self.n_rules[lev][parent[i : i + step]] - 1)
        return r

    def one_hot(self, leaves: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """One-hot encode leaves ``(..., d)`` into ``(..., d, v_L)``."""
        leaves = np.asarray(leaves)
        v = self._vocab_sizes[-1]
        size = leaves.size * v * np.dtype(dtype).itemsize
        if size > MAX_SAMPLE_BYTES:
            raise SizeLimitError(
                f"one-hot encoding {leaves.shape} leaves with v_L={v} would take {format_count(size)} "
                f"bytes (> {format_count(MAX_SAMPLE_BYTES)})"
            )
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
        if cls is not None:
            self._check_class(cls)
        log10 = self.log10_n_derivations(cls)
        total = self.n_derivations(cls) if log10 < 30 else None
        if total is None or total > max_count:
            total_text = format_log10_count(log10) if total is None else str(total)
            raise SizeLimitError(
                f"enumeration would produce {total_text} derivations (> max_count={max_count})"
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


def _check_shape_args(
    vocab_sizes: Any, branching: Any, rules: Any, rule_probs: Any
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate the sizes and the number of levels of the constructor arguments.

    Returns ``(vocab_sizes, branching)`` as tuples of ints (``L+1`` and ``L`` entries).
    """
    if isinstance(vocab_sizes, (int, np.integer)) or not isinstance(
        vocab_sizes, (Sequence, np.ndarray)
    ):
        raise GrammarError(
            f"vocab_sizes must be a sequence of L+1 integers (root first), got {vocab_sizes!r}"
        )
    sizes = tuple(_check_size(v, f"vocab_sizes[{i}]") for i, v in enumerate(vocab_sizes))
    for i, v in enumerate(sizes):
        if v > MAX_VOCAB_SIZE:
            raise SizeLimitError(
                f"vocab_sizes[{i}] = {format_count(v)} exceeds the limit of {MAX_VOCAB_SIZE:,} "
                "symbols per level (hiergen.models.grammar.MAX_VOCAB_SIZE)"
            )
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
    return sizes, branch


def _log10_sum(x: np.ndarray, axis: int) -> np.ndarray:
    """``log10(sum(10**x))`` along ``axis``, stable; ``-inf`` entries are zeros."""
    top = np.max(x, axis=axis, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log10(np.sum(10.0 ** (x - safe), axis=axis, keepdims=True)) + safe
    return np.squeeze(out, axis=axis)


def _root_prior(root_prior: Any, n_classes: int) -> np.ndarray:
    """The validated ``(v_0,)`` root prior (uniform for None)."""
    if root_prior is None:
        return np.full(n_classes, 1.0 / n_classes)
    prior = _float_vector(root_prior, "root_prior")
    if prior.shape != (n_classes,):
        raise GrammarError(
            f"root_prior must have shape ({n_classes},) (one entry per class), got {prior.shape}"
        )
    if not np.all(np.isfinite(prior)) or np.any(prior < 0):
        raise GrammarError(f"root_prior has negative or non-finite entries: {prior.tolist()[:20]}")
    total = math.fsum(prior.tolist())
    if abs(total - 1.0) > PROB_TOL:
        raise GrammarError(f"root_prior must sum to 1 (tolerance {PROB_TOL:g}), sums to {total:.12g}")
    return _renormalise(prior)


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
    """Validate one level's rules and return padded ``(children, probs, n_rules)``.

    ``children`` is int64 ``(v_parent, m, s)``, ``probs`` float64 ``(v_parent, m)`` and
    ``n_rules`` int64 ``(v_parent,)``, with ``m`` the largest number of rules of a symbol.
    """
    if isinstance(rules, np.ndarray):
        children = _rules_from_array(lev, rules, v_parent, v_child, s)
        counts = np.full(v_parent, children.shape[1], dtype=np.int64)
    else:
        children, counts = _rules_from_lists(lev, rules, v_parent, v_child, s)
    m = children.shape[1]
    mask = np.arange(m)[None, :] < counts[:, None]  # (v_parent, m)
    if probs is None:
        prob = np.where(mask, 1.0 / counts[:, None], 0.0)
    elif isinstance(probs, np.ndarray) and probs.ndim == 2:
        prob = _probs_from_array(lev, probs, counts, m)
    else:
        if isinstance(probs, (str, bytes)) or not isinstance(probs, (Sequence, np.ndarray)) or len(
            probs
        ) != v_parent:
            raise GrammarError(
                f"rule_probs of level {lev} must give probabilities for each of its {v_parent} symbols"
            )
        prob = np.zeros((v_parent, m), dtype=np.float64)
        for a, p in enumerate(probs):
            what = f"level {lev}, symbol {a}: rule probabilities"
            p = np.atleast_1d(p) if isinstance(p, np.ndarray) else p
            if isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, bool):
                p = [p]
            vec = _float_vector(p, what)
            if vec.shape != (counts[a],):
                raise GrammarError(f"level {lev}, symbol {a}: {vec.size} probabilities for {counts[a]} rules")
            prob[a, : counts[a]] = _check_probabilities(vec, what)
    return children, prob, counts


def _check_table_size(lev: int, v_parent: int, m: int, s: int) -> None:
    """SizeLimitError when the padded rule table of a level would be too large."""
    size = v_parent * m * s
    if size > MAX_RULE_ENTRIES:
        raise SizeLimitError(
            f"the rule table of level {lev} would hold v_{lev} * m * s_{lev} = {v_parent} * {m} * {s}"
            f" = {format_count(size)} entries (> MAX_RULE_ENTRIES = {MAX_RULE_ENTRIES:,}; "
            "m is the largest number of rules of a symbol)"
        )


def _rules_from_array(lev: int, rules: np.ndarray, v_parent: int, v_child: int, s: int) -> np.ndarray:
    """Validate an int array ``(v_parent, m, s)`` of rules (vectorised); returns an int64 copy."""
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
    if rules.shape[1] == 0:
        raise GrammarError(f"level {lev}, symbol 0 has no production rules")
    _check_table_size(lev, v_parent, rules.shape[1], s)
    bad = (rules < 0) | (rules >= v_child)
    if np.any(bad):
        a, r, j = (int(x) for x in np.argwhere(bad)[0])
        raise GrammarError(
            f"level {lev}, symbol {a}, rule {r}: child symbol {int(rules[a, r, j])} out of range "
            f"0..{v_child - 1}"
        )
    children = rules.astype(np.int64)
    m = children.shape[1]
    keys = np.concatenate([np.repeat(np.arange(v_parent), m)[:, None], children.reshape(-1, s)], axis=1)
    uniq, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
    if len(uniq) != len(keys):
        k = int(first[np.flatnonzero(counts > 1)].min())
        a = k // m
        dup = tuple(int(c) for c in children[a, k % m])
        raise GrammarError(f"level {lev}, symbol {a}: rule {dup} is listed twice")
    return children


def _rules_from_lists(
    lev: int, rules: Any, v_parent: int, v_child: int, s: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate ragged rules (per symbol, a list of ``s``-tuples); returns padded children, counts."""
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence) or len(rules) != v_parent:
        raise GrammarError(
            f"rules of level {lev} must list the rules of each of its {v_parent} symbols"
        )
    ragged: list[list[tuple[int, ...]]] = []
    for a, lst in enumerate(rules):
        if isinstance(lst, (str, bytes)) or not isinstance(lst, (Sequence, np.ndarray)):
            raise GrammarError(f"level {lev}, symbol {a}: rules must be a list of tuples")
        row = []
        for r, t in enumerate(lst):
            row.append(_rule_tuple(lev, a, r, t, v_child, s))
        if len(row) == 0:
            raise GrammarError(f"level {lev}, symbol {a} has no production rules")
        if len(set(row)) != len(row):
            seen: set[tuple[int, ...]] = set()
            dup = next(t for t in row if t in seen or seen.add(t))  # type: ignore[func-returns-value]
            raise GrammarError(f"level {lev}, symbol {a}: rule {dup} is listed twice")
        ragged.append(row)
    counts = np.array([len(row) for row in ragged], dtype=np.int64)
    m = int(counts.max())
    _check_table_size(lev, v_parent, m, s)
    children = np.zeros((v_parent, m, s), dtype=np.int64)
    for a, row in enumerate(ragged):
        children[a, : len(row)] = np.asarray(row, dtype=np.int64).reshape(len(row), s)
    return children, counts


def _rule_tuple(lev: int, a: int, r: int, t: Any, v_child: int, s: int) -> tuple[int, ...]:
    """One rule of the ragged form, checked: an ``s``-tuple of ints in ``0..v_child-1``."""
    if type(t) is tuple and len(t) == s and all(type(c) is int for c in t):  # fast path
        if min(t) >= 0 and max(t) < v_child:
            return t
    where = f"level {lev}, symbol {a}, rule {r}"
    if isinstance(t, (str, bytes)) or not isinstance(t, (Sequence, np.ndarray)):
        raise GrammarError(f"{where}: expected a tuple of {s} symbols, got {_short(t)}")
    if len(t) != s:
        raise GrammarError(f"{where}: tuple {tuple(t)} has length {len(t)}, branching s_{lev} = {s}")
    out = []
    for c in t:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
            raise GrammarError(f"{where}: symbol {c!r} is not an integer")
        if not 0 <= c < v_child:
            raise GrammarError(f"{where}: child symbol {c} out of range 0..{v_child - 1}")
        out.append(int(c))
    return tuple(out)


def _probs_from_array(lev: int, probs: np.ndarray, counts: np.ndarray, m: int) -> np.ndarray:
    """Validate a ``(v_parent, >= m)`` probability array (vectorised); returns ``(v_parent, m)``."""
    v_parent = len(counts)
    if probs.dtype.kind not in "iuf":
        raise GrammarError(f"rule_probs of level {lev} must be real numbers, got dtype {probs.dtype}")
    if probs.shape[0] != v_parent or probs.shape[1] < m:
        raise GrammarError(f"rule_probs of level {lev} must have shape ({v_parent}, {m}), got {probs.shape}")
    mask = np.arange(m)[None, :] < counts[:, None]
    p = np.where(mask, probs[:, :m].astype(np.float64), 0.0)
    bad = ~np.isfinite(p) | (p < 0)
    if np.any(bad):
        a = int(np.argwhere(bad)[0][0])
        raise GrammarError(
            f"level {lev}, symbol {a}: rule probabilities {p[a, : counts[a]].tolist()[:20]} must be "
            "finite and >= 0"
        )
    total = p.sum(axis=1)
    off = np.abs(total - 1.0) > PROB_TOL
    if np.any(off):
        a = int(np.flatnonzero(off)[0])
        raise GrammarError(
            f"level {lev}, symbol {a}: rule probabilities sum to {total[a]:.10g}, not 1 "
            f"(tolerance {PROB_TOL:g})"
        )
    near = np.abs(total - 1.0) <= _EXACT_TOL  # already normalised up to rounding: keep as given
    return np.where(near[:, None], p, p / total[:, None])
