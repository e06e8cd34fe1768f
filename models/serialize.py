"""Lossless JSON / YAML (and text) files for grammars. Never pickle.

The dict layout (``format: hiergen-grammar``, ``version: 1``)::

    format: hiergen-grammar
    version: 1
    type: Grammar | RHM
    params: {v, n_classes, m, s, L, seed}      # RHM only
    vocab_sizes: [v_0, ..., v_L]
    branching: [s_0, ..., s_{L-1}]
    rules: per level, per parent symbol, the list of its child tuples (ragged)
    rule_probs: per level, null (equiprobable rules) or per symbol the list of probabilities
    root_prior: null (uniform) or [p_0, ..., p_{v_0 - 1}]
    symbol_names: null or per level the list of names
    allow_unreachable: bool

Floats are written with full precision (``repr``), so a round trip gives back an equal
grammar (``==``), and an RHM comes back as an RHM with the same ``params`` and rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hiergen.models.errors import ConfigError, GrammarError
from hiergen.models.grammar import Grammar

FORMAT = "hiergen-grammar"
VERSION = 1
_TEXT_SUFFIXES = (".txt", ".grammar", ".hg")
_YAML_SUFFIXES = (".yaml", ".yml")


def _uniform(p: np.ndarray) -> bool:
    return bool(np.allclose(p, 1.0 / p.size, rtol=0, atol=1e-15))


def grammar_to_dict(grammar: Grammar) -> dict[str, Any]:
    """A JSON/YAML-able dict describing ``grammar`` exactly (plain lists, ints, floats, str)."""
    from hiergen.models.rhm import RHM

    rules: list[Any] = []
    probs: list[Any] = []
    for lev in range(grammar.L):
        lev_rules, lev_probs, uniform = [], [], True
        for a in range(grammar.vocab_sizes[lev]):
            k = int(grammar.n_rules[lev][a])
            lev_rules.append([[int(c) for c in t] for t in grammar.children[lev][a, :k]])
            p = grammar.probs[lev][a, :k]
            uniform = uniform and _uniform(p)
            lev_probs.append([float(x) for x in p])
        rules.append(lev_rules)
        probs.append(None if uniform else lev_probs)
    out: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if isinstance(grammar, RHM):
        out["type"] = "RHM"
        out["params"] = dict(grammar.params)
    else:
        out["type"] = "Grammar"
    out.update(
        {
            "vocab_sizes": [int(v) for v in grammar.vocab_sizes],
            "branching": [int(s) for s in grammar.branching],
            "rules": rules,
            "rule_probs": probs,
            "root_prior": None
            if _uniform(grammar.root_prior)
            else [float(p) for p in grammar.root_prior],
            "symbol_names": None
            if grammar.symbol_names is None
            else [list(n) for n in grammar.symbol_names],
            "allow_unreachable": bool(grammar.allow_unreachable),
        }
    )
    return out


def _field(data: dict[str, Any], key: str, source: str, required: bool = True) -> Any:
    if key not in data:
        if required:
            raise GrammarError(f"{source}: missing field {key!r}")
        return None
    return data[key]


def grammar_from_dict(data: Any, source: str = "grammar dict") -> Grammar:
    """Rebuild a grammar from :func:`grammar_to_dict` output.

    ``source`` (e.g. the file path) is named in every error message.
    """
    if not isinstance(data, dict):
        raise GrammarError(f"{source}: expected a mapping with a grammar, got {type(data).__name__}")
    fmt = _field(data, "format", source)
    if fmt != FORMAT:
        raise GrammarError(f"{source}: field 'format' is {fmt!r}, expected {FORMAT!r}")
    version = _field(data, "version", source)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise GrammarError(
            f"{source}: field 'version' is {version!r}; this hiergen reads versions 1..{VERSION}"
        )
    kind = data.get("type", "Grammar")
    if kind not in ("Grammar", "RHM"):
        raise GrammarError(f"{source}: field 'type' is {kind!r}, expected 'Grammar' or 'RHM'")
    vocab = _field(data, "vocab_sizes", source)
    branching = _field(data, "branching", source)
    rules = _field(data, "rules", source)
    probs = _field(data, "rule_probs", source, required=False)
    prior = _field(data, "root_prior", source, required=False)
    names = _field(data, "symbol_names", source, required=False)
    allow = _field(data, "allow_unreachable", source, required=False)
    if allow is not None and not isinstance(allow, bool):
        raise GrammarError(f"{source}: field 'allow_unreachable' must be true or false, got {allow!r}")
    for key, value in (("vocab_sizes", vocab), ("branching", branching), ("rules", rules)):
        if not isinstance(value, list):
            raise GrammarError(f"{source}: field {key!r} must be a list, got {type(value).__name__}")
    if probs is not None and not isinstance(probs, list):
        raise GrammarError(f"{source}: field 'rule_probs' must be a list or null")
    try:
        if kind == "RHM":
            from hiergen.models.rhm import RHM

            params = _field(data, "params", source)
            if not isinstance(params, dict):
                raise GrammarError(f"{source}: field 'params' must be a mapping")
            expected = {"v", "n_classes", "m", "s", "L", "seed"}
            if set(params) != expected:
                raise GrammarError(
                    f"{source}: field 'params' must have the keys {sorted(expected)}, "
                    f"got {sorted(params)}"
                )
            rhm_rules = []
            for lev, r in enumerate(rules):
                try:
                    arr = np.asarray(r, dtype=np.int64)
                except (ValueError, TypeError) as exc:
                    raise GrammarError(f"{source}: rules[{lev}] is not a regular integer array") from exc
                rhm_rules.append(arr)
            grammar: Grammar = RHM(**params, _rules=rhm_rules)
            if list(grammar.vocab_sizes) != vocab or list(grammar.branching) != branching:
                raise GrammarError(
                    f"{source}: fields 'vocab_sizes'/'branching' ({vocab}, {branching}) do not match "
                    f"the RHM params {params}"
                )
            if probs is not None and any(p is not None for p in probs):
                raise GrammarError(f"{source}: an RHM has equiprobable rules; 'rule_probs' must be null")
            if prior is not None or names is not None:
                raise GrammarError(f"{source}: an RHM has no 'root_prior' or 'symbol_names'")
            return grammar
        return Grammar(
            vocab,
            branching,
            rules,
            probs,
            root_prior=prior,
            symbol_names=names,
            allow_unreachable=bool(allow),
        )
    except GrammarError as exc:
        if str(exc).startswith(source):
            raise
        raise GrammarError(f"{source}: {exc}") from exc


def _format_json(data: dict[str, Any]) -> str:
    """One top-level key per line, each value compact (rules stay readable, files small)."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in data.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def save_grammar(grammar: Grammar, path: str | Path) -> Path:
    """Write ``grammar`` to ``path``: JSON (``.json``), YAML (``.yaml``/``.yml``) or the text
    form (``.txt``/``.grammar``/``.hg``). Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = _format_json(grammar_to_dict(grammar))
    elif suffix in _YAML_SUFFIXES:
        import yaml

        text = yaml.safe_dump(grammar_to_dict(grammar), sort_keys=False, default_flow_style=None)
    elif suffix in _TEXT_SUFFIXES:
        from hiergen.models.text import grammar_to_text

        text = grammar_to_text(grammar)
    else:
        raise ConfigError(
            f"{path}: unknown grammar file type {suffix!r} (use .json, .yaml, .yml, .txt or .grammar)"
        )
    from hiergen._files import atomic_write

    return atomic_write(path, text)


def load_grammar(path: str | Path) -> Grammar:
    """Read a grammar file written by :func:`save_grammar` (or by hand).

    The type follows the suffix: ``.json``, ``.yaml``/``.yml``, or the text form for
    ``.txt``/``.grammar``/``.hg``. Raises ConfigError for a missing or unparsable file and
    GrammarError (naming the file and the field) for invalid content.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", *_YAML_SUFFIXES, *_TEXT_SUFFIXES):
        raise ConfigError(
            f"{path}: unknown grammar file type {suffix!r} (use .json, .yaml, .yml, .txt or .grammar)"
        )
    if not path.is_file():
        raise ConfigError(f"grammar file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read grammar file {path}: {exc}") from exc
    if suffix in _TEXT_SUFFIXES:
        from hiergen.models.errors import GrammarSyntaxError
        from hiergen.models.text import grammar_from_text

        try:
            return grammar_from_text(text)
        except GrammarSyntaxError as exc:
            err = GrammarSyntaxError(f"{path}: {exc.args[0]}")
            err.line, err.column = exc.line, exc.column
            raise err from exc
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from exc
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: malformed YAML{where}: {exc}") from exc
    return grammar_from_dict(data, source=str(path))


__all__ = ["grammar_to_dict", "grammar_from_dict", "save_grammar", "load_grammar", "FORMAT", "VERSION"]
