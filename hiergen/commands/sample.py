"""``hiergen sample``: sample data from an RHM or a grammar file, save them, draw a tree.

Also ``hiergen grammar info FILE`` (properties of a grammar) and
``hiergen grammar convert IN OUT`` (between JSON, YAML and the text form).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from hiergen.commands._options import add_rhm_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample data from an RHM (or a grammar file), save them and draw a tree",
        description="Sample data with their latent trees from a Random Hierarchy Model "
        "(--v --n-classes --m --s --L --seed) or from a grammar file (--grammar: .json, "
        ".yaml, .yml, .txt, .grammar). Prints the samples; with --out also writes "
        "grammar.json, samples.json (or samples.npz) and tree.png (first sample).",
    )
    p.add_argument("--grammar", type=Path, default=None,
                   help="grammar file (.json, .yaml, .yml, .txt, .grammar) instead of an RHM")
    add_rhm_options(p, v=8, n_classes=4, m=2, s=2, L=3)
    p.add_argument("--seed", type=int, default=0, help="seed of the RHM rules")
    p.add_argument("--n", type=int, default=5, help="number of samples")
    p.add_argument("--sample-seed", type=int, default=None,
                   help="seed of the samples (default: --seed)")
    p.add_argument("--class", dest="cls", type=int, default=None,
                   help="sample only this class (an index); default: all classes")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for grammar.json, samples.* and tree.png; default: "
                        "print only")
    p.add_argument("--format", choices=["json", "npz"], default="json",
                   help="samples file format: samples.json or samples.npz")
    p.add_argument("--no-draw", action="store_true",
                   help="do not draw the tree of the first sample (tree.png)")
    p.add_argument("--show", type=int, default=10, help="print at most this many samples")
    p.set_defaults(func=run_sample)

    g = sub.add_parser("grammar", help="inspect or convert grammar files")
    what = g.add_subparsers(dest="what", metavar="WHAT", required=True)
    info = what.add_parser("info", help="print the properties of a grammar file")
    info.add_argument("file", type=Path,
                      help="grammar file (.json, .yaml, .yml, .txt, .grammar)")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=run_info)
    conv = what.add_parser("convert", help="convert between .json, .yaml/.yml and .txt/.grammar")
    conv.add_argument("src", type=Path, help="grammar file to read")
    conv.add_argument("dst", type=Path, help="file to write; its extension picks the format")
    conv.set_defaults(func=run_convert)


def _load(args: argparse.Namespace) -> Any:
    from hiergen.models.rhm import RHM
    from hiergen.models.serialize import load_grammar

    if args.grammar is not None:
        return load_grammar(args.grammar)
    return RHM(v=args.v, n_classes=args.n_classes, m=args.m, s=args.s, L=args.L, seed=args.seed)


def _fmt(symbols: Any, level: int, names: list[list[str]] | None) -> str:
    if names is None:
        return " ".join(str(int(x)) for x in symbols)
    return " ".join(names[level][int(x)] for x in symbols)


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from hiergen._files import atomic_path, atomic_write, ensure_dir
    from hiergen.models.errors import ConfigError
    from hiergen.models.serialize import grammar_to_dict, save_grammar

    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    if args.out is not None:  # a bad output folder fails before any work
        ensure_dir(args.out)
    grammar = _load(args)
    seed = args.seed if args.sample_seed is None else args.sample_seed
    tree = grammar.sample(args.n, seed=seed, classes=args.cls)
    names = grammar.symbol_names
    print(f"{grammar!r}: d={grammar.d}, {args.n} samples (seed {seed})")
    for k in range(min(args.n, args.show)):
        label = _fmt(tree.symbols[0][k], 0, names)
        print(f"[{k}] class {label}: {_fmt(tree.leaves[k], grammar.L, names)}")
    if args.n > args.show:
        print(f"... ({args.n - args.show} more)")
    if args.out is None:
        return 0
    out: Path = ensure_dir(args.out)
    written = [save_grammar(grammar, out / "grammar.json")]
    if args.format == "json":
        data = {
            "grammar": grammar_to_dict(grammar),
            "seed": seed,
            "leaves": tree.leaves.tolist(),
            "labels": tree.labels.tolist(),
            "symbols": [x.tolist() for x in tree.symbols],
            "rules": [x.tolist() for x in tree.rules],
        }
        path = out / "samples.json"
        atomic_write(path, json.dumps(data))
    else:
        path = out / "samples.npz"
        arrays = {"leaves": tree.leaves, "labels": tree.labels, "seed": np.int64(seed)}
        arrays.update({f"symbols_{lev}": x for lev, x in enumerate(tree.symbols)})
        arrays.update({f"rules_{lev}": x for lev, x in enumerate(tree.rules)})
        # a file object: given a name, numpy would append ".npz" to the temporary name
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    written.append(path)
    if not args.no_draw:
        from hiergen.models.graphs import draw_tree

        written.append(draw_tree(grammar, out / "tree.png", sample=tree, index=0))
    for p in written:
        print(f"wrote {p}")
    return 0


_INFO_EXACT_DIGITS = 10_000  # exact counts up to this many digits (fast); beyond, log10 only
_JSON_EXACT_DIGITS = 100  # JSON: exact decimal digits up to this size, readable form beyond


def _json_count(n: int, as_int: bool) -> Any:
    """An exact count for the JSON output: the number (or its digits) when it has at most
    100 digits, else the readable ``2.3e+230 (exact: 231 digits)`` form."""
    from hiergen.models.grammar import format_count

    if n < 10**_JSON_EXACT_DIGITS:
        return int(n) if as_int else str(n)
    return format_count(n)


def _count_from_log10(log10: float, exact: Any) -> Any:
    """``exact()`` when the count has at most _INFO_EXACT_DIGITS digits, else None."""
    return exact() if log10 < _INFO_EXACT_DIGITS else None


def _finite_or_none(x: float) -> float | None:
    """``x``, or None (JSON null) when it is infinite (a count beyond 10**1.8e308)."""
    return x if math.isfinite(x) else None


def grammar_info(grammar: Any) -> dict[str, Any]:
    """Properties of a grammar as a JSON-able dict (sizes, d, counts, ambiguity...).

    Never builds a count of more than 10,000 digits: ``n_data`` (and for an RHM
    ``n_data_per_class``) is the exact number as a string when it has at most 100 digits,
    else a readable form (``2.3e+230 (exact: 231 digits)`` or ``9.9e+992957941624 (about
    ... digits)``); ``log10_n_data`` (``log10_n_data_per_class``) is always given.
    """
    from hiergen.models.grammar import format_log10_count
    from hiergen.models.pgmpy_view import estimate_table_size
    from hiergen.models.rhm import RHM

    log10_n = grammar.log10_n_derivations()
    n_data = _count_from_log10(log10_n, grammar.n_derivations)
    info: dict[str, Any] = {
        "type": type(grammar).__name__,
        "L": grammar.L,
        "vocab_sizes": list(grammar.vocab_sizes),
        "branching": list(grammar.branching),
        "d": _json_count(grammar.d, as_int=True),
        "rules_per_symbol": [
            [int(nr.min()), int(nr.max())] for nr in grammar.n_rules
        ],
        "n_data": (
            format_log10_count(log10_n) if n_data is None else _json_count(n_data, as_int=False)
        ),
        "log10_n_data": _finite_or_none(log10_n),
        "unambiguous": bool(grammar.is_unambiguous),
        "uniform": bool(grammar.is_uniform),
        "unreachable_symbols": [len(u) for u in grammar.unreachable_symbols()],
        "named": grammar.symbol_names is not None,
        "pgmpy_table_entries": _json_count(estimate_table_size(grammar), as_int=True),
    }
    if isinstance(grammar, RHM):
        info["params"] = grammar.params
        info["f"] = grammar.f
        log10_c = grammar.log10_n_data_per_class
        per_class = _count_from_log10(log10_c, lambda: grammar.n_data_per_class)
        info["n_data_per_class"] = (
            format_log10_count(log10_c) if per_class is None else _json_count(per_class, as_int=False)
        )
        info["log10_n_data_per_class"] = _finite_or_none(log10_c)
    return info


def _table_value(key: str, value: Any) -> str:
    """A value of the info table: big integers (given as digit strings or ints) made readable."""
    from hiergen.models.grammar import format_count

    if key in ("d", "pgmpy_table_entries", "n_data", "n_data_per_class"):
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return format_count(int(value))
    if key.startswith("log10_"):
        return "more than 1.8e+308" if value is None else f"{value:.6g}"
    return str(value)


def run_info(args: argparse.Namespace) -> int:
    from hiergen.models.serialize import load_grammar

    info = grammar_info(load_grammar(args.file))
    if args.json:
        print(json.dumps(info, allow_nan=False))
        return 0
    rows = {key: _table_value(key, value) for key, value in info.items()}
    if not info["unambiguous"]:
        rows["n_data"] += " derivations (ambiguous grammar: distinct data may be fewer)"
    width = max(len(k) for k in rows)
    print(f"grammar {args.file}")
    for key, value in rows.items():
        print(f"  {key:<{width}}  {value}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from hiergen.models.serialize import load_grammar, save_grammar

    path = save_grammar(load_grammar(args.src), args.dst)
    print(f"wrote {path}")
    return 0
