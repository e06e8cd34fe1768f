"""Readable text form of a grammar: named symbols, one block per level.

Syntax (one statement per line; ``#`` starts a comment; blank lines are ignored)::

    # header options (optional, before the first level)
    allow_unreachable: false       # true: symbols no rule can produce are allowed
    anonymous: false               # true: names are placeholders, the grammar has no names

    level 0: face house            # the symbols of level 0 (the classes), in index order
    prior: face 0.6 house 0.4      # optional root prior (every root symbol, once); uniform if absent
    face  -> eye eye [0.7] | eye nose [0.3]
    house -> wall door             # no [p]: the alternatives are equiprobable
    level 1: eye nose wall door
    eye  -> dark light | light dark
         | dark dark               # a line starting with '|' continues the previous rule
    nose -> light light
    wall -> dark dark
    door -> light dark
    level 2: dark light            # the last level declared is the leaf level (no rules)

Levels are declared in order ``level 0``, ``level 1``, ... Each block lists its symbols
(names are unique across the whole grammar) followed by the rules of those symbols; every
symbol of a non-leaf level needs exactly one rule line (possibly continued). The rules of
level ``l`` produce tuples of level-``l+1`` symbols, all of the same length ``s_l`` (the
branching factor, inferred from the tuples). Probabilities in brackets are either given for
every alternative of a symbol or for none; they may be decimals or fractions (``[1/3]``) and
must sum to 1. Names match ``[A-Za-z_][A-Za-z0-9_.']*``.

Every mistake raises :class:`~hiergen.models.errors.GrammarSyntaxError` with the 1-based line
and column of the offending token.
"""

from __future__ import annotations

