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
import math
from pathlib import Path
from typing import Any

import numpy as np

from hiergen.models.errors import ConfigError, GrammarError, SizeLimitError
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


_KNOWN_FIELDS = (
    "format",
    "version",
    "type",
    "params",
    "vocab_sizes",
    "branching",
    "rules",
    "rule_probs",
    "root_prior",
    "symbol_names",
    "allow_unreachable",
)
_RHM_PARAMS = ("v", "n_classes", "m", "s", "L", "seed")


def _show(value: Any) -> str:
    """A value as the document spells it (JSON style), cut short, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value if len(value) <= 40 else value[:37] + "...")
        return f"the string {text}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__}"


class _Doc:
    """Type checks of a grammar document; errors name the source and the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> GrammarError:
        return GrammarError(f"{self.source}: {path}: {message}")

    def int_(self, value: Any, path: str, minimum: int | None = None) -> int:
        if type(value) is not int:  # bools, floats and strings are refused
            raise self.fail(path, f"expected an integer, got {_show(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(path, f"expected an integer >= {minimum}, got {value}")
        return value

    def number(self, value: Any, path: str) -> float:
        if type(value) not in (int, float):
            raise self.fail(path, f"expected a number, got {_show(value)}")
        if not math.isfinite(value) or value < 0:
            raise self.fail(path, f"expected a finite probability >= 0, got {_show(value)}")
        return value

    def list_(self, value: Any, path: str, what: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected {what}, got {_show(value)}")
        return value

    def int_list(self, value: Any, path: str, minimum: int | None = None) -> list[int]:
        items = self.list_(value, path, "a list of integers")
        return [self.int_(x, f"{path}[{i}]", minimum) for i, x in enumerate(items)]

    def prob_list(self, value: Any, path: str) -> list[float]:
        items = self.list_(value, path, "a list of probabilities")
        return [self.number(x, f"{path}[{i}]") for i, x in enumerate(items)]

    def rules(self, value: Any) -> None:
        levels = self.list_(value, "rules", "a list (one entry per level)")
        for lev, per_symbol in enumerate(levels):
            symbols = self.list_(per_symbol, f"rules[{lev}]", "a list (one entry per parent symbol)")
            for a, tuples in enumerate(symbols):
                rows = self.list_(tuples, f"rules[{lev}][{a}]", "a list of child tuples")
                for r, t in enumerate(rows):
                    self.int_list(t, f"rules[{lev}][{a}][{r}]")

    def rule_probs(self, value: Any) -> None:
        if value is None:
            return
        levels = self.list_(value, "rule_probs", "null or a list (one entry per level)")
        for lev, per_symbol in enumerate(levels):
            if per_symbol is None:
                continue
            symbols = self.list_(per_symbol, f"rule_probs[{lev}]", "null or a list (one entry per symbol)")
            for a, p in enumerate(symbols):
                self.prob_list(p, f"rule_probs[{lev}][{a}]")

    def names(self, value: Any) -> None:
        if value is None:
            return
        levels = self.list_(value, "symbol_names", "null or a list (one list of names per level)")
        for lev, names in enumerate(levels):
            for i, name in enumerate(self.list_(names, f"symbol_names[{lev}]", "a list of names")):
                if not isinstance(name, str):
                    raise self.fail(f"symbol_names[{lev}][{i}]", f"expected a string, got {_show(name)}")

    def params(self, value: Any) -> dict[str, int]:
        if not isinstance(value, dict):
            raise GrammarError(f"{self.source}: field 'params' must be a mapping, got {_show(value)}")
        if set(value) != set(_RHM_PARAMS):
            raise GrammarError(
                f"{self.source}: field 'params' must have the keys {sorted(_RHM_PARAMS)}, "
                f"got {sorted(map(str, value))}"
            )
        return {k: self.int_(value[k], f"params.{k}", 0) for k in _RHM_PARAMS}


def _validate_document(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Check every field's type (strictly: no strings for numbers, no bools for ints).

    Returns the fields with defaults filled in; raises GrammarError naming the field path.
    """
    doc = _Doc(source)
    unknown = [k for k in data if k not in _KNOWN_FIELDS]
    if unknown:
        raise GrammarError(
            f"{source}: unknown field(s) {', '.join(repr(k) for k in unknown)} "
            f"(known: {', '.join(_KNOWN_FIELDS)})"
        )
    fmt = _field(data, "format", source)
    if fmt != FORMAT:
        raise GrammarError(f"{source}: field 'format' is {_show_raw(fmt)}, expected {FORMAT!r}")
    version = _field(data, "version", source)
    if type(version) is not int or not 1 <= version <= VERSION:
        raise GrammarError(
            f"{source}: field 'version' is {_show_raw(version)}; this hiergen reads versions 1..{VERSION}"
        )
    kind = data.get("type", "Grammar")
    if kind not in ("Grammar", "RHM") or not isinstance(kind, str):
        raise GrammarError(f"{source}: field 'type' is {_show_raw(kind)}, expected 'Grammar' or 'RHM'")
    for key in ("vocab_sizes", "branching", "rules"):
        value = _field(data, key, source)
        if not isinstance(value, list) and not (key == "branching" and type(value) is int):
            raise GrammarError(f"{source}: field {key!r} must be a list, got {_show(value)}")
    doc.int_list(data["vocab_sizes"], "vocab_sizes", 1)
    if isinstance(data["branching"], list):
        doc.int_list(data["branching"], "branching", 1)
    else:
        doc.int_(data["branching"], "branching", 1)
    doc.rules(data["rules"])
    doc.rule_probs(data.get("rule_probs"))
    prior = data.get("root_prior")
    if prior is not None:
        doc.prob_list(prior, "root_prior")
    doc.names(data.get("symbol_names"))
    allow = data.get("allow_unreachable")
    if allow is not None and not isinstance(allow, bool):
        raise GrammarError(
            f"{source}: field 'allow_unreachable' must be true or false, got {_show(allow)}"
        )
    out = {k: data.get(k) for k in _KNOWN_FIELDS}
    out["type"] = kind
    if kind == "RHM":
        out["params"] = doc.params(_field(data, "params", source))
    elif "params" in data:
        raise GrammarError(f"{source}: field 'params' is only allowed with type 'RHM'")
    return out


def _show_raw(value: Any) -> str:
    """repr for short scalars (as older messages spelled them), else :func:`_show`."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and len(repr(value)) <= 40:
        return repr(value)
    return _show(value)


def grammar_from_dict(data: Any, source: str = "grammar dict") -> Grammar:
    """Rebuild a grammar from :func:`grammar_to_dict` output.

    The whole document is validated first, strictly: every field has its JSON type (no
    strings for numbers, no bools for integers, unknown fields refused), and every error
    is a GrammarError naming ``source`` (e.g. the file path) and the field path, e.g.
    ``g.json: rules[1][3][0][1]: expected an integer, got the string "a"``. Sizes beyond
    the limits of :mod:`hiergen.models.grammar` raise SizeLimitError.
    """
    if not isinstance(data, dict):
        raise GrammarError(f"{source}: expected a mapping with a grammar, got {_show(data)}")
    fields = _validate_document(data, source)
    try:
        if fields["type"] == "RHM":
            return _rhm_from_fields(fields, source)
        return Grammar(
            fields["vocab_sizes"],
            fields["branching"],
            fields["rules"],
            fields["rule_probs"],
            root_prior=fields["root_prior"],
            symbol_names=fields["symbol_names"],
            allow_unreachable=bool(fields["allow_unreachable"]),
        )
    except (GrammarError, SizeLimitError) as exc:
        if str(exc).startswith(source):
            raise
        raise type(exc)(f"{source}: {exc}") from exc


def _rhm_from_fields(fields: dict[str, Any], source: str) -> Grammar:
    """The RHM of a validated document (its rules must be the params' regular arrays)."""
    from hiergen.models.rhm import RHM

    params = fields["params"]
    rhm_rules = []
    for lev, r in enumerate(fields["rules"]):
        try:
            arr = np.asarray(r, dtype=np.int64)
        except (ValueError, TypeError, OverflowError) as exc:
            raise GrammarError(f"{source}: rules[{lev}] is not a regular integer array") from exc
        rhm_rules.append(arr)
    grammar: Grammar = RHM(**params, _rules=rhm_rules)
    vocab, branching = fields["vocab_sizes"], fields["branching"]
    if isinstance(branching, int):
        branching = [branching] * grammar.L
    if list(grammar.vocab_sizes) != vocab or list(grammar.branching) != branching:
        raise GrammarError(
            f"{source}: fields 'vocab_sizes'/'branching' ({vocab}, {branching}) do not match "
            f"the RHM params {params}"
        )
    probs = fields["rule_probs"]
    if probs is not None and any(p is not None for p in probs):
        raise GrammarError(f"{source}: an RHM has equiprobable rules; 'rule_probs' must be null")
    if fields["root_prior"] is not None or fields["symbol_names"] is not None:
        raise GrammarError(f"{source}: an RHM has no 'root_prior' or 'symbol_names'")
    if fields["allow_unreachable"] is False:
        raise GrammarError(f"{source}: an RHM allows unreachable symbols; 'allow_unreachable' must be true")
    return grammar


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
        except (RecursionError, ValueError) as exc:  # nesting too deep, integer too long
            raise ConfigError(f"{path}: unreadable JSON: {exc}") from exc
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: malformed YAML{where}: {exc}") from exc
        except (RecursionError, ValueError, TypeError) as exc:  # nesting too deep, odd values
            raise ConfigError(f"{path}: unreadable YAML: {exc}") from exc
    return grammar_from_dict(data, source=str(path))


__all__ = ["grammar_to_dict", "grammar_from_dict", "save_grammar", "load_grammar", "FORMAT", "VERSION"]
