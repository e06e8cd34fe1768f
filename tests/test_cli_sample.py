"""``hiergen sample`` and ``hiergen grammar info/convert``, run in-process."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hiergen.cli import main
from hiergen.models.grammar import Grammar
from hiergen.models.rhm import RHM
from hiergen.models.serialize import load_grammar

RHM_ARGS = ["--v", "8", "--n-classes", "4", "--m", "2", "--s", "2", "--L", "3", "--seed", "0"]


def test_sample_rhm_json(tmp_path, capsys):
    rc = main(["sample", *RHM_ARGS, "--n", "5", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "RHM(v=8, n_classes=4, m=2, s=2, L=3, seed=0)" in out
    g = RHM(8, 4, 2, 2, 3, seed=0)
    ref = g.sample(5, seed=0)
    data = json.loads((tmp_path / "samples.json").read_text())
    np.testing.assert_array_equal(data["leaves"], ref.leaves)
    np.testing.assert_array_equal(data["labels"], ref.labels)
    assert [np.asarray(x).shape for x in data["symbols"]] == [(5, 1), (5, 2), (5, 4), (5, 8)]
    assert f"[0] class {ref.labels[0]}: " + " ".join(map(str, ref.leaves[0])) in out
    assert load_grammar(tmp_path / "grammar.json") == g
    assert (tmp_path / "tree.png").read_bytes()[:4] == b"\x89PNG"


def test_sample_text_grammar_npz(tmp_path, capsys):
    src = tmp_path / "faces.grammar"
    src.write_text(
        "level 0: face house\nface -> eye eye | eye nose\nhouse -> wall door\n"
        "level 1: eye nose wall door\neye -> dark light\nnose -> light light\n"
        "wall -> dark dark\ndoor -> light dark\nlevel 2: dark light\n"
    )
    rc = main(["sample", "--grammar", str(src), "--n", "4", "--sample-seed", "3", "--class", "1",
               "--format", "npz", "--out", str(tmp_path / "o")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[0] class house: dark dark light dark" in out  # house -> wall door, deterministic
    with np.load(tmp_path / "o" / "samples.npz") as z:
        np.testing.assert_array_equal(z["labels"], 1)
        np.testing.assert_array_equal(z["leaves"], Grammar.from_text(src.read_text()).sample(4, seed=3, classes=1).leaves)
        assert z["symbols_1"].shape == (4, 2)


def test_sample_without_out_prints_only(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", *RHM_ARGS, "--n", "12", "--show", "3"]) == 0
    out = capsys.readouterr().out
    assert "[2] class" in out and "[3] class" not in out and "9 more" in out
    assert list(tmp_path.iterdir()) == []


def test_grammar_info_and_convert(tmp_path, capsys):
    g = RHM(4, 2, 2, 2, 2, seed=1)
    g.save(tmp_path / "g.yaml")
    assert main(["grammar", "info", str(tmp_path / "g.yaml"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["type"] == "RHM" and info["d"] == 4 and info["f"] == 0.5
    assert info["unambiguous"] is True
    assert int(info["n_data"]) == g.n_derivations() == 2 * g.n_data_per_class
    assert main(["grammar", "info", str(tmp_path / "g.yaml")]) == 0
    assert "n_data_per_class" in capsys.readouterr().out
    assert main(["grammar", "convert", str(tmp_path / "g.yaml"), str(tmp_path / "g.txt")]) == 0
    assert load_grammar(tmp_path / "g.txt") == g


def test_errors_exit_2(tmp_path, capsys):
    assert main(["sample", "--grammar", str(tmp_path / "missing.json")]) == 2
    assert "grammar file not found" in capsys.readouterr().err
    assert main(["sample", "--v", "2", "--n-classes", "3", "--m", "2", "--s", "2"]) == 2
    assert "infeasible RHM" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("level 0: a\na -> b\nlevel 1: c\n")
    assert main(["grammar", "info", str(bad)]) == 2
    assert "unknown symbol 'b' (line 2, column 6)" in capsys.readouterr().err
    assert main(["sample", *RHM_ARGS, "--n", "0"]) == 2


def test_grammar_info_deep_rhm_readable(tmp_path, capsys):
    # L = 13: n_data has 7399 digits (str() of it used to crash); L = 40: it used to hang
    g13 = RHM(32, 32, 8, 2, 13, seed=0)
    g13.save(tmp_path / "r13.json")
    assert main(["grammar", "info", str(tmp_path / "r13.json")]) == 0
    out = capsys.readouterr().out
    assert "n_data                  5.2e+7398 (exact: 7,399 digits)" in out
    assert "n_data_per_class        1.6e+7397 (exact: 7,398 digits)" in out  # 8**8191
    assert main(["grammar", "info", str(tmp_path / "r13.json"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_data"] == "5.2e+7398 (exact: 7,399 digits)"
    assert info["log10_n_data"] == pytest.approx(math.log10(32) + 8191 * math.log10(8), rel=1e-12)
    assert info["d"] == 8192

    RHM(32, 32, 8, 2, 40, seed=0).save(tmp_path / "r40.json")
    assert main(["grammar", "info", str(tmp_path / "r40.json"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    log10 = math.log10(32) + (2**40 - 1) * math.log10(8)
    assert info["log10_n_data"] == pytest.approx(log10, rel=1e-12)
    assert info["n_data"].endswith(f"(about {math.floor(log10) + 1:,} digits)")
    assert info["n_data_per_class"].startswith("6.5e+992957941624 ")
    assert info["d"] == 2**40 and info["pgmpy_table_entries"] > 10**16
    assert main(["grammar", "info", str(tmp_path / "r40.json")]) == 0
    out = capsys.readouterr().out
    assert "pgmpy_table_entries     1.8e+16 (exact: 17 digits)" in out
    assert "log10_n_data            9.92958e+11" in out


def test_grammar_info_small_counts_exact(tmp_path, capsys):
    g = Grammar.from_text("level 0: a\na -> x x | x y\nlevel 1: x y\nx -> p | q\ny -> p\nlevel 2: p q\n")
    g.save(tmp_path / "g.grammar")
    assert main(["grammar", "info", str(tmp_path / "g.grammar"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_data"] == "6" and info["log10_n_data"] == pytest.approx(math.log10(6))
    assert main(["grammar", "info", str(tmp_path / "g.grammar")]) == 0
    assert "  n_data               6 derivations (ambiguous grammar" in capsys.readouterr().out
