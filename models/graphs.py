"""Factor-graph view of a grammar's tree (networkx) and a plotting helper (matplotlib).

The tree of a grammar with depth ``L`` has ``n_l`` variable nodes per level; node ``i`` of
level ``l`` has children ``i*s_l .. i*s_l + s_l - 1``. Its factor graph is bipartite:

- variable nodes ``"x_{l}_{i}"``: ``kind="variable"``, ``level``, ``position``,
  ``cardinality = v_l``;
- factor nodes (``kind="factor"``, ``level``, ``position``, ``scope`` = tuple of variable
  names, ``factor_type``):

  * ``"prior"`` on the root (``factor_type="prior"``, scope ``("x_0_0",)``);
  * ``"f_{l}_{i}"`` for every internal node (``factor_type="production"``), scope
    ``(x_{l}_{i}, x_{l+1}_{i*s}, ..., x_{l+1}_{i*s+s-1})``; its table is
    ``P(children | parent) = sum_r probs[l][parent, r] * [children == children[l][parent, r]]``;
  * optionally ``"e_{L}_{i}"`` on every leaf (``factor_type="evidence"``), the slot for
    the observation's likelihood.

Edges join every factor to the variables of its scope. ``graph.graph`` holds
``vocab_sizes``, ``branching``, ``L`` and ``symbol_names``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hiergen.models._validate import check_int
from hiergen.models.errors import GrammarError, SizeLimitError
from hiergen.models.grammar import Grammar, TreeSample


def var_name(level: int, position: int) -> str:
    """Name of the variable node at ``level``, ``position`` (shared with the pgmpy view)."""
    return f"x_{level}_{position}"


def grammar_to_networkx(
    grammar: Grammar, evidence_factors: bool = False, max_nodes: int = 2_000_000
) -> Any:
    """The bipartite factor graph of ``grammar``'s tree as a ``networkx.Graph``.

    Raises SizeLimitError when the graph would have more than ``max_nodes`` nodes.
    """
    import networkx as nx

    n_nodes = grammar.nodes_per_level
    n_vars = sum(n_nodes)
    n_total = n_vars + sum(n_nodes[:-1]) + 1 + (n_nodes[-1] if evidence_factors else 0)
    if n_total > max_nodes:
        raise SizeLimitError(
            f"the factor graph would have {n_total} nodes (> max_nodes={max_nodes}); "
            f"tree sizes per level: {list(n_nodes)}"
        )
    g = nx.Graph(
        vocab_sizes=tuple(grammar.vocab_sizes),
        branching=tuple(grammar.branching),
        L=grammar.L,
        symbol_names=grammar.symbol_names,
    )
    for lev, n in enumerate(n_nodes):
        card = grammar.vocab_sizes[lev]
        g.add_nodes_from(
            (var_name(lev, i), {"kind": "variable", "level": lev, "position": i, "cardinality": card})
            for i in range(n)
        )
    g.add_node("prior", kind="factor", factor_type="prior", level=0, position=0, scope=("x_0_0",))
    g.add_edge("prior", "x_0_0")
    for lev in range(grammar.L):
        s = grammar.branching[lev]
        for i in range(n_nodes[lev]):
            scope = (var_name(lev, i),) + tuple(var_name(lev + 1, i * s + j) for j in range(s))
            name = f"f_{lev}_{i}"
            g.add_node(name, kind="factor", factor_type="production", level=lev, position=i, scope=scope)
            g.add_edges_from((name, v) for v in scope)
    if evidence_factors:
        lev = grammar.L
        for i in range(n_nodes[lev]):
            name = f"e_{lev}_{i}"
            g.add_node(name, kind="factor", factor_type="evidence", level=lev, position=i,
                       scope=(var_name(lev, i),))
            g.add_edge(name, var_name(lev, i))
    return g


def production_table(grammar: Grammar, level: int, symbol: int | None = None) -> np.ndarray:
    """Dense production factor of ``level``: ``(v_l, v_{l+1}, ..., v_{l+1})`` with ``s_l``
    child axes, ``table[a, c_1..c_s] = P(children = c | parent = a)``.

    ``symbol`` selects one parent row (shape ``(v_{l+1},) * s_l``). Dense, so only for small
    grammars (SizeLimitError above 10 million entries).
    """
    v_child = grammar.vocab_sizes[level + 1]
    s = grammar.branching[level]
    rows = range(grammar.vocab_sizes[level]) if symbol is None else [symbol]
    size = len(rows) * v_child**s
    if size > 10_000_000:
        raise SizeLimitError(f"production table of level {level} would have {size} entries")
    table = np.zeros((len(rows),) + (v_child,) * s)
    for k, a in enumerate(rows):
        for r in range(int(grammar.n_rules[level][a])):
            table[(k,) + tuple(int(c) for c in grammar.children[level][a, r])] += grammar.probs[level][a, r]
    return table[0] if symbol is not None else table


def _tree_info(obj: Any) -> tuple[tuple[int, ...], list[list[str]] | None]:
    """(branching, symbol_names) from a Grammar or a graph made by grammar_to_networkx."""
    if isinstance(obj, Grammar):
        return tuple(obj.branching), obj.symbol_names
    graph_attrs = getattr(obj, "graph", None)
    if isinstance(graph_attrs, dict) and "branching" in graph_attrs:
        return tuple(graph_attrs["branching"]), graph_attrs.get("symbol_names")
    raise GrammarError(
        f"draw_tree needs a Grammar or a graph from grammar_to_networkx, got {type(obj).__name__}"
    )


def _label(symbol: int, level: int, names: list[list[str]] | None) -> str:
    return names[level][symbol] if names is not None else str(symbol)


def _drawn_levels(
    branching: tuple[int, ...], max_levels: int | None, max_nodes_per_level: int
) -> tuple[list[int], int]:
    """Nodes per level ``sizes`` (L + 1 ints) and the deepest level ``last`` that is drawn."""
    depth = len(branching)
    sizes = [1]
    for s in branching:
        sizes.append(sizes[-1] * s)
    asked = depth if max_levels is None else check_int(max_levels, "max_levels", 0, error=GrammarError)
    last = min(depth, asked)
    while last > 0 and sizes[last] > max_nodes_per_level:
        last -= 1
    if asked > 0 and depth > 0 and sizes[1] > max_nodes_per_level:
        raise SizeLimitError(
            f"cannot draw: level 1 has {sizes[1]} nodes (> max_nodes_per_level={max_nodes_per_level})"
        )
    return sizes, last


def _check_sample(sample: TreeSample | None, index: int, depth: int) -> None:
    if sample is None:
        return
    if not isinstance(sample, TreeSample):
        raise GrammarError(f"sample must be a TreeSample, got {type(sample).__name__}")
    if not 0 <= index < len(sample):
        raise GrammarError(f"index {index} out of range for a sample of size {len(sample)}")
    if len(sample.symbols) != depth + 1:
        raise GrammarError(f"sample has {len(sample.symbols) - 1} levels, the tree has {depth}")


def _node_x(branching: tuple[int, ...], sizes: list[int], last: int) -> list[np.ndarray]:
    """x of every drawn node per level: leaves evenly spaced, parents centred over children."""
    xs: list[np.ndarray] = [np.arange(sizes[last], dtype=float)]
    for lev in reversed(range(last)):
        xs.insert(0, xs[0].reshape(sizes[lev], branching[lev]).mean(axis=1))
    return xs


def _figure_size(
    sample: TreeSample | None, index: int, names: list[list[str]] | None, sizes: list[int],
    last: int,
) -> tuple[float, float]:
    """(width, height) in inches: wide enough for the longest label under each leaf."""
    longest = 1
    if sample is not None:
        longest = max(
            len(_label(int(sym), lev, names))
            for lev in range(last + 1)
            for sym in sample.symbols[lev][index, : sizes[lev]]
        )
    per_leaf = max(0.45, 0.085 * longest + 0.15)
    width = max(4.0, min(60.0, per_leaf * sizes[last] + 1.5))
    return width, max(2.5, 1.3 * (last + 1))


def _draw_edges(ax: Any, xs: list[np.ndarray], s: int, lev: int, show_factors: bool) -> None:
    """Edges from the nodes of level ``lev`` to their children (through a factor square)."""
    y = -float(lev)
    for i in range(xs[lev].size):
        x0 = xs[lev][i]
        fy = y - 0.45
        for j in range(s):
            x1 = xs[lev + 1][i * s + j]
            if show_factors:
                ax.plot([x0, x0, x1], [y, fy, y - 1], color="0.6", lw=0.8, zorder=1)
            else:
                ax.plot([x0, x1], [y, y - 1], color="0.6", lw=0.8, zorder=1)
        if show_factors:
            ax.scatter([x0], [fy], marker="s", s=18, color="tab:orange", zorder=2)


def _draw_nodes(
    ax: Any, x: np.ndarray, lev: int, font: int, sample: TreeSample | None, index: int,
    names: list[list[str]] | None,
) -> None:
    """The nodes of level ``lev``: dots, or the sample's symbols in boxes."""
    y = -float(lev)
    if sample is None:
        ax.scatter(x, np.full(x.size, y), s=160 if font == 9 else 60,
                   color="tab:blue", edgecolors="k", linewidths=0.5, zorder=3)
    else:
        box = {"boxstyle": "round,pad=0.25", "facecolor": "#cfe2f3", "edgecolor": "k",
               "linewidth": 0.5}
        for i in range(x.size):
            sym = int(sample.symbols[lev][index, i])
            ax.text(x[i], y, _label(sym, lev, names), ha="center", va="center",
                    fontsize=font, zorder=4, bbox=box, clip_on=False)
    ax.text(-0.8, y, f"l={lev}", ha="right", va="center", fontsize=9)


