"""The readable text form: parsing, lossless round trip, errors with line and column."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_grammar
from hiergen.models.errors import GrammarError, GrammarSyntaxError
from hiergen.models.grammar import Grammar
from hiergen.models.rhm import RHM
from hiergen.models.text import grammar_from_text, grammar_to_text

FACES = """\
# a tiny grammar of pictures
level 0: face house
prior: face 0.6 house 0.4
face  -> eye eye [0.7] | eye nose [0.3]
house -> wall door
level 1: eye nose wall door
eye  -> dark light | light dark
     | dark dark          # continuation of eye's alternatives
nose -> light light
wall -> dark dark [1/4] | light light [3/4]
door -> light dark
level 2: dark light
"""


def test_parse_example():
    g = Grammar.from_text(FACES)
    assert g.vocab_sizes == (2, 4, 2)
    assert g.branching == (2, 2)
    assert g.symbol_names == [["face", "house"], ["eye", "nose", "wall", "door"], ["dark", "light"]]
    np.testing.assert_allclose(g.root_prior, [0.6, 0.4])
    assert g.rule_list(0, 0) == [((0, 0), 0.7), ((0, 1), 0.3)]
    assert g.rule_list(0, 1) == [((2, 3), 1.0)]
    eye = g.rule_list(1, 0)
    assert [t for t, _ in eye] == [(0, 1), (1, 0), (0, 0)]
    np.testing.assert_allclose([p for _, p in eye], 1 / 3)
    assert g.rule_list(1, 2) == [((0, 0), 0.25), ((1, 1), 0.75)]
    assert not g.is_unambiguous  # 'dark dark' is produced by eye and wall


def test_branching_per_level_and_uniform_prior():
    g = grammar_from_text("level 0: a\na -> x y z\nlevel 1: x y z\nx -> p q\ny -> q p\nz -> p p\nlevel 2: p q\n")
    assert g.branching == (3, 2)
    assert g.d == 6
    np.testing.assert_allclose(g.root_prior, [1.0])


def test_round_trip_named():
    g = Grammar.from_text(FACES)
    text = g.to_text()
    assert Grammar.from_text(text) == g
    assert grammar_to_text(Grammar.from_text(text)) == text


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_random_unnamed(seed):
    g = random_grammar((3, 4, 3, 2), (2, 3, 2), max_rules=12, seed=seed)
    text = grammar_to_text(g)
    assert "anonymous: true" in text and "l1_s3" in text
    back = grammar_from_text(text)
    assert back == g
    assert back.symbol_names is None
    assert back.allow_unreachable


def test_round_trip_rhm_and_wrapping():
    g = RHM(v=10, n_classes=4, m=9, s=2, L=2, seed=2)
    text = g.to_text()
    assert any(line.lstrip().startswith("| ") for line in text.splitlines())  # 9 > 8 per line
    back = Grammar.from_text(text)
    assert back == g
    assert back.is_unambiguous


def test_to_text_rejects_unwritable_names():
    g = Grammar((1, 2), 2, [[[(0, 1)]]], symbol_names=[["root"], ["a b", "c"]])
    with pytest.raises(GrammarError, match=r"symbol 0 of level 1 is named 'a b'"):
        g.to_text()


def test_options():
    text = "allow_unreachable: true\nlevel 0: r\nr -> a a\nlevel 1: a b\n"
    g = grammar_from_text(text)
    assert g.allow_unreachable
    with pytest.raises(GrammarSyntaxError, match="unreachable"):
        grammar_from_text(text, allow_unreachable=False)


def _err(text: str) -> GrammarSyntaxError:
    with pytest.raises(GrammarSyntaxError) as info:
        grammar_from_text(text)
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize(
    "text,match,line,col",
    [
        # unknown names
        ("level 0: a\na -> x yy\nlevel 1: x y\n", r"unknown symbol 'yy'", 2, 8),
        ("level 0: a\nb -> x y\nlevel 1: x y\n", r"unknown symbol 'b'", 2, 1),
        ("level 0: a\nprior: b 1\na -> x y\nlevel 1: x y\n", r"unknown symbol 'b'", 2, 8),
        # symbol on the wrong level
        ("level 0: a\na -> x a\nlevel 1: x\n", r"'a' is a level-0 symbol; rules of level 0 must produce level-1", 2, 8),
        ("level 0: a\nx -> x x\na -> x x\nlevel 1: x\n", r"'x' is declared at level 1, but its rule is in the level 0 block", 2, 1),
        ("level 0: a\na -> x x\nlevel 1: x\nx -> p p\nlevel 2: p\np -> x x\n", r"level 2 is the last level declared", 6, 1),
        ("level 0: a\na -> x x\nlevel 1: x\nprior: a 1\n", r"'prior:' belongs to the level 0 block", 4, 1),
        # wrong tuple length
        ("level 0: a b\na -> x y\nb -> y x x\nlevel 1: x y\n", r"tuple of length 3 in the rules of 'b', but the rules of level 0 produce 2 symbols \(set on line 2\)", 3, 6),
        ("level 0: a\na -> x y | x\nlevel 1: x y\n", r"tuple of length 1", 2, 12),
        # bad probabilities
        ("level 0: a\na -> x y [0.5] | y x [0.4]\nlevel 1: x y\n", r"probabilities of the rules of 'a' sum to 0.9, not 1", 2, 1),
        ("level 0: a\na -> x y [1.5] | y x [-0.5]\nlevel 1: x y\n", r"probability '-0.5' must be finite and >= 0", 2, 22),
        ("level 0: a\na -> x y [abc] | y x [1]\nlevel 1: x y\n", r"probability 'abc' is not a number", 2, 10),
        ("level 0: a\na -> x y [0.5] | y x\nlevel 1: x y\n", r"for every alternative of 'a' or for none", 2, 18),
        ("level 0: a\na -> x y [0.5\nlevel 1: x y\n", r"unclosed '\['", 2, 10),
        ("level 0: a b\nprior: a 0.5 b 0.6\na -> x\nb -> x\nlevel 1: x\n", r"the prior sums to 1.1", 2, 1),
        ("level 0: a b\nprior: a 1\na -> x\nb -> x\nlevel 1: x\n", r"missing: b", 2, 1),
        ("level 0: a b\nprior: a 0.5 b\na -> x\nb -> x\nlevel 1: x\n", r"a probability after each root symbol", 2, 14),
        # duplicates
        ("level 0: a\na -> x y\nlevel 1: x a\n", r"duplicate symbol name 'a' \(already declared at level 0 on line 1, column 10\)", 3, 12),
        ("level 0: a\na -> x y\na -> y x\nlevel 1: x y\n", r"rules of 'a' are given twice \(first on line 2\)", 3, 1),
        ("level 0: a\na -> x y | y x | x y\nlevel 1: x y\n", r"alternative 'x y' of 'a' is listed twice", 2, 18),
        # missing rules / structure
        ("level 0: a b\na -> x y\nlevel 1: x y\n", r"symbol 'b' of level 0 has no rules", 1, 12),
        ("level 0: a\na -> x y\nlevel 2: x y\n", r"expected 'level 1'", 3, 7),
        ("level 0: a\n", r"at least two levels", 1, 1),
        ("a -> x y\n", r"a rule before any 'level N:'", 1, 1),
        ("level 0: a\na -> x y |\nlevel 1: x y\n", r"cannot end with '\|'", 2, 10),
        ("level 0: a\na -> x $ y\nlevel 1: x y\n", r"unexpected character '\$'", 2, 8),
        ("level 0: a\na -> x y\n| y x\nlevel 1: x y\n", None, None, None),  # valid continuation
        ("level 0: a\n| y x\nlevel 1: x y\n", r"must follow a rule line", 2, 1),
        ("level 0: a\nfoo: 1\n", r"unknown statement 'foo'", 2, 1),
        ("level 0: a\nanonymous: true\na -> x\nlevel 1: x\n", r"must come before 'level 0:'", 2, 1),
        ("level 0: a b\na -> x\nb -> x\nlevel 1: x y\n", r"unreachable symbol\(s\) at level 1: y", 4, 12),
    ],
)
def test_syntax_errors(text, match, line, col):
    if match is None:
        assert grammar_from_text(text).rule_list(0, 0) == [((0, 1), 0.5), ((1, 0), 0.5)]
        return
    err = _err(text)
    assert err.line == line and err.column == col, str(err)
    assert f"(line {line}, column {col})" in str(err)
    import re

    assert re.search(match, str(err)), str(err)


def test_not_a_string():
    with pytest.raises(GrammarError, match="must be a str"):
        grammar_from_text(b"level 0: a")  # type: ignore[arg-type]


def test_many_alternatives_parse_linearly():
    # 40,000 alternatives of one symbol (took 43 s when duplicate detection was quadratic)
    v = 200
    names = [f"c{i}" for i in range(v)]
    alts = [f"{names[i]} {names[j]}" for i in range(v) for j in range(v)]
    lines = ["level 0: r", "r -> " + alts[0]]
    lines += ["   | " + " | ".join(alts[k : k + 8]) for k in range(1, len(alts), 8)]
    lines.append("level 1: " + " ".join(names))
    g = grammar_from_text("\n".join(lines) + "\n")
    assert int(g.n_rules[0][0]) == v * v
    expected = np.array([(i, j) for i in range(v) for j in range(v)])
    np.testing.assert_array_equal(g.children[0][0], expected)
    np.testing.assert_allclose(g.probs[0][0], 1 / v**2)
    with pytest.raises(GrammarSyntaxError, match=r"alternative 'c0 c1' of 'r' is listed twice \(line 5003, column 6\)"):
        grammar_from_text("\n".join(lines[:-1] + ["   | c0 c1", lines[-1]]) + "\n")


@pytest.mark.parametrize(
    "text,match,line,col",
    [
        ("level " + "9" * 5000 + ": a\n", r"expected 'level 0'", 1, 7),
        ("level 0: a\na -> x [1/0]\nlevel 1: x\n", r"probability '1/0' is not a number", 2, 8),
        ("level 0: a\na -> x [" + "1" * 5000 + "/3]\nlevel 1: x\n", r"is not a number", 2, 8),
        ("level 0: a\na -> x [1e999]\nlevel 1: x\n", r"must be finite and >= 0", 2, 8),
        ("level 0: a b\nprior: a 0.5 b 0.5000011\na -> x\nb -> x\nlevel 1: x\n", r"the prior sums to 1.000001", 2, 1),
        ("level 0: a\na -> x \u00e9\nlevel 1: x\n", r"unexpected character '\u00e9'", 2, 8),
    ],
)
def test_more_syntax_errors(text, match, line, col):
    err = _err(text)
    assert (err.line, err.column) == (line, col), str(err)
    import re

    assert re.search(match, str(err)), str(err)


def test_prior_within_tolerance_is_renormalised():
    g = grammar_from_text("level 0: a b\nprior: a 0.5 b 0.5000009\na -> x\nb -> x\nlevel 1: x\n")
    assert g.root_prior.sum() == pytest.approx(1.0, abs=1e-15)
