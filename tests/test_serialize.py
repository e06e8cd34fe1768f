"""JSON / YAML / text files: lossless round trips, RHM identity, clear errors."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import random_grammar
from hiergen.models.errors import ConfigError, GrammarError, GrammarSyntaxError, SizeLimitError
from hiergen.models.grammar import Grammar
from hiergen.models.rhm import RHM
from hiergen.models.serialize import (
    FORMAT,
    grammar_from_dict,
    grammar_to_dict,
    load_grammar,
    save_grammar,
)

SUFFIXES = [".json", ".yaml", ".yml", ".txt"]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_general_grammar(tmp_path, suffix, seed):
    g = random_grammar((3, 4, 3), (2, 3), max_rules=4, seed=seed)
    path = save_grammar(g, tmp_path / f"g{suffix}")
    back = load_grammar(path)
    assert back == g
    assert type(back) is Grammar
    assert back.allow_unreachable == g.allow_unreachable
    assert (back.root_prior == g.root_prior).all()  # bit-exact floats


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_round_trip_rhm(tmp_path, suffix):
    g = RHM(v=8, n_classes=4, m=3, s=2, L=3, seed=7)
    back = load_grammar(save_grammar(g, tmp_path / f"rhm{suffix}"))
    assert isinstance(back, RHM)
    assert back.params == g.params
    assert back == g
    assert back.f == g.f and back.n_data_per_class == g.n_data_per_class


def test_round_trip_named_via_methods(tmp_path):
    g = Grammar(
        (2, 2), 2, [[[(0, 1), (1, 0)], [(1, 1)]]], [[[0.25, 0.75], [1.0]]],
        root_prior=[0.1, 0.9], symbol_names=[["A", "B"], ["x", "y"]],
    )
    d = g.to_dict()
    assert d["format"] == FORMAT and d["version"] == 1 and d["type"] == "Grammar"
    assert json.loads(json.dumps(d)) == d  # plain JSON types only
    assert Grammar.from_dict(d) == g
    g.save(tmp_path / "g.yaml")
    assert Grammar.load(tmp_path / "g.yaml") == g
    assert yaml.safe_load((tmp_path / "g.yaml").read_text())["symbol_names"] == [["A", "B"], ["x", "y"]]


def test_uniform_fields_are_null():
    d = grammar_to_dict(RHM(4, 2, 2, 2, 2, seed=0))
    assert d["type"] == "RHM" and d["params"]["seed"] == 0
    assert d["rule_probs"] == [None, None] and d["root_prior"] is None


def test_names_differ_means_not_equal():
    g = random_grammar((2, 3), (2,), max_rules=2, seed=0)
    d = grammar_to_dict(g)
    d["symbol_names"] = [["a", "b"], ["x", "y", "z"]]
    assert grammar_from_dict(d) != g


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"grammar file not found: .*nope\.json"):
        load_grammar(tmp_path / "nope.json")


def test_unknown_suffix(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown grammar file type '\.pkl'"):
        save_grammar(RHM(4, 2, 2, 2, 2), tmp_path / "g.pkl")
    (tmp_path / "g.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match=r"g\.pkl: unknown grammar file type"):
        load_grammar(tmp_path / "g.pkl")


def test_malformed_json_and_yaml(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"format": "hiergen-grammar",\n "version": 1,,}')
    with pytest.raises(ConfigError, match=r"bad\.json: malformed JSON at line 2"):
        load_grammar(p)
    q = tmp_path / "bad.yaml"
    q.write_text("format: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: malformed YAML at line"):
        load_grammar(q)


def _write(tmp_path, data, name="g.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("field", ["format", "version", "vocab_sizes", "branching", "rules"])
def test_missing_field(tmp_path, field):
    d = grammar_to_dict(random_grammar((2, 3), (2,), max_rules=2, seed=0))
    del d[field]
    p = _write(tmp_path, d)
    with pytest.raises(GrammarError, match=rf"g\.json: missing field '{field}'"):
        load_grammar(p)


def test_bad_fields(tmp_path):
    base = grammar_to_dict(random_grammar((2, 3), (2,), max_rules=2, seed=0))
    cases = [
        ({"format": "other"}, r"field 'format' is 'other'"),
        ({"version": 99}, r"field 'version' is 99"),
        ({"type": "HMM"}, r"field 'type' is 'HMM'"),
        ({"rules": 5}, r"field 'rules' must be a list"),
        ({"allow_unreachable": "yes"}, r"field 'allow_unreachable' must be true or false"),
        ({"vocab_sizes": [2, 2]}, r"g\.json: level 0, symbol \d, rule \d: child symbol 2 out of range"),
        ({"root_prior": [0.5, 0.6]}, r"g\.json: root_prior must sum to 1"),
    ]
    for patch, match in cases:
        d = dict(base)
        d.update(patch)
        with pytest.raises(GrammarError, match=match):
            load_grammar(_write(tmp_path, d))
    with pytest.raises(GrammarError, match=r"expected a mapping"):
        load_grammar(_write(tmp_path, [1, 2]))


def test_bad_rhm_fields(tmp_path):
    base = grammar_to_dict(RHM(4, 2, 2, 2, 2, seed=0))
    d = dict(base, params={"v": 4})
    with pytest.raises(GrammarError, match=r"field 'params' must have the keys"):
        load_grammar(_write(tmp_path, d))
    d = dict(base, vocab_sizes=[2, 4, 4, 4])
    with pytest.raises(GrammarError, match=r"do not match the RHM params"):
        load_grammar(_write(tmp_path, d))
    d = dict(base, params=dict(base["params"], m=3))
    with pytest.raises(GrammarError, match=r"g\.json: "):
        load_grammar(_write(tmp_path, d))


def test_text_file_errors_name_path(tmp_path):
    p = tmp_path / "g.grammar"
    p.write_text("level 0: a\na -> x q\nlevel 1: x\n")
    with pytest.raises(GrammarSyntaxError, match=r"g\.grammar: unknown symbol 'q' \(line 2, column 8\)") as info:
        load_grammar(p)
    assert info.value.line == 2 and info.value.column == 8


_G = Grammar((2, 2), 2, [[[(0, 1), (1, 0)], [(1, 1)]]], [[[0.25, 0.75], [1.0]]], root_prior=[0.3, 0.7])


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"root_prior": "abc"}, r"root_prior: expected a list of probabilities, got the string \"abc\""),
        ({"root_prior": {"a": 1}}, r"root_prior: expected a list of probabilities, got a mapping"),
        ({"root_prior": ["0.3", 0.7]}, r"root_prior\[0\]: expected a number, got the string \"0.3\""),
        ({"root_prior": [True, 0.0]}, r"root_prior\[0\]: expected a number, got true"),
        ({"root_prior": [-0.5, 1.5]}, r"root_prior\[0\]: expected a finite probability >= 0, got -0.5"),
        ({"root_prior": [float("nan"), 1.0]}, r"root_prior\[0\]: expected a finite probability >= 0, got nan"),
        ({"root_prior": [0.5, 0.6]}, r"root_prior must sum to 1 \(tolerance 1e-06\), sums to 1.1"),
        ({"vocab_sizes": [2, "2"]}, r"vocab_sizes\[1\]: expected an integer, got the string \"2\""),
        ({"vocab_sizes": [2, True]}, r"vocab_sizes\[1\]: expected an integer, got true"),
        ({"vocab_sizes": [2, 2.0]}, r"vocab_sizes\[1\]: expected an integer, got 2.0"),
        ({"vocab_sizes": [2, 0]}, r"vocab_sizes\[1\]: expected an integer >= 1, got 0"),
        ({"branching": ["2"]}, r"branching\[0\]: expected an integer, got the string \"2\""),
        ({"branching": "2"}, r"field 'branching' must be a list, got the string \"2\""),
        ({"rules": [[[[0, "a"]], [[1, 1]]]]}, r"rules\[0\]\[0\]\[0\]\[1\]: expected an integer, got the string \"a\""),
        ({"rules": [[[0, 1], [[1, 1]]]]}, r"rules\[0\]\[0\]\[0\]: expected a list of integers, got 0"),
        ({"rules": [[[[0, 1]], "x"]]}, r"rules\[0\]\[1\]: expected a list of child tuples, got the string \"x\""),
        ({"rules": [{"a": 1}]}, r"rules\[0\]: expected a list \(one entry per parent symbol\), got a mapping"),
        ({"rule_probs": [[[0.25, "0.75"], [1.0]]]}, r"rule_probs\[0\]\[0\]\[1\]: expected a number, got the string \"0.75\""),
        ({"rule_probs": "none"}, r"rule_probs: expected null or a list"),
        ({"rule_probs": [[[0.25, 0.7], [1.0]]]}, r"level 0, symbol 0: rule probabilities sum to 0.95, not 1"),
        ({"symbol_names": [["a", "b"], ["c", 3]]}, r"symbol_names\[1\]\[1\]: expected a string, got 3"),
        ({"allow_unreachable": 1}, r"field 'allow_unreachable' must be true or false, got 1"),
        ({"version": True}, r"field 'version' is true"),
        ({"version": "1"}, r"field 'version' is '1'"),
        ({"type": ["RHM"]}, r"field 'type' is a list of 1 items, expected 'Grammar' or 'RHM'"),
        ({"params": {"v": 2}}, r"field 'params' is only allowed with type 'RHM'"),
        ({"extra": 1, "rulez": []}, r"unknown field\(s\) 'extra', 'rulez' \(known: format, version"),
    ],
)
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_strict_document_validation(tmp_path, patch, match, suffix):
    d = dict(grammar_to_dict(_G), **patch)
    if suffix == ".json":
        p = _write(tmp_path, d)
    else:
        p = tmp_path / "g.yaml"
        p.write_text(yaml.safe_dump(d))
    with pytest.raises(GrammarError, match=rf"g{suffix.replace('.', '[.]')}: " + match):
        load_grammar(p)


def test_strict_validation_accepts_the_written_form_and_an_int_branching():
    d = grammar_to_dict(_G)
    assert grammar_from_dict(d) == _G
    assert grammar_from_dict(dict(d, branching=2)) == _G


def test_yaml_only_types_are_refused(tmp_path):
    p = tmp_path / "g.yaml"
    text = yaml.safe_dump(grammar_to_dict(_G)).replace("- 0.3\n", "- 2001-12-14\n")
    assert "2001-12-14" in text
    p.write_text(text)
    with pytest.raises(GrammarError, match=r"root_prior\[0\]: expected a number, got a date"):
        load_grammar(p)


def test_rhm_params_strict(tmp_path):
    base = grammar_to_dict(RHM(4, 2, 2, 2, 2, seed=0))
    for patch, exc, match in [
        ({"m": "2"}, GrammarError, r"params\.m: expected an integer, got the string \"2\""),
        ({"v": True}, GrammarError, r"params\.v: expected an integer, got true"),
        ({"seed": -1}, GrammarError, r"params\.seed: expected an integer >= 0, got -1"),
        ({"L": 10**30}, SizeLimitError, r"g\.json: RHM depth L=1\.0e\+30 \(exact: 31 digits\) exceeds"),
    ]:
        d = dict(base, params=dict(base["params"], **patch))
        with pytest.raises(exc, match=match):
            load_grammar(_write(tmp_path, d))


def test_deeply_nested_or_huge_json_is_a_config_error(tmp_path):
    p = tmp_path / "g.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"g\.json: unreadable JSON"):
        load_grammar(p)
    p.write_text('{"format": "hiergen-grammar", "version": ' + "9" * 5000 + "}")
    with pytest.raises(ConfigError, match=r"g\.json: unreadable JSON"):
        load_grammar(p)
    q = tmp_path / "g.yaml"
    q.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises((ConfigError,), match=r"g\.yaml: (unreadable|malformed) YAML"):
        load_grammar(q)


def test_save_is_atomic_and_overwrites(tmp_path):
    p = save_grammar(_G, tmp_path / "sub" / "g.json")
    save_grammar(RHM(4, 2, 2, 2, 2), p)
    assert isinstance(load_grammar(p), RHM)
    assert sorted(x.name for x in p.parent.iterdir()) == ["g.json"]  # no temporary left behind