def _default_title(branching: tuple[int, ...], last: int, sample: TreeSample | None, index: int) -> str:
    depth = len(branching)
    title = f"tree of depth L={depth}, branching {list(branching)}"
    if last < depth:
        title += f" (levels 0..{last} of {depth} shown)"
    if sample is not None:
        title += f"; symbols of sample {index}"
    return title


def draw_tree(
    grammar_or_graph: Any,
    path: str | Path,
    sample: TreeSample | None = None,
    index: int = 0,
    max_levels: int | None = None,
    max_nodes_per_level: int = 256,
    show_factors: bool = True,
    title: str | None = None,
) -> Path:
    """Draw the tree (levels as layers, root on top) and save it as a PNG.

    Parameters
    ----------
    grammar_or_graph : Grammar or the graph of :func:`grammar_to_networkx`.
    path : output PNG path.
    sample : optional TreeSample; node labels are the symbols of its tree number ``index``.
    max_levels : draw only levels ``0..max_levels`` (default: all levels that fit).
    max_nodes_per_level : deeper levels with more nodes are cut off (the title says so);
        SizeLimitError if not even level 1 fits.
    show_factors : draw production factors as small squares between a node and its children.

    Returns the path written.
    """
    branching, names = _tree_info(grammar_or_graph)
    sizes, last = _drawn_levels(branching, max_levels, max_nodes_per_level)
    _check_sample(sample, index, len(branching))

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xs = _node_x(branching, sizes, last)
    fig = Figure(figsize=_figure_size(sample, index, names, sizes, last), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    font = 9 if sizes[last] <= 64 else 6
    for lev in range(last + 1):
        if lev < last:
            _draw_edges(ax, xs, branching[lev], lev, show_factors)
        _draw_nodes(ax, xs[lev], lev, font, sample, index, names)
    ax.set_xlim(-1.6, sizes[last] - 0.2)
    ax.set_ylim(-last - 0.5, 0.6)
    ax.axis("off")
    ax.set_title(_default_title(branching, last, sample, index) if title is None else title,
                 fontsize=10)
    fig.tight_layout()
    from hiergen._files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


__all__ = ["grammar_to_networkx", "draw_tree", "production_table", "var_name"]
