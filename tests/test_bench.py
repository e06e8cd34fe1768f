"""The benchmark machinery runs and reports sane figures (no timing assertions)."""

from __future__ import annotations

import json

from hiergen.cli import main as cli_main


def test_bench_cli_prints_table_and_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = cli_main(["bench", "bp", "--backends", "numpy,torch", "--depths", "3", "--batch", "16",
                   "--v", "8", "--m", "2", "--n-classes", "4", "--repeats", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "samples/s" in text
    data = json.loads(out.read_text())
    assert {r["backend"] for r in data["results"]} == {"numpy", "torch"}
    for r in data["results"]:
        assert r["samples_per_s"] > 0 and r["L"] == 3 and r["peak_mem_mb"] >= 0
    assert data["machine"]["cpu_count"] >= 1


def test_benchmark_example_reduced(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "benchmark_bp.py"
    spec = importlib.util.spec_from_file_location("benchmark_bp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--out", str(tmp_path), "--backends", "numpy", "--depths", "4",
                     "--batch", "32", "--repeats", "1"]) == 0
    assert (tmp_path / "bench_bp.png").stat().st_size > 0
    assert json.loads((tmp_path / "bench_bp.json").read_text())["results"][0]["L"] == 4
