"""Grammar and RHM: structure, derived quantities, sampling statistics, bad input."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from conftest import random_grammar
from hiergen.models.errors import GrammarError, HiergenError
from hiergen.models.grammar import Grammar
from hiergen.models.rhm import RHM

P_MIN = 1e-3  # chi-square tests: reject only below this p-value (fixed seeds)


# ---------------------------------------------------------------------------- RHM structure
@pytest.mark.parametrize(
    "v,n_classes,m,s,L", [(8, 4, 2, 2, 3), (5, 5, 5, 2, 2), (3, 2, 4, 3, 2), (32, 32, 8, 2, 4)]
)
def test_rhm_rule_shapes_and_unambiguity(v, n_classes, m, s, L):
    g = RHM(v=v, n_classes=n_classes, m=m, s=s, L=L, seed=3)
    assert g.vocab_sizes == (n_classes,) + (v,) * L
    assert g.branching == (s,) * L
    for lev, rules in enumerate(g.rules):
        n_parent = n_classes if lev == 0 else v
        assert rules.shape == (n_parent, m, s)
        assert rules.dtype == np.int64
        assert rules.min() >= 0 and rules.max() < v
        tuples = {tuple(t) for t in rules.reshape(-1, s).tolist()}
        assert len(tuples) == n_parent * m  # no tuple produced twice within a level
        np.testing.assert_array_equal(g.n_rules[lev], m)
        np.testing.assert_allclose(g.probs[lev], 1.0 / m)
    assert g.is_unambiguous
    assert g.is_uniform


def test_rhm_derived_quantities():
    g = RHM(v=32, n_classes=32, m=8, s=2, L=6, seed=0)
    assert g.f == 8 / 32
    assert g.d == 2**6
    n = g.n_data_per_class
    assert isinstance(n, int) and n == 8 ** (2**6 - 1)  # exact, far beyond float precision
    assert g.n_derivations(0) == n  # independent count by dynamic programming
    g3 = RHM(v=9, n_classes=3, m=3, s=3, L=2, seed=0)
    assert g3.f == pytest.approx(3 / 9**2)
    assert g3.d == 9
    assert g3.n_data_per_class == 3 ** ((3**2 - 1) // (3 - 1))


def test_rhm_seed_reproducibility():
    a = RHM(8, 4, 2, 2, 3, seed=5)
    b = RHM(8, 4, 2, 2, 3, seed=5)
    c = RHM(8, 4, 2, 2, 3, seed=6)
    assert a == b
    assert a != c
    sa, sb = a.sample(50, seed=1), b.sample(50, seed=1)
    np.testing.assert_array_equal(sa.leaves, sb.leaves)
    assert not np.array_equal(sa.leaves, a.sample(50, seed=2).leaves)
    assert a.params == {"v": 8, "n_classes": 4, "m": 2, "s": 2, "L": 3, "seed": 5}


def test_rhm_enumeration_matches_counts():
    g = RHM(v=3, n_classes=2, m=2, s=2, L=2, seed=1)
    leaves, labels, prob = g.enumerate_data()
    assert leaves.shape == (2 * g.n_data_per_class, g.d)
    assert len({tuple(x) for x in leaves.tolist()}) == len(leaves)  # distinct data
    assert g.n_derivations() == len(leaves)
    np.testing.assert_allclose(prob, 1.0 / len(leaves))
    np.testing.assert_array_equal(np.bincount(labels), [g.n_data_per_class] * 2)


# ---------------------------------------------------------------------------- sampling
def _skewed_grammar() -> Grammar:
    rules = [
        [[(0, 1), (1, 1), (2, 0)], [(2, 2), (0, 0)]],
        [[(0, 1), (1, 0)], [(1, 1), (0, 0), (1, 2)], [(2, 2)]],
    ]
    probs = [[[0.6, 0.3, 0.1], [0.8, 0.2]], [[0.9, 0.1], [0.2, 0.5, 0.3], [1.0]]]
    return Grammar((2, 3, 3), 2, rules, probs, root_prior=[0.7, 0.3])


def test_sample_shapes_and_tree_consistency():
    g = _skewed_grammar()
    smp = g.sample(100, seed=0)
    assert smp.leaves.shape == (100, g.d) and smp.leaves.dtype == np.int64
    assert [x.shape for x in smp.symbols] == [(100, 1), (100, 2), (100, 4)]
    assert [x.shape for x in smp.rules] == [(100, 1), (100, 2)]
    assert smp.symbols[-1] is smp.leaves
    for lev in range(g.L):
        parent, r = smp.symbols[lev], smp.rules[lev]
        assert np.all(r < g.n_rules[lev][parent])
        np.testing.assert_array_equal(
            g.children[lev][parent, r].reshape(100, -1), smp.symbols[lev + 1]
        )


def test_sampling_statistics_match_rule_probabilities():
    g = _skewed_grammar()
    smp = g.sample(20_000, seed=11)
    counts = np.bincount(smp.labels, minlength=2)
    assert chisquare(counts, 20_000 * g.root_prior).pvalue > P_MIN
    for lev in range(g.L):
        parent, r = smp.symbols[lev].ravel(), smp.rules[lev].ravel()
        for a in range(g.vocab_sizes[lev]):
            k = int(g.n_rules[lev][a])
            if k == 1:
                assert np.all(r[parent == a] == 0)
                continue
            obs = np.bincount(r[parent == a], minlength=k)
            assert obs.sum() > 500
            assert chisquare(obs, obs.sum() * g.probs[lev][a, :k]).pvalue > P_MIN


def test_sampled_data_distribution_matches_enumeration():
    """Whole data vectors (ambiguous grammar): empirical frequencies vs exact p(leaves)."""
    g = random_grammar((2, 3, 2), (2, 2), max_rules=3, seed=4)
    leaves, _, prob = g.enumerate_data()
    exact: Counter = Counter()
    for x, p in zip(map(tuple, leaves.tolist()), prob):
        exact[x] += p
    assert sum(exact.values()) == pytest.approx(1.0)
    n = 30_000
    obs = Counter(map(tuple, g.sample(n, seed=2).leaves.tolist()))
    assert set(obs) <= set(exact)
    keys = sorted(exact)
    expected = np.array([exact[k] * n for k in keys])
    observed = np.array([obs.get(k, 0) for k in keys])
    big = expected >= 5  # pool sparse cells
    f_obs = np.append(observed[big], observed[~big].sum())
    f_exp = np.append(expected[big], expected[~big].sum())
    keep = f_exp > 0
    assert chisquare(f_obs[keep], f_exp[keep] * f_obs.sum() / f_exp[keep].sum()).pvalue > P_MIN


def test_class_conditional_sampling():
    g = _skewed_grammar()
    smp = g.sample(200, seed=0, classes=1)
    assert np.all(smp.labels == 1)
    # class 1 only uses its own rules at level 0
    assert set(map(tuple, smp.symbols[1].tolist())) <= {(2, 2), (0, 0)}
    cls = np.arange(10) % 2
    np.testing.assert_array_equal(g.sample(10, seed=0, classes=cls).labels, cls)
    with pytest.raises(GrammarError, match="classes out of range"):
        g.sample(3, classes=[0, 2, 1])


def test_enumerate_data_vs_n_derivations_ambiguous():
    g = random_grammar((3, 3, 3), (2, 2), max_rules=3, seed=7)
    assert not g.is_unambiguous
    leaves, labels, prob = g.enumerate_data()
    assert len(leaves) == g.n_derivations()
    assert len({tuple(x) for x in leaves.tolist()}) < len(leaves)  # ambiguity: repeated data
    assert prob.sum() == pytest.approx(1.0)
    for c in range(3):
        lc, _, pc = g.enumerate_data(cls=c)
        assert len(lc) == g.n_derivations(c)
        assert pc.sum() == pytest.approx(1.0)


def test_one_hot():
    g = RHM(4, 2, 2, 2, 2, seed=0)
    x = g.sample(6, seed=0).leaves
    oh = g.one_hot(x)
    assert oh.shape == (6, 4, 4) and oh.dtype == np.float32
    np.testing.assert_array_equal(oh.argmax(-1), x)
    np.testing.assert_array_equal(oh.sum(-1), 1)
    with pytest.raises(GrammarError, match="leaf symbols must be in 0..3"):
        g.one_hot(np.array([[0, 4]]))


def test_ragged_grammar_padding():
    g = _skewed_grammar()
    assert g.children[1].shape == (3, 3, 2)
    np.testing.assert_array_equal(g.n_rules[1], [2, 3, 1])
    np.testing.assert_allclose(g.probs[1][2], [1.0, 0.0, 0.0])
    assert g.rule_list(0, 1) == [((2, 2), 0.8), ((0, 0), 0.2)]
    assert g.is_unambiguous  # tuples repeat across levels, never within one
    amb = Grammar((2, 2), 2, [[[(0, 1), (1, 1)], [(1, 1)]]])
    assert not amb.is_unambiguous  # (1, 1) is produced by both root symbols


# ---------------------------------------------------------------------------- bad input
def test_errors_are_value_errors():
    assert issubclass(GrammarError, HiergenError) and issubclass(HiergenError, ValueError)


def test_infeasible_rhm():
    with pytest.raises(GrammarError, match=r"infeasible RHM: n_classes \* m = 3 \* 2 = 6 .* v\*\*s = 2\*\*2 = 4"):
        RHM(v=2, n_classes=3, m=2, s=2, L=2)
    with pytest.raises(GrammarError, match=r"infeasible RHM: v \* m"):
        RHM(v=3, n_classes=1, m=4, s=2, L=2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(v=3.0), r"v must be an integer, got the float 3.0"),
        (dict(v=-2), r"v must be >= 1, got -2"),
        (dict(m=0), r"m must be >= 1, got 0"),
        (dict(L="3"), r"L must be an integer"),
        (dict(seed=-1), r"seed must be >= 0"),
        (dict(s=True), r"s must be an integer"),
    ],
)
def test_bad_rhm_sizes(kwargs, match):
    args = dict(v=4, n_classes=2, m=2, s=2, L=2, seed=0)
    args.update(kwargs)
    with pytest.raises(GrammarError, match=match):
        RHM(**args)


def test_bad_grammar_sizes():
    rules = [np.zeros((2, 1, 2), dtype=np.int64)]
    with pytest.raises(GrammarError, match=r"vocab_sizes\[1\] must be >= 1, got -1"):
        Grammar((2, -1), 2, rules)
    with pytest.raises(GrammarError, match=r"vocab_sizes\[0\] must be an integer, got 2.5 \(float\)"):
        Grammar((2.5, 2), 2, rules)
    with pytest.raises(GrammarError, match=r"branching must be an int or a sequence of L=1"):
        Grammar((2, 2), (2, 2), rules)
    with pytest.raises(GrammarError, match="at least two levels"):
        Grammar((2,), 2, [])


def test_symbols_out_of_range():
    rules = [np.array([[[0, 1]], [[1, 2]]])]
    with pytest.raises(GrammarError, match=r"level 0, symbol 1, rule 0: child symbol 2 out of range 0..1"):
        Grammar((2, 2), 2, rules)
    with pytest.raises(GrammarError, match=r"level 0, symbol 0, rule 1: child symbol -1 out of range"):
        Grammar((1, 2), 2, [[[(0, 1), (1, -1)]]])


def test_bad_probabilities():
    rules = [[[(0, 1), (1, 0)], [(1, 1), (0, 0)]]]
    with pytest.raises(GrammarError, match=r"level 0, symbol 1: rule probabilities \[1.5, -0.5\] must be finite and >= 0"):
        Grammar((2, 2), 2, rules, [[[0.5, 0.5], [1.5, -0.5]]])
    with pytest.raises(GrammarError, match=r"level 0, symbol 0: rule probabilities sum to 0.9, not 1"):
        Grammar((2, 2), 2, rules, [[[0.5, 0.4], [0.5, 0.5]]])
    with pytest.raises(GrammarError, match=r"level 0, symbol 0: 3 probabilities for 2 rules"):
        Grammar((2, 2), 2, rules, [[[0.2, 0.4, 0.4], [0.5, 0.5]]])
    with pytest.raises(GrammarError, match="root_prior must sum to 1"):
        Grammar((2, 2), 2, rules, root_prior=[0.5, 0.6])
    with pytest.raises(GrammarError, match="root_prior has negative"):
        Grammar((2, 2), 2, rules, root_prior=[1.5, -0.5])


def test_wrong_tuple_length():
    with pytest.raises(GrammarError, match=r"level 0, symbol 1, rule 0: tuple \(0, 1, 1\) has length 3, branching s_0 = 2"):
        Grammar((2, 2), 2, [[[(0, 1)], [(0, 1, 1)]]])
    with pytest.raises(GrammarError, match=r"rules of level 0 produce tuples of length 3, branching s_0 = 2"):
        Grammar((2, 2), 2, [np.zeros((2, 1, 3), dtype=np.int64)])


def test_unreachable_symbols():
    with pytest.raises(GrammarError, match=r"unreachable symbols .*level 1: 2"):
        Grammar((1, 3), 2, [[[(0, 1)]]])
    g = Grammar((1, 3), 2, [[[(0, 1)]]], allow_unreachable=True)
    assert [u.tolist() for u in g.unreachable_symbols()] == [[], [2]]
    # names are used in the message when given
    with pytest.raises(GrammarError, match=r"level 1: c"):
        Grammar((1, 3), 2, [[[(0, 1)]]], symbol_names=[["r"], ["a", "b", "c"]])


def test_other_bad_rules():
    with pytest.raises(GrammarError, match=r"level 0, symbol 1 has no production rules"):
        Grammar((2, 2), 2, [[[(0, 1)], []]])
    with pytest.raises(GrammarError, match=r"level 0, symbol 0: rule \(0, 1\) is listed twice"):
        Grammar((1, 2), 2, [[[(0, 1), (1, 1), (0, 1)]]])
    with pytest.raises(GrammarError, match="rules of level 0 must be integers"):
        Grammar((1, 2), 2, [np.zeros((1, 1, 2))])
    with pytest.raises(GrammarError, match=r"symbol name 'a' used twice \(levels 0 and 1\)"):
        Grammar((1, 2), 2, [[[(0, 1)]]], symbol_names=[["a"], ["a", "b"]])


def test_n_data_per_class_formula_small():
    for v, m, s, L in [(4, 2, 2, 1), (4, 2, 2, 3), (3, 2, 3, 2)]:
        g = RHM(v=v, n_classes=2, m=m, s=s, L=L, seed=0)
        assert g.n_data_per_class == m ** ((s**L - 1) // (s - 1))
        if g.n_data_per_class < 5000:
            leaves, _, _ = g.enumerate_data(cls=0)
            assert len({tuple(x) for x in leaves.tolist()}) == g.n_data_per_class
    assert math.log2(RHM(32, 32, 8, 2, 10, seed=0).n_data_per_class) == 3 * (2**10 - 1)
