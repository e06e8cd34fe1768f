"""The grammar as a pgmpy discrete Bayesian network (lazy pgmpy import).

Variables (all states are integer symbol indices):

- ``x_{l}_{i}`` — symbol of tree node ``i`` at level ``l`` (cardinality ``v_l``);
- ``r_{l}_{i}`` — rule chosen by internal node ``i`` at level ``l < L`` (cardinality ``m_l``,
  the padded number of rules of level ``l``).

CPDs:

- ``P(x_0_0) = root_prior``;
- ``P(r_{l}_{i} = r | x_{l}_{i} = a) = probs[l][a, r]`` (0 for padding rules);
- ``P(x_{l+1}_{i*s+j} = c | x_{l}_{i} = a, r_{l}_{i} = r) = [c == children[l][a, r, j]]``
  (deterministic).

Marginalising ``r_{l}_{i}`` gives back the production factor ``P(children | parent)``. The
total number of CPD entries is ``v_0 + sum_l n_l * v_l * m_l * (1 + s_l * v_{l+1})``; above
``max_table_size`` the model is refused before anything is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hiergen.models.errors import BackendError, SizeLimitError
from hiergen.models.grammar import Grammar


def rule_var(level: int, position: int) -> str:
    """Name of the rule variable of internal node ``position`` at ``level``."""
    return f"r_{level}_{position}"


def estimate_table_size(grammar: Grammar) -> int:
    """Total number of CPD entries :func:`grammar_to_pgmpy` would materialise (exact int)."""
    total = grammar.vocab_sizes[0]
    for lev in range(grammar.L):
        v, m = grammar.vocab_sizes[lev], int(grammar.children[lev].shape[1])
        s, v_child = grammar.branching[lev], grammar.vocab_sizes[lev + 1]
        total += grammar.n_nodes(lev) * v * m * (1 + s * v_child)
    return int(total)


def grammar_to_pgmpy(grammar: Grammar, max_table_size: int = 5_000_000) -> Any:
    """A ``pgmpy.models.DiscreteBayesianNetwork`` equivalent to ``grammar`` (see module doc).

    Raises SizeLimitError (with the estimated number of entries) when the CPDs would hold
    more than ``max_table_size`` numbers, and BackendError when pgmpy is not installed.
    """
    from hiergen.models.graphs import var_name

    size = estimate_table_size(grammar)
    if size > max_table_size:
        raise SizeLimitError(
            f"the pgmpy model of this grammar would hold about {size:,} CPD entries "
            f"(> max_table_size={max_table_size:,}); use a smaller grammar or belief propagation"
        )
    try:
        from pgmpy.factors.discrete import TabularCPD
        from pgmpy.models import DiscreteBayesianNetwork
    except ImportError as exc:  # pragma: no cover - pgmpy is a declared extra
        raise BackendError("pgmpy is not installed: pip install 'hiergen[pgmpy]'") from exc

    edges: list[tuple[str, str]] = []
    cpds = [
        TabularCPD(var_name(0, 0), grammar.vocab_sizes[0], grammar.root_prior.reshape(-1, 1))
    ]
    for lev in range(grammar.L):
        v, v_child, s = grammar.vocab_sizes[lev], grammar.vocab_sizes[lev + 1], grammar.branching[lev]
        m = int(grammar.children[lev].shape[1])
        rule_table = np.ascontiguousarray(grammar.probs[lev].T)  # (m, v): column = parent symbol
        # child tables: column index a * m + r (pgmpy: last evidence variable varies fastest)
        child_tables = []
        for j in range(s):
            table = np.zeros((v_child, v * m))
            table[grammar.children[lev][:, :, j].reshape(-1), np.arange(v * m)] = 1.0
            child_tables.append(table)
        for i in range(grammar.n_nodes(lev)):
            x, r = var_name(lev, i), rule_var(lev, i)
            edges.append((x, r))
            cpds.append(TabularCPD(r, m, rule_table, evidence=[x], evidence_card=[v]))
            for j in range(s):
                c = var_name(lev + 1, i * s + j)
                edges.extend([(x, c), (r, c)])
                cpds.append(
                    TabularCPD(c, v_child, child_tables[j], evidence=[x, r], evidence_card=[v, m])
                )
    model = DiscreteBayesianNetwork(edges)
    if grammar.L == 0:  # pragma: no cover - a Grammar always has L >= 1
        model.add_node(var_name(0, 0))
    model.add_cpds(*cpds)
    return model


__all__ = ["grammar_to_pgmpy", "estimate_table_size", "rule_var"]
