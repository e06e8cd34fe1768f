"""Factor-graph views: networkx structure, pgmpy CPDs and inference vs brute force, drawing."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest

from conftest import random_grammar
from hiergen.models.errors import GrammarError, SizeLimitError
from hiergen.models.grammar import Grammar
from hiergen.models.graphs import draw_tree, grammar_to_networkx, production_table
from hiergen.models.pgmpy_view import estimate_table_size, grammar_to_pgmpy
from hiergen.models.rhm import RHM

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# pgmpy 1.1 warns about its own deprecated StructureScore on import
pytestmark = pytest.mark.filterwarnings("ignore:.*StructureScore.*:FutureWarning")


def _direct_production(g: Grammar, lev: int) -> np.ndarray:
    """P(children | parent) straight from the rule lists (test oracle)."""
    v_child, s = g.vocab_sizes[lev + 1], g.branching[lev]
    out = np.zeros((g.vocab_sizes[lev],) + (v_child,) * s)
    for a in range(g.vocab_sizes[lev]):
        for t, p in g.rule_list(lev, a):
            out[(a,) + t] += p
    return out


# ---------------------------------------------------------------------------- networkx
@pytest.mark.parametrize("evidence", [False, True])
def test_networkx_structure(evidence):
    g = random_grammar((2, 3, 4, 2), (2, 3, 2), max_rules=3, seed=0)
    G = grammar_to_networkx(g, evidence_factors=evidence)
    assert nx.is_tree(G)
    variables = [n for n, d in G.nodes(data=True) if d["kind"] == "variable"]
    factors = [n for n, d in G.nodes(data=True) if d["kind"] == "factor"]
    assert nx.bipartite.is_bipartite_node_set(G, variables)
    assert len(variables) == sum(g.nodes_per_level) == 1 + 2 + 6 + 12
    assert len(factors) == 1 + (1 + 2 + 6) + (12 if evidence else 0)
    for n in variables:
        d = G.nodes[n]
        assert n == f"x_{d['level']}_{d['position']}"
        assert d["cardinality"] == g.vocab_sizes[d["level"]]
        # root: prior + production; inner: parent's and own production; leaf: parent's (+ evidence)
        expected_degree = 2 if d["level"] < g.L or evidence else 1
        assert G.degree(n) == expected_degree
    for n in factors:
        d = G.nodes[n]
        assert set(G.neighbors(n)) == set(d["scope"])
        if d["factor_type"] == "production":
            lev, i = d["level"], d["position"]
            s = g.branching[lev]
            assert d["scope"] == (f"x_{lev}_{i}",) + tuple(f"x_{lev + 1}_{i * s + j}" for j in range(s))
    assert G.nodes["prior"]["scope"] == ("x_0_0",)
    assert G.graph["branching"] == g.branching
    assert g.to_networkx().number_of_nodes() == len(variables) + 1 + 9


def test_networkx_size_limit():
    g = RHM(4, 2, 2, 2, 10, seed=0)
    with pytest.raises(SizeLimitError, match=r"would have \d+ nodes \(> max_nodes=1000\)"):
        grammar_to_networkx(g, max_nodes=1000)


def test_production_table_matches_rules():
    g = random_grammar((3, 3, 2), (2, 3), max_rules=4, seed=5)
    for lev in range(g.L):
        table = production_table(g, lev)
        np.testing.assert_allclose(table, _direct_production(g, lev), atol=1e-15)
        np.testing.assert_allclose(table.reshape(g.vocab_sizes[lev], -1).sum(1), 1.0)


# ---------------------------------------------------------------------------- pgmpy
@pytest.fixture(scope="module")
def tiny():
    return random_grammar((2, 3, 3), (2, 2), max_rules=3, seed=1)


def test_pgmpy_model_and_factor_tables(tiny):
    model = grammar_to_pgmpy(tiny)
    assert type(model).__name__ == "DiscreteBayesianNetwork"
    assert model.check_model()
    np.testing.assert_allclose(model.get_cpds("x_0_0").values, tiny.root_prior)
    for lev in range(tiny.L):
        m = tiny.children[lev].shape[1]
        for i in range(tiny.n_nodes(lev)):
            r_cpd = model.get_cpds(f"r_{lev}_{i}")
            assert r_cpd.get_evidence() == [f"x_{lev}_{i}"]
            np.testing.assert_allclose(r_cpd.values, tiny.probs[lev].T)  # (m, v): P(r | a)
            # marginalise the rule variable: P(children | parent) must equal the rules
            s = tiny.branching[lev]
            child = [model.get_cpds(f"x_{lev + 1}_{i * s + j}") for j in range(s)]
            for j, c in enumerate(child):
                assert c.variables == [f"x_{lev + 1}_{i * s + j}", f"x_{lev}_{i}", f"r_{lev}_{i}"]
            vals = [c.values for c in child]  # (v_child, v, m), axes ordered (var, x, r)
            v_child = tiny.vocab_sizes[lev + 1]
            table = np.zeros((tiny.vocab_sizes[lev],) + (v_child,) * s)
            for a in range(tiny.vocab_sizes[lev]):
                for cs in itertools.product(range(v_child), repeat=s):
                    table[(a,) + cs] = sum(
                        r_cpd.values[r, a] * np.prod([vals[j][cs[j], a, r] for j in range(s)])
                        for r in range(m)
                    )
            np.testing.assert_allclose(table, _direct_production(tiny, lev), atol=1e-12)


def test_pgmpy_size_estimate_exact_and_guard(tiny):
    model = grammar_to_pgmpy(tiny)
    assert estimate_table_size(tiny) == sum(c.values.size for c in model.get_cpds())
    big = RHM(32, 32, 8, 2, 10, seed=0)
    size = estimate_table_size(big)
    with pytest.raises(SizeLimitError, match=f"about {size:,} CPD entries"):
        big.to_pgmpy()
    with pytest.raises(SizeLimitError, match=r"> max_table_size=10"):
        grammar_to_pgmpy(tiny, max_table_size=10)


def _brute_root_posterior(g: Grammar, observed: dict[int, int]) -> np.ndarray:
    leaves, labels, prob = g.enumerate_data()
    match = np.all([leaves[:, i] == a for i, a in observed.items()], axis=0)
    post = np.bincount(labels[match], weights=prob[match], minlength=g.n_classes)
    return post / post.sum()


@pytest.mark.parametrize(
    "grammar",
    [
        random_grammar((2, 3, 3), (2, 2), max_rules=3, seed=1),
        random_grammar((3, 2, 3), (3, 2), max_rules=3, seed=2),
        RHM(v=3, n_classes=2, m=2, s=2, L=2, seed=4),
    ],
)
def test_pgmpy_variable_elimination_matches_bruteforce(grammar):
    from pgmpy.inference import VariableElimination

    ve = VariableElimination(grammar_to_pgmpy(grammar))
    data = grammar.sample(4, seed=3).leaves
    for k, x in enumerate(data):
        observed = {i: int(a) for i, a in enumerate(x)}
        if k % 2:  # partial evidence: hide half of the leaves
            observed = {i: a for i, a in observed.items() if i % 2 == 0}
        q = ve.query(
            ["x_0_0"], evidence={f"x_{grammar.L}_{i}": a for i, a in observed.items()},
            show_progress=False,
        )
        np.testing.assert_allclose(q.values, _brute_root_posterior(grammar, observed), atol=1e-10)


# ---------------------------------------------------------------------------- drawing
def test_draw_tree_png(tmp_path):
    g = Grammar.from_text(
        "level 0: face house\nface -> eye eye | eye nose\nhouse -> wall door\n"
        "level 1: eye nose wall door\neye -> dark light\nnose -> light light\n"
        "wall -> dark dark\ndoor -> light dark\nlevel 2: dark light\n"
    )
    out = draw_tree(g, tmp_path / "sub" / "tree.png", sample=g.sample(3, seed=0), index=2)
    assert out.read_bytes()[:8] == PNG_MAGIC
    out2 = draw_tree(g.to_networkx(), tmp_path / "graph.png")
    assert out2.stat().st_size > 1000


def test_draw_tree_truncates_and_refuses(tmp_path):
    deep = RHM(4, 2, 2, 2, 12, seed=0)
    p = draw_tree(deep, tmp_path / "deep.png", max_nodes_per_level=64)
    assert p.read_bytes()[:8] == PNG_MAGIC
    wide = Grammar((1, 2), 300, [[[tuple([0] * 299 + [1])]]])
    with pytest.raises(SizeLimitError, match=r"level 1 has 300 nodes"):
        draw_tree(wide, tmp_path / "wide.png")
    g = RHM(4, 2, 2, 2, 2, seed=0)
    with pytest.raises(GrammarError, match="index 5 out of range"):
        draw_tree(g, tmp_path / "x.png", sample=g.sample(2), index=5)
    with pytest.raises(GrammarError, match="needs a Grammar"):
        draw_tree("not a grammar", tmp_path / "x.png")


def _png_size(path):
    header = path.read_bytes()[:24]
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_draw_tree_max_levels(tmp_path):
    """The figure is 100 dpi, max(2.5, 1.3 (levels drawn)) inches high: the PNG's height
    says how many levels were drawn."""
    g = RHM(4, 2, 2, 2, 2, seed=0)
    assert _png_size(draw_tree(g, tmp_path / "all.png")) == (400, 390)
    assert _png_size(draw_tree(g, tmp_path / "one.png", max_levels=1)) == (400, 260)
    # only the root: allowed even when level 1 would not fit
    wide = Grammar((1, 2), 300, [[[tuple([0] * 299 + [1])]]])
    assert _png_size(draw_tree(wide, tmp_path / "root.png", max_levels=0)) == (400, 250)
    for bad, msg in ((-1, "max_levels must be >= 0, got -1"),
                     (1.5, "max_levels must be an integer, got 1.5"),
                     ("2", "max_levels must be an integer, got '2'")):
        with pytest.raises(GrammarError, match=msg):
            draw_tree(g, tmp_path / "x.png", max_levels=bad)
