"""Property-based tests (hypothesis) of the grammar file formats.

- Random grammars survive text, JSON and YAML round trips exactly.
- Garbage (random bytes, random text, truncated files, random edits of valid files and of
  valid documents) either gives a valid Grammar or raises a HiergenError subclass — never
  another exception type.

Derandomized, with modest example counts, so the file runs in a few seconds.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiergen.models.errors import HiergenError
from hiergen.models.grammar import Grammar
from hiergen.models.rhm import RHM
from hiergen.models.serialize import grammar_from_dict, grammar_to_dict, load_grammar
from hiergen.models.text import grammar_from_text, grammar_to_text

SETTINGS = settings(
    derandomize=True,
    deadline=None,
    max_examples=60,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.']{0,5}", fullmatch=True)


@st.composite
def _weights(draw: Any, k: int) -> list[float] | None:
    """None (equiprobable) or k probabilities (some may be 0) summing to 1."""
    if draw(st.booleans()):
        return None
    w = draw(st.lists(st.integers(0, 9), min_size=k, max_size=k).filter(lambda x: sum(x) > 0))
    return [x / sum(w) for x in w]


@st.composite
def grammars(draw: Any) -> Grammar:
    """Small random grammars: ragged rules, random probabilities, optional names and prior."""
    depth = draw(st.integers(1, 3))
    vocab = [draw(st.integers(1, 4)) for _ in range(depth + 1)]
    branching = [draw(st.integers(1, 3)) for _ in range(depth)]
    rules, probs = [], []
    for lev in range(depth):
        v_child, s = vocab[lev + 1], branching[lev]
        n_tuples = v_child**s
        lev_rules, lev_probs = [], []
        for _ in range(vocab[lev]):
            k = draw(st.integers(1, min(n_tuples, 5)))
            codes = draw(st.lists(st.integers(0, n_tuples - 1), min_size=k, max_size=k, unique=True))
            lev_rules.append([tuple(int(c) for c in np.unravel_index(code, (v_child,) * s)) for code in codes])
            p = draw(_weights(k))
            lev_probs.append([1.0 / k] * k if p is None else p)
        rules.append(lev_rules)
        probs.append(lev_probs)
    prior = draw(_weights(vocab[0]))
    names = None
    if draw(st.booleans()):
        flat = draw(st.lists(NAMES, min_size=sum(vocab), max_size=sum(vocab), unique=True))
        names = [flat[sum(vocab[:lev]) : sum(vocab[: lev + 1])] for lev in range(depth + 1)]
    g = Grammar(vocab, branching, rules, probs, root_prior=prior, symbol_names=names, allow_unreachable=True)
    if not any(len(u) for u in g.unreachable_symbols()) and draw(st.booleans()):
        g = Grammar(vocab, branching, rules, probs, root_prior=prior, symbol_names=names)
    return g


rhms = st.builds(
    lambda v, c, m, s, L, seed: RHM(v, min(c, v), min(m, v ** s // v), s, L, seed=seed),
    st.integers(2, 5), st.integers(1, 5), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
    st.integers(0, 2**32),
)


def _same(a: Grammar, b: Grammar) -> None:
    assert a == b
    assert type(a) is type(b)
    assert a.allow_unreachable == b.allow_unreachable


def _valid(g: Any) -> None:
    """What a successfully loaded grammar must satisfy."""
    assert isinstance(g, Grammar)
    np.testing.assert_allclose(g.root_prior.sum(), 1.0, atol=1e-12)
    for lev in range(g.L):
        np.testing.assert_allclose(g.probs[lev].sum(axis=1), 1.0, atol=1e-12)
        assert g.children[lev].min() >= 0 and g.children[lev].max() < g.vocab_sizes[lev + 1]
    if g.sample_nbytes(2) < 10**8:
        assert g.sample(2, seed=0).leaves.shape == (2, g.d)


def _load_or_hiergen_error(fn: Any) -> None:
    try:
        g = fn()
    except HiergenError:
        return
    _valid(g)


# ---------------------------------------------------------------------------- round trips
@SETTINGS
@given(grammars())
def test_text_round_trip(g):
    text = grammar_to_text(g)
    back = grammar_from_text(text)
    _same(back, g)
    assert grammar_to_text(back) == text


@SETTINGS
@given(st.one_of(grammars(), rhms))
def test_json_and_yaml_round_trip(g):
    d = grammar_to_dict(g)
    _same(grammar_from_dict(json.loads(json.dumps(d))), g)
    _same(grammar_from_dict(yaml.safe_load(yaml.safe_dump(d, sort_keys=False))), g)


@SETTINGS
@given(rhms)
def test_rhm_round_trips_keep_params(g):
    back = grammar_from_dict(json.loads(json.dumps(grammar_to_dict(g))))
    assert isinstance(back, RHM) and back.params == g.params
    assert grammar_from_text(grammar_to_text(g)) == g  # as a plain grammar


# ---------------------------------------------------------------------------- garbage
@SETTINGS
@given(st.binary(max_size=400), st.sampled_from([".json", ".yaml", ".txt"]))
def test_random_bytes_files(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"g{suffix}"
        p.write_bytes(data)
        _load_or_hiergen_error(lambda: load_grammar(p))


TOKENS = st.sampled_from(
    ["level", "0", "1", "2", ":", "->", "|", "[", "]", "[0.5]", "[1/3]", "prior", "a", "b", "x", "y",
     "allow_unreachable", "anonymous", "true", " ", "\n", "#", "1e999", "-1", "é", "\t", "\r"]
)


@SETTINGS
@given(st.lists(TOKENS, max_size=60).map(" ".join))
def test_random_token_soup(text):
    _load_or_hiergen_error(lambda: grammar_from_text(text))


@st.composite
def _edited(draw: Any, text: str) -> str:
    """``text`` with a few random edits: deletions, insertions, truncation, line swaps."""
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "truncate", "swap", "replace"]))
        n = len(text)
        i = draw(st.integers(0, n))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 10)) :]
        elif op == "insert":
            text = text[:i] + draw(st.one_of(TOKENS, st.text(max_size=5))) + text[i:]
        elif op == "truncate":
            text = text[:i]
        elif op == "replace" and n:
            text = text[:i] + draw(st.characters()) + text[i + 1 :]
        else:
            lines = text.split("\n")
            j, k = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[j], lines[k] = lines[k], lines[j]
            text = "\n".join(lines)
    return text


@SETTINGS
@given(st.data(), grammars())
def test_edited_text_files(data, g):
    text = data.draw(_edited(grammar_to_text(g)))
    _load_or_hiergen_error(lambda: grammar_from_text(text))


@SETTINGS
@given(st.data(), st.one_of(grammars(), rhms), st.sampled_from([".json", ".yaml"]))
def test_edited_json_yaml_files(data, g, suffix):
    d = grammar_to_dict(g)
    text = json.dumps(d) if suffix == ".json" else yaml.safe_dump(d)
    text = data.draw(_edited(text))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"g{suffix}"
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
        _load_or_hiergen_error(lambda: load_grammar(p))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 5) | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=8,
)


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    """Every path (keys / indices) into a JSON-like tree."""
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, path + (i,))
    return out


@SETTINGS
@given(st.data(), st.one_of(grammars(), rhms))
def test_mutated_documents(data, g):
    d = copy.deepcopy(grammar_to_dict(g))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(d) if p]
        path = data.draw(st.sampled_from(paths))
        parent = d
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON_VALUES)
    _load_or_hiergen_error(lambda: grammar_from_dict(d, "doc"))
