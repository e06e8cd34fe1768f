"""examples/custom_grammar.py runs in reduced size and writes its outputs."""

from __future__ import annotations

import json

import pytest

from conftest import load_example
from hiergen.models.grammar import Grammar


def test_custom_grammar_example(tmp_path, capsys):
    ex = load_example("custom_grammar")
    assert ex.main(["--out", str(tmp_path), "--n", "400", "--seed", "1"]) == 0
    assert (tmp_path / "tree.png").read_bytes()[:4] == b"\x89PNG"
    g = Grammar.load(tmp_path / "grammar.yaml")
    assert g == Grammar.from_text(ex.SCENES)
    data = json.loads((tmp_path / "samples.json").read_text())
    assert len(data["leaves"]) == 400 and len(data["leaves"][0]) == g.d == 8
    ref = g.sample(400, seed=1)
    assert data["leaves"] == ref.leaves.tolist()
    # every declared rule is reported, and frequent rules match their probability
    rows = data["rule_frequencies"]
    assert len(rows) == sum(int(nr.sum()) for nr in g.n_rules)
    for row in rows:
        if row["count"] >= 200:
            assert row["empirical"] == pytest.approx(row["declared"], abs=0.12)
    assert "sample 0:" in capsys.readouterr().out
