"""The backend comparison table and the ``hiergen compare`` command."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from hiergen import RHM
from hiergen.cli import main
from hiergen.inference.compare import compare_backends, format_comparison, save_comparison
from hiergen.models.errors import BackendError
from hiergen.models.noise import UniformCorruption

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module")
def problem():
    g = RHM(v=4, n_classes=2, m=2, s=2, L=3, seed=0)
    x = g.sample(6, seed=1)
    return g, x, UniformCorruption(4).evidence(x.leaves, 0.4, seed=2)


def test_compare_table(problem, tmp_path):
    g, x, ev = problem
    df = compare_backends(g, ev, ["bp", "pgmpy", "numpyro", "meanfield-vi", "bruteforce"],
                          truth=x.labels)
    assert list(df["backend"]) == ["bp", "pgmpy", "numpyro", "meanfield-vi", "bruteforce"]
    for col in ["seconds", "max_abs_dmarginal", "abs_dlog_evidence", "class_accuracy",
                "bp_class_accuracy", "kind", "error"] + [f"dmarginal_level_{lev}" for lev in range(4)]:
        assert col in df.columns
    rows = df.set_index("backend")
    assert rows.loc["bp", "max_abs_dmarginal"] == 0.0
    for name in ("pgmpy", "numpyro", "bruteforce"):
        assert rows.loc[name, "max_abs_dmarginal"] < 1e-8
        assert rows.loc[name, "abs_dlog_evidence"] < 1e-8
        assert rows.loc[name, "class_accuracy"] == rows.loc["bp", "class_accuracy"]
    assert rows.loc["meanfield-vi", "kind"] == "approximate"
    assert rows.loc["meanfield-vi", "max_abs_dmarginal"] > 1e-6  # VI's error is shown
    assert (df["seconds"] > 0).all()
    acc = (np.asarray(rows.loc["bp", "class_accuracy"]))
    assert 0 <= acc <= 1 and rows.loc["bp", "target"] == "truth"
    text = format_comparison(df)
    assert "meanfield-vi" in text and "max_abs_dmarginal" in text
    paths = save_comparison(df, tmp_path, meta={"eps": 0.4})
    data = json.loads(paths["json"].read_text())
    assert data["meta"] == {"eps": 0.4} and len(data["rows"]) == 5
    assert paths["csv"].read_text().startswith("backend,kind,seconds")


def test_compare_records_refusals_and_rejects_unknown(problem):
    g, x, ev = problem
    df = compare_backends(g, ev, ["bp", "pgmpy"], options={"pgmpy": {"max_table_size": 10}})
    row = df.set_index("backend").loc["pgmpy"]
    assert row["error"].startswith("SizeLimitError") and np.isnan(row["max_abs_dmarginal"])
    assert df.set_index("backend").loc["bp", "target"] == "bp-argmax"
    with pytest.raises(BackendError, match=r"unknown backend\(s\) \['gpt'\].*numpyro"):
        compare_backends(g, ev, ["bp", "gpt"])


def test_cli_compare(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--v", "4", "--m", "2", "--s", "2", "--L", "2", "--n-classes", "2",
               "--n", "4", "--eps", "0.3", "--backends", "bp,pgmpy,meanfield-vi,bruteforce",
               "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "pgmpy" in text and "meanfield-vi" in text
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["backend"] for r in rows] == ["bp", "pgmpy", "meanfield-vi", "bruteforce"]
    assert rows[1]["max_abs_dmarginal"] < 1e-8


def test_cli_compare_bad_input(capsys):
    assert main(["compare", "--backends", "bp,nope"]) == 2
    assert "unknown backend(s) ['nope']" in capsys.readouterr().err
    assert main(["compare", "--eps", "1.5", "--backends", "bp"]) == 2
    assert "--eps" in capsys.readouterr().err


def test_facade_exports_registry_and_compare():
    import hiergen.inference as inf

    assert callable(inf.run) and callable(inf.compare_backends)
    assert {"bp", "pgmpy", "numpyro", "mcmc", "meanfield-vi"} <= set(inf.available_backends())
