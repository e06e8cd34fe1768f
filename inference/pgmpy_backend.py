"""pgmpy exact inference on a grammar's tree, as a backend returning a ``Posterior``.

The model is :func:`hiergen.models.pgmpy_view.grammar_to_pgmpy` (``grammar.to_pgmpy()``): a
discrete Bayesian network with symbol variables ``x_{l}_{i}`` and rule variables
``r_{l}_{i}``. Leaf evidence enters in one of two ways:

- as *likelihood factors* ``phi_i(x_{L}_{i}) = p(obs_i | x_{L}_{i})`` (scaled to max 1) on the
  network's moral graph (a ``DiscreteMarkovNetwork``), where pgmpy does not normalise, so the
  partition function is ``p(evidence)`` and the log-evidence comes out exactly;
- as pgmpy's documented ``virtual_evidence`` on the Bayesian network (pgmpy adds a binary
  child per leaf and observes it); results are normalised, so no log-evidence.

Algorithms (``algorithm=``), each checked against brute-force enumeration in
``tests/test_backends_exact.py`` (see ``docs/backends.md`` for what was found):

``"ve"`` (default)
    ``pgmpy.inference.VariableElimination`` on the Markov network with likelihood factors,
    one (unnormalised) query per variable. Exact, public API only, O(nodes^2) per item.
``"bp"``
    ``pgmpy.inference.BeliefPropagation``: junction tree of the moral graph, calibrated once
    per item by one collect and one distribute pass of pgmpy's own belief update; every
    marginal and ``p(evidence)`` from the clique beliefs. Exact, O(nodes) per item.
``"bp-calibrate"``
    The same junction tree calibrated by pgmpy's ``calibrate()``. **Not exact**: its
    convergence test compares beliefs with an absolute tolerance of 1e-8, and with evidence
    the beliefs sum to ``p(evidence)`` (tiny), so it stops after a partial pass (marginal
    errors up to 0.99 at depth 4). Kept only to reproduce the finding.
``"ve-virtual"`` / ``"bp-virtual"``
    VariableElimination / BeliefPropagation ``query(..., virtual_evidence=...)`` on the
    Bayesian network, one query per variable. Exact marginals, no log-evidence.
``"messagepassing"``
    ``pgmpy.inference.BeliefPropagationWithMessagePassing`` on the tree-shaped factor graph
    of production factors ``P(children | parent)`` (rule variables summed out; on the
    rule-variable network the factor graph has cycles). Exact marginals, no log-evidence.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from hiergen.inference.registry import as_log_likelihood, normalised_likelihood
from hiergen.models.errors import BackendError, SizeLimitError
from hiergen.models.grammar import Grammar

ALGORITHMS = ("bp", "ve", "ve-virtual", "bp-virtual", "messagepassing", "bp-calibrate")


def _var(level: int, position: int) -> str:
    return f"x_{level}_{position}"


def _two_pass_calibration(bp: Any) -> None:
    """Calibrate a pgmpy ``BeliefPropagation`` junction tree with one collect and one
    distribute pass (Lauritzen-Spiegelhalter belief update with pgmpy's own message update,
    ``_update_beliefs``), from the first clique as root.

    pgmpy's ``calibrate()`` stops when its convergence test says the sepsets agree, and that
    test compares factors with an absolute tolerance of 1e-8: with evidence the beliefs are
    tiny (they sum to ``p(evidence)``), so it stops after a partial pass (see docs/backends.md).
    """
    import networkx as nx

    jt = bp.junction_tree
    bp.clique_beliefs = {c: jt.get_factors(c) for c in jt.nodes()}
    bp.sepset_beliefs = {frozenset(e): None for e in jt.edges()}
    root = next(iter(jt.nodes()))
    edges = list(nx.bfs_edges(jt, root))
    for parent, child in reversed(edges):  # collect: leaves of the clique tree first
        bp._update_beliefs(child, parent, operation="marginalize")
    for parent, child in edges:  # distribute
        bp._update_beliefs(parent, child, operation="marginalize")


def estimate_sizes(grammar: Grammar, algorithm: str = "bp") -> dict[str, int]:
    """Numbers of table entries pgmpy would allocate, computed before building anything.

    Returns ``{"cpd_entries": ..., "largest_table": ..., "total": ...}``: for the Bayesian
    network the CPDs (``v_0 + sum_l n_l v_l m_l (1 + s_l v_{l+1})``) and the largest clique
    ``v_l m_l v_{l+1}`` of its junction tree; for ``"messagepassing"`` the dense production
    factors ``n_l v_l v_{l+1}**s_l``.
    """
    g = grammar
    if algorithm == "messagepassing":
        tables = [g.vocab_sizes[lev] * g.vocab_sizes[lev + 1] ** g.branching[lev] for lev in range(g.L)]
        total = g.vocab_sizes[0] + sum(g.n_nodes(lev) * t for lev, t in enumerate(tables))
        return {"cpd_entries": total, "largest_table": max(tables), "total": total}
    cpd = g.vocab_sizes[0]
    largest = g.vocab_sizes[0]
    for lev in range(g.L):
        v, m = g.vocab_sizes[lev], int(g.children[lev].shape[1])
        s, vc = g.branching[lev], g.vocab_sizes[lev + 1]
        cpd += g.n_nodes(lev) * v * m * (1 + s * vc)
        largest = max(largest, v * m * vc)
    # the calibrated junction tree holds one clique belief and sepset per CPD, roughly again
    return {"cpd_entries": cpd, "largest_table": largest, "total": 2 * cpd}


class PgmpyInference:
    """Exact inference with pgmpy on the grammar's Bayesian network.

    Parameters
    ----------
    grammar : the grammar.
    algorithm : one of :data:`ALGORITHMS` (default ``"ve"``; ``"bp"`` is faster on big trees).
    max_table_size : refuse (SizeLimitError, naming the size) grammars whose pgmpy tables
        would hold more than this many numbers in total, before anything is allocated.
    """

    def __init__(self, grammar: Grammar, algorithm: str = "ve", max_table_size: int = 5_000_000) -> None:
        if algorithm not in ALGORITHMS:
            raise BackendError(f"unknown pgmpy algorithm {algorithm!r}; choose from {ALGORITHMS}")
        self.grammar = grammar
        self.algorithm = algorithm
        sizes = estimate_sizes(grammar, algorithm)
        if sizes["total"] > max_table_size:
            raise SizeLimitError(
                f"pgmpy ({algorithm}) would allocate about {sizes['total']:,} table entries "
                f"(largest table {sizes['largest_table']:,}; > max_table_size={max_table_size:,}); "
                "use a smaller grammar or backend='bp'"
            )
        self.sizes = sizes
        try:
            import warnings

            with warnings.catch_warnings():  # pgmpy 1.x warns about its own deprecations
                warnings.simplefilter("ignore", FutureWarning)
                import pgmpy.estimators  # noqa: F401
                import pgmpy.inference  # noqa: F401
        except ImportError as exc:  # pragma: no cover - declared extra
            raise BackendError("pgmpy is not installed: pip install 'hiergen[pgmpy]'") from exc
        logging.getLogger("pgmpy").setLevel(logging.ERROR)
        self._bn: Any = None
        self._jt: Any = None

    # ------------------------------------------------------------------ model pieces
    @property
    def network(self) -> Any:
        """The grammar's ``DiscreteBayesianNetwork`` (built once)."""
        if self._bn is None:
            g = self.grammar
            if hasattr(g, "to_pgmpy"):
                self._bn = g.to_pgmpy(max_table_size=max(self.sizes["cpd_entries"], 1))
            else:
                from hiergen.models.pgmpy_view import grammar_to_pgmpy

                self._bn = grammar_to_pgmpy(g, max_table_size=max(self.sizes["cpd_entries"], 1))
        return self._bn

    def _variables(self) -> list[list[str]]:
        g = self.grammar
        return [[_var(lev, i) for i in range(g.n_nodes(lev))] for lev in range(g.L + 1)]

    def _leaf_factors(self, lik: np.ndarray) -> list[Any]:
        from pgmpy.factors.discrete import DiscreteFactor

        g = self.grammar
        v = g.vocab_sizes[-1]
        return [DiscreteFactor([_var(g.L, i)], [v], lik[i].copy()) for i in range(g.d)]

    def _base_junction_tree(self) -> tuple[Any, dict[str, Any]]:
        """Junction tree of the moral graph (built once) and, per leaf, the clique it joins."""
        if self._jt is None:
            jt = self.network.to_markov_model().to_junction_tree()
            home = {}
            for leaf in self._variables()[-1]:
                home[leaf] = min((c for c in jt.nodes() if leaf in c), key=len)
            self._jt = (jt, home)
        return self._jt

    # ------------------------------------------------------------------ algorithms
    def _item_bp(self, lik: np.ndarray) -> tuple[list[np.ndarray], float]:
        from pgmpy.inference import BeliefPropagation
        from pgmpy.models import JunctionTree

        base, home = self._base_junction_tree()
        extra: dict[Any, list[Any]] = {}
        for f in self._leaf_factors(lik):
            extra.setdefault(home[f.variables[0]], []).append(f)
        jt = JunctionTree(base.edges())
        jt.add_nodes_from(base.nodes())
        factors = []
        for clique in base.nodes():
            phi = base.get_factors(clique).copy()
            for f in extra.get(clique, []):
                phi.product(f, inplace=True)
            factors.append(phi)
        jt.add_factors(*factors)
        bp = BeliefPropagation(jt)
        if self.algorithm == "bp-calibrate":
            bp.calibrate()  # pgmpy's own schedule; see the module doc: not exact on deep trees
        else:
            _two_pass_calibration(bp)
        beliefs = bp.get_clique_beliefs()
        z = float(next(iter(beliefs.values())).values.sum())
        where: dict[str, Any] = {}
        for clique in beliefs:
            for var in clique:
                if var not in where or len(clique) < len(where[var]):
                    where[var] = clique
        margs = []
        for names in self._variables():
            rows = []
            for var in names:
                phi = beliefs[where[var]]
                others = [u for u in phi.variables if u != var]
                rows.append(phi.marginalize(others, inplace=False).values / z if others else phi.values / z)
            margs.append(np.stack(rows))
        return margs, z

    def _item_ve(self, lik: np.ndarray) -> tuple[list[np.ndarray], float]:
        from pgmpy.inference import VariableElimination
        from pgmpy.models import DiscreteMarkovNetwork

        mn0 = self.network.to_markov_model()
        mn = DiscreteMarkovNetwork(mn0.edges())
        mn.add_nodes_from(mn0.nodes())
        mn.add_factors(*mn0.get_factors(), *self._leaf_factors(lik))
        ve = VariableElimination(mn)
        margs, z = [], math.nan
        for names in self._variables():
            rows = []
            for var in names:
                phi = ve.query([var], show_progress=False)  # a Markov network: not normalised
                vals = np.asarray(phi.values, dtype=np.float64)
                if math.isnan(z):
                    z = float(vals.sum())
                rows.append(vals)
            margs.append(np.stack(rows) / z)
        return margs, z

    def _item_virtual(self, lik: np.ndarray) -> list[np.ndarray]:
        from pgmpy.factors.discrete import TabularCPD
        from pgmpy.inference import BeliefPropagation, VariableElimination

        g = self.grammar
        v = g.vocab_sizes[-1]
        virtual = [TabularCPD(_var(g.L, i), v, lik[i].reshape(-1, 1)) for i in range(g.d)]
        cls = VariableElimination if self.algorithm == "ve-virtual" else BeliefPropagation
        margs = []
        for names in self._variables():
            rows = []
            for var in names:
                engine = cls(self.network)  # fresh engine: query() mutates pgmpy's model
                phi = engine.query([var], virtual_evidence=virtual, show_progress=False)
                rows.append(np.asarray(phi.values, dtype=np.float64))
            margs.append(np.stack(rows))
        return margs

    def _factor_graph(self) -> Any:
        from pgmpy.factors.discrete import DiscreteFactor
        from pgmpy.models import FactorGraph

        from hiergen.models.graphs import production_table

        g = self.grammar
        names = self._variables()
        fg = FactorGraph()
        fg.add_nodes_from([u for level in names for u in level])
        prior = DiscreteFactor([names[0][0]], [g.vocab_sizes[0]], g.root_prior.copy())
        factors = [prior]
        for lev in range(g.L):
            table = production_table(g, lev)
            s = g.branching[lev]
            for i in range(g.n_nodes(lev)):
                scope = [names[lev][i]] + [names[lev + 1][i * s + j] for j in range(s)]
                factors.append(DiscreteFactor(scope, list(table.shape), table))
        fg.add_factors(*factors)
        fg.add_edges_from([(u, f) for f in factors for u in f.variables])
        return fg

    def _item_messagepassing(self, lik: np.ndarray, fg: Any) -> list[np.ndarray]:
        from pgmpy.factors.discrete import TabularCPD
        from pgmpy.inference import BeliefPropagationWithMessagePassing

        g = self.grammar
        v = g.vocab_sizes[-1]
        virtual = [TabularCPD(_var(g.L, i), v, (lik[i] / lik[i].sum()).reshape(-1, 1)) for i in range(g.d)]
        engine = BeliefPropagationWithMessagePassing(fg, check_model=False)
        flat = [u for level in self._variables() for u in level]
        res = engine.query(flat, virtual_evidence=virtual)
        return [np.stack([np.asarray(res[u].values, dtype=np.float64) for u in names])
                for names in self._variables()]

    # ------------------------------------------------------------------ public API
    def run(self, evidence: Any, log: bool | None = None) -> Any:
        """Marginals ``(B, n_l, v_l)`` per level and log-evidence ``(B,)`` (NaN for the
        normalising algorithms), as a :class:`~hiergen.inference.bp.Posterior`."""
        from hiergen.inference.bp import Posterior

        t0 = time.perf_counter()
        g = self.grammar
        lik_all, log_scale = normalised_likelihood(as_log_likelihood(g, evidence, log))
        batch = lik_all.shape[0]
        out = [np.full((batch, g.n_nodes(lev), g.vocab_sizes[lev]), np.nan) for lev in range(g.L + 1)]
        log_ev = np.full(batch, np.nan)
        bad = ~np.isfinite(log_scale)
        fg = self._factor_graph() if self.algorithm == "messagepassing" else None
        with np.errstate(divide="ignore", invalid="ignore"):
            for b in range(batch):
                if bad[b]:
                    log_ev[b] = -np.inf
                    continue
                if self.algorithm in ("bp", "ve", "bp-calibrate"):
                    fn = self._item_ve if self.algorithm == "ve" else self._item_bp
                    margs, z = fn(lik_all[b])
                    if not z > 0:
                        bad[b] = True
                        log_ev[b] = -np.inf
                        continue
                    log_ev[b] = math.log(z) + log_scale[b]
                elif self.algorithm == "messagepassing":
                    margs = self._item_messagepassing(lik_all[b], fg)
                else:
                    margs = self._item_virtual(lik_all[b])
                for lev in range(g.L + 1):
                    out[lev][b] = margs[lev]
        return Posterior(
            marginals=out,
            log_evidence=log_ev,
            inconsistent=bad,
            backend=f"pgmpy-{self.algorithm}",
            seconds=time.perf_counter() - t0,
            extra={"algorithm": self.algorithm, "table_entries": self.sizes["total"]},
        )


__all__ = ["PgmpyInference", "ALGORITHMS", "estimate_sizes"]
