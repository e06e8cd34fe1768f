"""Size limits checked before allocating, big counts in log space, probability validation."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from conftest import random_grammar
from hiergen.models import grammar as grammar_mod
from hiergen.models.errors import GrammarError, SizeLimitError
from hiergen.models.grammar import (
    MAX_SAMPLE_BYTES,
    PROB_TOL,
    Grammar,
    format_count,
    format_log10_count,
)
from hiergen.models.rhm import RHM, _distinct_tuples

RULES = [[[(0, 1), (1, 0)], [(1, 1), (0, 0)]]]  # (v_0, v_1) = (2, 2), s = 2


def _reference_sample(g: Grammar, n: int, seed: int) -> list[np.ndarray]:
    """The sampler as first written (whole-batch (n, n_l, m) tables): the oracle for chunking."""
    rng = np.random.default_rng(seed)
    symbols = [rng.choice(g.n_classes, size=n, p=g.root_prior).astype(np.int64).reshape(n, 1)]
    for lev in range(g.L):
        parent = symbols[-1]
        cdf = np.cumsum(g.probs[lev][parent], axis=-1)
        u = rng.random(parent.shape + (1,))
        r = np.minimum((u * cdf[..., -1:] > cdf).sum(-1), g.n_rules[lev][parent] - 1)
        symbols.append(g.children[lev][parent, r].reshape(n, -1).astype(np.int64))
    return symbols


# ---------------------------------------------------------------------------- sampling limits
def test_deep_rhm_sample_refused_before_allocating():
    g = RHM(v=32, n_classes=32, m=8, s=2, L=40, seed=0)  # building the rules is cheap
    assert g.d == 2**40
    with pytest.raises(SizeLimitError, match=r"sampling n=5 data of d=1099511627776 leaves \(L=40\) "
                       r"would need about .* bytes, more than max_bytes=8589934592"):
        g.sample(5)
    # the estimate is exact integer arithmetic: 8 bytes * n * (2 * internal nodes + d + 2 * widest)
    assert g.sample_nbytes(5) >= 8 * 5 * 2**40 * 3


def test_sample_max_bytes_is_honoured_exactly():
    g = random_grammar((3, 4, 3), (2, 3), max_rules=4, seed=0)
    need = g.sample_nbytes(50)
    with pytest.raises(SizeLimitError, match=rf"more than max_bytes={need - 1}"):
        g.sample(50, max_bytes=need - 1)
    assert g.sample(50, max_bytes=need).leaves.shape == (50, 6)


@pytest.mark.parametrize("seed", range(3))
def test_chunked_sampling_equals_reference(monkeypatch, seed):
    g = random_grammar((3, 5, 4, 3), (2, 3, 2), max_rules=7, seed=seed)
    ref = _reference_sample(g, 300, seed)
    for chunk in (1, 37, 2**22):
        monkeypatch.setattr(grammar_mod, "_CHUNK_ELEMENTS", chunk)
        got = g.sample(300, seed=seed)
        for a, b in zip(got.symbols, ref):
            np.testing.assert_array_equal(a, b)


def test_one_hot_size_limit():
    g = RHM(v=32, n_classes=2, m=2, s=2, L=2)
    fake = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=np.int64), shape=(MAX_SAMPLE_BYTES, 4), strides=(0, 0))
    with pytest.raises(SizeLimitError, match="one-hot encoding"):
        g.one_hot(fake)


# ---------------------------------------------------------------------------- rule-table limits
def test_rhm_huge_vocab_and_tables_refused():
    with pytest.raises(SizeLimitError, match=r"RHM v=1.0e\+18 \(exact: 19 digits\) exceeds the limit"):
        RHM(v=10**18, n_classes=2, m=2, s=2, L=2)
    with pytest.raises(SizeLimitError, match=r"rule tables would hold .* = 1000000000 entries"):
        RHM(v=1000, n_classes=1000, m=1000, s=10, L=100)
    with pytest.raises(SizeLimitError, match=r"depth L=20000 exceeds the limit MAX_DEPTH=10,000"):
        RHM(v=2, n_classes=1, m=1, s=1, L=20_000)


def test_rhm_with_more_tuples_than_int64_works():
    # v**s = 1e30 tuples: drawn without enumerating them (this raised OverflowError before)
    g = RHM(v=1000, n_classes=10, m=10, s=10, L=3, seed=4)
    assert g.rules[0].shape == (10, 10, 10) and g.rules[1].shape == (1000, 10, 10)
    for r in g.rules:
        assert r.min() >= 0 and r.max() < 1000
        flat = r.reshape(-1, 10)
        assert len({tuple(t) for t in flat.tolist()}) == len(flat)  # distinct within a level
    assert g.is_unambiguous
    assert g == RHM(v=1000, n_classes=10, m=10, s=10, L=3, seed=4)
    assert g != RHM(v=1000, n_classes=10, m=10, s=10, L=3, seed=5)
    assert g.f == 10 / 1000**9
    assert g.sample(3, seed=0).leaves.shape == (3, 1000)


def test_distinct_tuples_is_uniform_without_replacement():
    # 3 distinct tuples out of 3**2 = 9: each tuple is included with probability 3/9, and
    # the ordered draws are exchangeable (every position uniform over the 9 tuples)
    rng = np.random.default_rng(0)
    reps = 6000
    count, first = Counter(), Counter()
    for _ in range(reps):
        t = _distinct_tuples(3, 2, 3, rng)
        assert len({tuple(x) for x in t.tolist()}) == 3
        count.update(tuple(x) for x in t.tolist())
        first[tuple(t[0].tolist())] += 1
    assert len(count) == 9
    assert chisquare([count[k] for k in sorted(count)]).pvalue > 1e-3
    assert chisquare([first[k] for k in sorted(first)]).pvalue > 1e-3
    assert _distinct_tuples(2, 3, 8, rng).shape == (8, 3)  # all tuples: terminates


def test_ragged_padding_limit():
    # one symbol with 3 rules, the others with 1: the padded table is v * 3 * s
    many = [[(0, 0), (0, 1), (1, 0)]] + [[(0, 0)]] * 3
    old = grammar_mod.MAX_RULE_ENTRIES
    try:
        grammar_mod.MAX_RULE_ENTRIES = 4 * 3 * 2 - 1
        with pytest.raises(SizeLimitError, match=r"rule table of level 0 would hold v_0 \* m \* s_0 = 4 \* 3 \* 2"):
            Grammar((4, 2), 2, [many], allow_unreachable=True)
    finally:
        grammar_mod.MAX_RULE_ENTRIES = old
    assert Grammar((4, 2), 2, [many]).children[0].shape == (4, 3, 2)


def test_vocab_size_limit():
    with pytest.raises(SizeLimitError, match=r"vocab_sizes\[1\] = 1.0e\+15 \(exact: 16 digits\) exceeds"):
        Grammar((1, 10**15), 1, [[[(0,)]]], allow_unreachable=True)


# ---------------------------------------------------------------------------- big counts
def test_log10_n_derivations_matches_exact_counts():
    for seed in range(5):
        g = random_grammar((3, 4, 3, 2), (2, 3, 2), max_rules=6, seed=seed)
        exact = g.n_derivations()
        assert g.log10_n_derivations() == pytest.approx(math.log10(exact), rel=1e-12)
        for c in range(3):
            assert g.log10_n_derivations(c) == pytest.approx(math.log10(g.n_derivations(c)), rel=1e-12)


def test_n_data_of_deep_rhm_in_log_space():
    g = RHM(v=32, n_classes=32, m=8, s=2, L=40, seed=0)
    internal = 2**40 - 1
    assert g.log10_n_data_per_class == pytest.approx(internal * math.log10(8), rel=1e-12)
    assert g.log10_n_derivations() == pytest.approx(internal * math.log10(8) + math.log10(32), rel=1e-12)
    with pytest.raises(SizeLimitError, match=r"n_data_per_class is 6.5e\+992957941624 .* use log10_n_data_per_class"):
        g.n_data_per_class  # noqa: B018
    with pytest.raises(SizeLimitError, match=r"more than max_digits=100,000 digits; use log10_n_derivations"):
        g.n_derivations()
    with pytest.raises(SizeLimitError, match="enumeration would produce"):
        g.enumerate_data()
    # a moderately deep one stays exact: 8**(2**13 - 1), 7398 digits
    g13 = RHM(v=32, n_classes=32, m=8, s=2, L=13, seed=0)
    assert g13.n_data_per_class == 8 ** (2**13 - 1)
    assert g13.log10_n_data_per_class == pytest.approx(math.log10(g13.n_data_per_class), rel=1e-12)


@pytest.mark.parametrize(
    "base,exp,add", [(7, 1, 0), (10, 15, -1), (10, 15, 0), (10, 40, 123), (8, 2**13 - 1, 0), (2, 20000, 1), (10, 5000, -1)]
)
def test_format_count_against_decimal_string(base, exp, add):
    import sys

    n = base**exp + add
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # the oracle: the full decimal string
    try:
        decimal = str(n)
    finally:
        sys.set_int_max_str_digits(old)
    text = format_count(n)
    if len(decimal) <= 15:
        assert text == decimal
        return
    assert text.endswith(f"(exact: {len(decimal):,} digits)"), text
    mant, e = text.split(" ")[0].split("e+")
    lead = float(decimal[0] + "." + decimal[1:4])  # 4 leading digits
    if round(lead, 1) >= 10:  # 9.96 rounds up into the next power of ten
        assert (mant, int(e)) == ("1.0", len(decimal))
    else:
        assert (float(mant), int(e)) == (round(lead, 1), len(decimal) - 1)


def test_format_log10_count():
    assert format_log10_count(3.0) == "1000"
    assert format_log10_count(230.36) == "2.3e+230 (about 231 digits)"
    assert format_log10_count(9.92957941624e11).startswith("1.0e+992957941624 (about 992,957,941,625 digits)"[:4])
    assert format_log10_count(2e15) == "10^2e+15 (about 2e+15 digits)"
    assert format_log10_count(math.inf) == "more than 10^(1.8e+308)"


# ---------------------------------------------------------------------------- probabilities
def test_root_prior_tolerance_and_renormalisation():
    g = Grammar((2, 2), 2, RULES, root_prior=[0.3, 0.7 + PROB_TOL / 2])
    assert g.root_prior.sum() == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(GrammarError, match=r"root_prior must sum to 1 \(tolerance 1e-06\), sums to 1.000002"):
        Grammar((2, 2), 2, RULES, root_prior=[0.3, 0.7 + 2 * PROB_TOL])
    with pytest.raises(GrammarError, match=r"root_prior must sum to 1 .* sums to 2"):
        Grammar((2, 2), 2, RULES, root_prior=[1, 1])


@pytest.mark.parametrize(
    "prior,match",
    [
        ([float("nan"), 1.0], r"root_prior has negative or non-finite entries: \[nan, 1.0\]"),
        ([1.5, -0.5], r"root_prior has negative or non-finite entries"),
        ("ab", r"root_prior must be a list of numbers, got 'ab' \(str\)"),
        ({"a": 1.0}, r"root_prior must be a list of numbers, got \{'a': 1.0\} \(dict\)"),
        (["0.5", "0.5"], r"root_prior\[0\] must be a number, got '0.5' \(str\)"),
        ([True, False], r"root_prior\[0\] must be a number, got True \(bool\)"),
        ([[0.5], [0.5]], r"root_prior\[0\] must be a number"),
        (np.array(["0.5", "0.5"]), r"root_prior must be a 1-d array of real numbers, got dtype <U3"),
        ([0.5, 0.25, 0.25], r"root_prior must have shape \(2,\)"),
    ],
)
def test_bad_root_prior(prior, match):
    with pytest.raises(GrammarError, match=match):
        Grammar((2, 2), 2, RULES, root_prior=prior)


@pytest.mark.parametrize(
    "probs,match",
    [
        ([[[0.5, 0.5], ["0.5", 0.5]]], r"level 0, symbol 1: rule probabilities\[0\] must be a number, got '0.5'"),
        ([[[0.5, 0.5], [True, False]]], r"rule probabilities\[0\] must be a number, got True"),
        ([[[0.5, 0.5], [0.5, float("nan")]]], r"level 0, symbol 1: rule probabilities \[0.5, nan\] must be finite"),
        ([[[0.5, 0.5], [0.5, 0.5 + 2e-6]]], r"level 0, symbol 1: rule probabilities sum to 1.000002, not 1"),
        ([np.array([[0.5, 0.5], [0.5, 0.6]])], r"level 0, symbol 1: rule probabilities sum to 1.1, not 1"),
        ([np.array([[0.5, 0.5], [-0.5, 1.5]])], r"level 0, symbol 1: rule probabilities \[-0.5, 1.5\] must be finite"),
        ([np.array([["a", "b"], ["c", "d"]])], r"rule_probs of level 0 must be real numbers"),
        (["ab"], r"rule_probs of level 0 must give probabilities for each of its 2 symbols"),
    ],
)
def test_bad_rule_probs(probs, match):
    with pytest.raises(GrammarError, match=match):
        Grammar((2, 2), 2, RULES, probs)


def test_rule_probs_within_tolerance_are_renormalised():
    g = Grammar((2, 2), 2, RULES, [np.array([[0.5, 0.5 + 5e-7], [0.25, 0.75]])])
    np.testing.assert_allclose(g.probs[0].sum(axis=1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(g.probs[0][1], [0.25, 0.75], rtol=0, atol=1e-15)


def test_array_rules_validated_like_lists():
    with pytest.raises(GrammarError, match=r"level 0, symbol 1: rule \(1, 1\) is listed twice"):
        Grammar((2, 2), 2, [np.array([[[0, 1], [1, 0]], [[1, 1], [1, 1]]])])
    with pytest.raises(GrammarError, match=r"level 0, symbol 0 has no production rules"):
        Grammar((2, 2), 2, [np.zeros((2, 0, 2), dtype=np.int64)])
    with pytest.raises(GrammarError, match=r"level 0, symbol 0, rule 0: expected a tuple of 2 symbols, got 'ab'"):
        Grammar((1, 2), 2, [[["ab"]]])
    with pytest.raises(GrammarError, match=r"level 0, symbol 0, rule 0: symbol True is not an integer"):
        Grammar((1, 2), 2, [[[(True, 0)]]])