import contextlib
import gc
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from hiergen.models.errors import GrammarError, GrammarSyntaxError, SizeLimitError
from hiergen.models.grammar import PROB_TOL, Grammar

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.']*")
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
    | (?P<arrow>->)
    | (?P<bar>\|)
    | (?P<colon>:)
    | (?P<prob>\[[^\]]*\]?)
    | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:/\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_.']*)
    | (?P<error>.)
    """,
    re.VERBOSE,
)
_WRAP = 8  # alternatives per line in grammar_to_text


@dataclass(slots=True)
class _Tok:
    kind: str
    text: str
    line: int
    col: int


@dataclass(slots=True)
class _Alt:
    names: list[_Tok]
    prob: float | None
    prob_tok: _Tok | None


@dataclass
class _Rule:
    lhs: _Tok
    alts: list[_Alt] = field(default_factory=list)


@dataclass
class _Level:
    index: int
    header: _Tok
    names: list[_Tok]
    rules: list[_Rule] = field(default_factory=list)
    prior: list[tuple[_Tok, float, _Tok]] | None = None
    prior_tok: _Tok | None = None


def _tokenize(line: str, lineno: int) -> list[_Tok]:
    """The tokens of one line (comments and whitespace dropped); one regex pass, linear time."""
    code = line.split("#", 1)[0]
    toks: list[_Tok] = []
    for m in _TOKEN_RE.finditer(code):
        kind = m.lastgroup
        if kind == "ws":
            continue
        if kind == "error":
            raise GrammarSyntaxError(f"unexpected character {m.group()!r}", lineno, m.start() + 1)
        toks.append(_Tok(kind or "", m.group(), lineno, m.start() + 1))
    return toks


def _parse_number(tok: _Tok, text: str, what: str) -> float:
    text = text.strip()
    try:
        value = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise GrammarSyntaxError(f"{what} {text!r} is not a number", tok.line, tok.col) from None
    if not np.isfinite(value) or value < 0:
        raise GrammarSyntaxError(f"{what} {text!r} must be finite and >= 0", tok.line, tok.col)
    return value


def _parse_bool(tok: _Tok) -> bool:
    low = tok.text.lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0"):
        return False
    raise GrammarSyntaxError(f"expected true or false, got {tok.text!r}", tok.line, tok.col)


def _parse_alts(toks: list[_Tok], start: int, rule: _Rule) -> None:
    """Parse ``alt ('|' alt)*`` from ``toks[start:]`` into ``rule.alts``."""
    i = start
    while True:
        names: list[_Tok] = []
        while i < len(toks) and toks[i].kind == "name":
            names.append(toks[i])
            i += 1
        prob, prob_tok = None, None
        if i < len(toks) and toks[i].kind == "prob":
            prob_tok = toks[i]
            if not prob_tok.text.endswith("]"):
                raise GrammarSyntaxError("unclosed '[' (expected ']')", prob_tok.line, prob_tok.col)
            prob = _parse_number(prob_tok, prob_tok.text[1:-1], "probability")
            i += 1
        if not names:
            where = toks[i] if i < len(toks) else (prob_tok or toks[-1])
            raise GrammarSyntaxError(
                f"empty alternative in the rules of {rule.lhs.text!r}", where.line, where.col
            )
        rule.alts.append(_Alt(names, prob, prob_tok))
        if i == len(toks):
            return
        if toks[i].kind != "bar":
            raise GrammarSyntaxError(
                f"expected '|' or the end of the line, got {toks[i].text!r}", toks[i].line, toks[i].col
            )
        i += 1
        if i == len(toks):
            raise GrammarSyntaxError("a line cannot end with '|'", toks[i - 1].line, toks[i - 1].col)


@dataclass
class _LineParser:
    """State of the line-by-line pass over the text (header options, levels, last rule)."""

    options: dict[str, tuple[bool, _Tok]] = field(default_factory=dict)
    levels: list[_Level] = field(default_factory=list)
    last_rule: _Rule | None = None

    def line(self, toks: list[_Tok], lineno: int) -> None:
        """Dispatch one non-empty tokenized line to the statement it starts."""
        t0 = toks[0]
        if t0.kind == "name" and t0.text == "level" and [t.kind for t in toks[1:3]] == ["number", "colon"]:
            self.level_header(toks, lineno)
        elif t0.kind == "name" and len(toks) >= 2 and toks[1].kind == "colon":
            self.keyed(toks, lineno)
        elif t0.kind == "name" and len(toks) >= 2 and toks[1].kind == "arrow":
            self.rule(toks, lineno)
        elif t0.kind == "bar":
            self.continuation(toks, lineno)
        else:
            raise GrammarSyntaxError(
                f"cannot parse this line starting with {t0.text!r} (expected 'level N: names', "
                "'prior: ...', 'name -> a b | c d' or '| a b')",
                lineno,
                t0.col,
            )

    def level_header(self, toks: list[_Tok], lineno: int) -> None:
        """``level N: names...``"""
        num = toks[1]
        if not re.fullmatch(r"\d+", num.text):
            raise GrammarSyntaxError(f"level number must be an integer, got {num.text!r}", lineno, num.col)
        expected = len(self.levels)
        if len(num.text) > 18 or int(num.text) != expected:
            raise GrammarSyntaxError(
                f"expected 'level {expected}' (levels are declared in order from 0), "
                f"got 'level {num.text}'",
                lineno,
                num.col,
            )
        names = toks[3:]
        for t in names:
            if t.kind != "name":
                raise GrammarSyntaxError(f"expected a symbol name, got {t.text!r}", lineno, t.col)
        if not names:
            raise GrammarSyntaxError(f"level {expected} lists no symbols", lineno, toks[2].col)
        self.levels.append(_Level(expected, toks[0], names))
        self.last_rule = None

    def keyed(self, toks: list[_Tok], lineno: int) -> None:
        """``prior: ...`` or a header option ``key: value``."""
        t0 = toks[0]
        key = t0.text
        if key == "prior":
            self.prior(toks, lineno)
            self.last_rule = None
            return
        if key in ("allow_unreachable", "anonymous"):
            if self.levels:
                raise GrammarSyntaxError(f"option '{key}:' must come before 'level 0:'", lineno, t0.col)
            if len(toks) != 3 or toks[2].kind not in ("name", "number"):
                raise GrammarSyntaxError(f"expected '{key}: true' or '{key}: false'", lineno, t0.col)
            self.options[key] = (_parse_bool(toks[2]), t0)
            return
        raise GrammarSyntaxError(
            f"unknown statement {key!r}: (expected 'level N:', 'prior:', 'allow_unreachable:', "
            "'anonymous:' or a rule 'name -> ...')",
            lineno,
            t0.col,
        )

    def prior(self, toks: list[_Tok], lineno: int) -> None:
        """``prior: name p name p ...`` inside the level-0 block."""
        t0 = toks[0]
        if len(self.levels) != 1:
            raise GrammarSyntaxError(
                "'prior:' belongs to the level 0 block (after 'level 0:' and before 'level 1:')",
                lineno,
                t0.col,
            )
        root = self.levels[0]
        if root.prior_tok is not None:
            raise GrammarSyntaxError(
                f"the prior is given twice (first on line {root.prior_tok.line})", lineno, t0.col
            )
        rest = toks[2:]
        if not rest or len(rest) % 2:
            raise GrammarSyntaxError(
                "expected 'prior: name p name p ...' (a probability after each root symbol)",
                lineno,
                (rest[-1] if rest else toks[1]).col,
            )
        pairs = []
        for k in range(0, len(rest), 2):
            nt, pt = rest[k], rest[k + 1]
            if nt.kind != "name":
                raise GrammarSyntaxError(f"expected a root symbol name, got {nt.text!r}", lineno, nt.col)
            if pt.kind != "number":
                raise GrammarSyntaxError(
                    f"expected the prior probability of {nt.text!r}, got {pt.text!r}", lineno, pt.col
                )
            pairs.append((nt, _parse_number(pt, pt.text, "prior probability"), pt))
        root.prior = pairs
        root.prior_tok = t0

    def rule(self, toks: list[_Tok], lineno: int) -> None:
        """``name -> alt | alt ...``"""
        t0 = toks[0]
        if not self.levels:
            raise GrammarSyntaxError("a rule before any 'level N:' declaration", lineno, t0.col)
        if len(toks) == 2:
            raise GrammarSyntaxError(f"no alternatives after '->' for {t0.text!r}", lineno, toks[1].col)
        rule = _Rule(t0)
        _parse_alts(toks, 2, rule)
        self.levels[-1].rules.append(rule)
        self.last_rule = rule

    def continuation(self, toks: list[_Tok], lineno: int) -> None:
        """``| alt | alt ...`` continuing the previous rule line."""
        if self.last_rule is None:
            raise GrammarSyntaxError("a line starting with '|' must follow a rule line", lineno, toks[0].col)
        if len(toks) == 1:
            raise GrammarSyntaxError("empty continuation line", lineno, toks[0].col)
        _parse_alts(toks, 1, self.last_rule)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while parsing.

    The parser builds millions of small acyclic objects for a big file; the collector's
    repeated full passes over them would double the parse time and buy nothing (reference
    counting frees everything). Restored on exit, exceptions included.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _parse_lines(text: str) -> tuple[dict[str, tuple[bool, _Tok]], list[_Level]]:
    """Tokenize and parse every line; returns the header options and the level blocks."""
    parser = _LineParser()
    for lineno, line in enumerate(text.splitlines(), start=1):
        toks = _tokenize(line, lineno)
        if toks:
            parser.line(toks, lineno)
    return parser.options, parser.levels


_Where = dict[str, tuple[int, int, _Tok]]  # name -> (level, index, declaring token)


def _symbol_table(levels: list[_Level]) -> _Where:
    """Map every declared name to its level, index and declaring token; duplicates are errors."""
    where: _Where = {}
    for lev in levels:
        for idx, t in enumerate(lev.names):
            if t.text in where:
                prev = where[t.text][2]
                raise GrammarSyntaxError(
                    f"duplicate symbol name {t.text!r} (already declared at level {where[t.text][0]}"
                    f" on line {prev.line}, column {prev.col})",
                    t.line,
                    t.col,
                )
            where[t.text] = (lev.index, idx, t)
    return where


def _lookup(where: _Where, t: _Tok) -> tuple[int, int]:
    """(level, index) of the symbol named by token ``t``."""
    hit = where.get(t.text)
    if hit is None:
        raise GrammarSyntaxError(f"unknown symbol {t.text!r}", t.line, t.col)
    return hit[0], hit[1]


@dataclass
class _Arity:
    """The tuple length of one level, set by its first alternative."""

    s: int | None = None
    tok: _Tok | None = None


def _rule_tuples(rule: _Rule, li: int, where: _Where, arity: _Arity) -> list[tuple[int, ...]]:
    """The child-index tuples of one rule line of level ``li`` (checked: arity, level, duplicates)."""
    name = rule.lhs
    tuples: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    for alt in rule.alts:
        first = alt.names[0]
        if arity.s is None:
            arity.s, arity.tok = len(alt.names), first
        elif len(alt.names) != arity.s:
            set_line = arity.tok.line if arity.tok is not None else first.line
            raise GrammarSyntaxError(
                f"tuple of length {len(alt.names)} in the rules of {name.text!r}, but the rules of "
                f"level {li} produce {arity.s} symbols (set on line {set_line})",
                first.line,
                first.col,
            )
        idxs = []
        for t in alt.names:
            c_lev, c_idx = _lookup(where, t)
            if c_lev != li + 1:
                raise GrammarSyntaxError(
                    f"{t.text!r} is a level-{c_lev} symbol; rules of level {li} must produce "
                    f"level-{li + 1} symbols",
                    t.line,
                    t.col,
                )
            idxs.append(c_idx)
        tup = tuple(idxs)
        if tup in seen:
            raise GrammarSyntaxError(
                f"alternative {' '.join(a.text for a in alt.names)!r} of {name.text!r} is listed twice",
                first.line,
                first.col,
            )
        seen.add(tup)
        tuples.append(tup)
    return tuples


def _rule_probs(rule: _Rule) -> list[float] | None:
    """The bracketed probabilities of a rule line (None when none are given); checked."""
    name = rule.lhs
    given = [a.prob is not None for a in rule.alts]
    if not any(given):
        return None
    if not all(given):
        bad = next(a for a in rule.alts if a.prob is None)
        raise GrammarSyntaxError(
            f"give a probability [p] for every alternative of {name.text!r} or for none",
            bad.names[0].line,
            bad.names[0].col,
        )
    p = [float(a.prob) for a in rule.alts if a.prob is not None]
    total = math.fsum(p)
    if abs(total - 1.0) > PROB_TOL:
        raise GrammarSyntaxError(
            f"the probabilities of the rules of {name.text!r} sum to {total:.10g}, not 1",
            name.line,
            name.col,
        )
    return p


def _level_rules(
    lev: _Level, where: _Where
) -> tuple[int, list[list[tuple[int, ...]]], list[list[float]] | None]:
    """Branching, per-symbol rule tuples and probabilities (None: all equiprobable) of a level."""
    li = lev.index
    lev_rules: list[list[tuple[int, ...]] | None] = [None] * len(lev.names)
    lev_probs: list[list[float] | None] = [None] * len(lev.names)
    rule_line: list[int] = [0] * len(lev.names)
    arity = _Arity()
    for rule in lev.rules:
        name = rule.lhs
        sym_lev, sym_idx = _lookup(where, name)
        if sym_lev != li:
            raise GrammarSyntaxError(
                f"symbol {name.text!r} is declared at level {sym_lev}, but its rule is in the "
                f"level {li} block",
                name.line,
                name.col,
            )
        if lev_rules[sym_idx] is not None:
            raise GrammarSyntaxError(
                f"rules of {name.text!r} are given twice (first on line {rule_line[sym_idx]});"
                " put all alternatives on one rule (continue lines with '|')",
                name.line,
                name.col,
            )
        lev_rules[sym_idx] = _rule_tuples(rule, li, where, arity)
        lev_probs[sym_idx] = _rule_probs(rule)
        rule_line[sym_idx] = name.line
    rules: list[list[tuple[int, ...]]] = []
    for idx, r in enumerate(lev_rules):
        if r is None:
            t = lev.names[idx]
            raise GrammarSyntaxError(
                f"symbol {t.text!r} of level {li} has no rules (add '{t.text} -> ...' to the "
                f"level {li} block)",
                t.line,
                t.col,
            )
        rules.append(r)
    if arity.s is None:  # unreachable: every symbol has a rule with at least one alternative
        raise GrammarSyntaxError(f"level {li} has no rules", lev.header.line, lev.header.col)
    if all(p is None for p in lev_probs):
        return arity.s, rules, None
    probs = [p if p is not None else [1.0 / len(r)] * len(r) for p, r in zip(lev_probs, rules)]
    return arity.s, rules, probs


def _root_prior(root: _Level, where: _Where) -> np.ndarray | None:
    """The ``prior:`` line of the level-0 block as a ``(v_0,)`` array (None when absent)."""
    ptok = root.prior_tok
    if root.prior is None or ptok is None:
        return None
    values: list[float | None] = [None] * len(root.names)
    for nt, p, _pt in root.prior:
        sym_lev, sym_idx = _lookup(where, nt)
        if sym_lev != 0:
            raise GrammarSyntaxError(
                f"the prior is over level-0 symbols, {nt.text!r} is a level-{sym_lev} symbol",
                nt.line,
                nt.col,
            )
        if values[sym_idx] is not None:
            raise GrammarSyntaxError(f"{nt.text!r} appears twice in the prior", nt.line, nt.col)
        values[sym_idx] = p
    missing = [root.names[i].text for i, v in enumerate(values) if v is None]
    if missing:
        raise GrammarSyntaxError(
            f"the prior must give every root symbol a probability; missing: {', '.join(missing)}",
            ptok.line,
            ptok.col,
        )
    total = math.fsum(v for v in values if v is not None)
    if abs(total - 1.0) > PROB_TOL:
        raise GrammarSyntaxError(f"the prior sums to {total:.10g}, not 1", ptok.line, ptok.col)
    return np.asarray(values, dtype=np.float64)


def _check_leaf_level(levels: list[_Level]) -> None:
    """The last level declared holds the leaves: it may not have rules."""
    last = levels[-1]
    if last.rules:
        t = last.rules[0].lhs
        raise GrammarSyntaxError(
            f"level {last.index} is the last level declared (the leaves), so its symbols cannot have "
            f"rules: declare 'level {last.index + 1}: ...' for the symbols they produce",
            t.line,
            t.col,
        )


def _check_reachable(grammar: Grammar, levels: list[_Level]) -> None:
    """Raise (at the first unreachable symbol's declaration) if some symbol cannot occur."""
    names = grammar.symbol_names or []
    for li, idx in enumerate(grammar.unreachable_symbols()):
        if len(idx):
            t = levels[li].names[int(idx[0])]
            all_names = ", ".join(names[li][int(i)] for i in idx[:20])
            if len(idx) > 20:
                all_names += f", ... ({len(idx)} in all)"
            raise GrammarSyntaxError(
                f"unreachable symbol(s) at level {li}: {all_names} (no rule of a reachable parent "
                "produces them); remove them or add 'allow_unreachable: true' before 'level 0:'",
                t.line,
                t.col,
            )


def grammar_from_text(text: str, allow_unreachable: bool | None = None) -> Grammar:
    """Parse the readable grammar syntax (see the module docstring) into a :class:`Grammar`.

    ``allow_unreachable`` overrides the ``allow_unreachable:`` option of the text.
    Raises GrammarSyntaxError (with line and column) on any mistake. Runs in time linear
    in the size of the text.
    """
    if not isinstance(text, str):
        raise GrammarError(f"grammar text must be a str, got {type(text).__name__}")
    with _gc_paused():
        return _grammar_from_text(text, allow_unreachable)


def _grammar_from_text(text: str, allow_unreachable: bool | None) -> Grammar:
    """:func:`grammar_from_text` after the type check."""
    options, levels = _parse_lines(text)
    if len(levels) < 2:
        raise GrammarSyntaxError(
            "a grammar needs at least two levels ('level 0:' with the classes and a leaf level)",
            levels[0].header.line if levels else None,
            1 if levels else None,
        )
    if allow_unreachable is None:
        allow_unreachable = options.get("allow_unreachable", (False, None))[0]
    anonymous = options.get("anonymous", (False, None))[0]

    where = _symbol_table(levels)
    branching: list[int] = []
    rules: list[list[list[tuple[int, ...]]]] = []
    probs: list[list[list[float]] | None] = []
    for lev in levels[:-1]:
        s, lev_rules, lev_probs = _level_rules(lev, where)
        branching.append(s)
        rules.append(lev_rules)
        probs.append(lev_probs)
    _check_leaf_level(levels)
    prior = _root_prior(levels[0], where)

    names = [[t.text for t in lev.names] for lev in levels]
    vocab = [len(n) for n in names]
    try:
        grammar = Grammar(vocab, branching, rules, probs, root_prior=prior, symbol_names=names,
                          allow_unreachable=True)
    except SizeLimitError:
        raise
    except GrammarError as exc:  # should not happen after the checks above; keep the position
        raise GrammarSyntaxError(str(exc), levels[0].header.line, 1) from exc
    if not allow_unreachable:
        _check_reachable(grammar, levels)
    return grammar._with_options(
        symbol_names=None if anonymous else names, allow_unreachable=bool(allow_unreachable)
    )


def default_symbol_names(grammar: Grammar) -> list[list[str]]:
    """Generated names ``l{level}_s{index}`` for every symbol of an unnamed grammar."""
    return [[f"l{lev}_s{i}" for i in range(v)] for lev, v in enumerate(grammar.vocab_sizes)]


def _fmt_prob(p: float) -> str:
    return repr(float(p))


def _is_uniform(p: np.ndarray) -> bool:
    return bool(np.allclose(p, 1.0 / p.size, rtol=0, atol=1e-15))


def grammar_to_text(grammar: Grammar) -> str:
    """Render ``grammar`` in the readable syntax; ``grammar_from_text`` gives it back exactly.

    Unnamed grammars get generated names ``l{level}_s{index}`` and the option
    ``anonymous: true``, so that parsing the text gives back an unnamed grammar.
    Probabilities are written only for symbols whose rules are not equiprobable, with
    ``repr`` precision (lossless).
    """
    anonymous = grammar.symbol_names is None
    names = default_symbol_names(grammar) if anonymous else grammar.symbol_names
    assert names is not None
    for lev, lst in enumerate(names):
        for i, name in enumerate(lst):
            if not NAME_RE.fullmatch(name):
                raise GrammarError(
                    f"symbol {i} of level {lev} is named {name!r}, which the text form cannot write "
                    "(names must match [A-Za-z_][A-Za-z0-9_.']*); use JSON/YAML instead"
                )
    out = [
        f"# hiergen grammar: L={grammar.L}, vocab_sizes={list(grammar.vocab_sizes)}, "
        f"branching={list(grammar.branching)}",
    ]
    if anonymous:
        out.append("anonymous: true")
    if grammar.allow_unreachable:
        out.append("allow_unreachable: true")
    for lev in range(grammar.L + 1):
        out.append(f"level {lev}: " + " ".join(names[lev]))
        if lev == 0 and not _is_uniform(grammar.root_prior):
            out.append(
                "prior: "
                + " ".join(f"{names[0][a]} {_fmt_prob(p)}" for a, p in enumerate(grammar.root_prior))
            )
        if lev == grammar.L:
            break
        width = max(len(n) for n in names[lev])
        for a in range(grammar.vocab_sizes[lev]):
            k = int(grammar.n_rules[lev][a])
            p = grammar.probs[lev][a, :k]
            with_p = not _is_uniform(p)
            alts = []
            for r in range(k):
                alt = " ".join(names[lev + 1][int(c)] for c in grammar.children[lev][a, r])
                if with_p:
                    alt += f" [{_fmt_prob(p[r])}]"
                alts.append(alt)
            head = f"{names[lev][a]:<{width}} -> "
            chunks = [alts[i : i + _WRAP] for i in range(0, len(alts), _WRAP)]
            out.append(head + " | ".join(chunks[0]))
            for chunk in chunks[1:]:
                out.append(" " * (len(head) - 2) + "| " + " | ".join(chunk))
    return "\n".join(out) + "\n"


__all__ = ["grammar_from_text", "grammar_to_text", "default_symbol_names", "NAME_RE"]
