"""Backend comparisons over a grid of problems (hiergen.experiments.compare_sweep) and
``hiergen compare`` with comma lists: the oracle is ``compare_backends`` run directly on each
problem; the point store (exact round trip, resume, refused configurations) and bad input.
The Dask side is in test_distributed_compare.py."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from hiergen import RHM
from hiergen.cli import main
from hiergen.experiments.compare_sweep import (
    ROW_ATTR,
    compare_point,
    point_row,
    sweep_compare,
)
from hiergen.experiments.store import PointStore
from hiergen.inference.compare import compare_backends
from hiergen.models.errors import BackendError, ConfigError, GrammarError
from hiergen.models.noise import UniformCorruption

warnings.filterwarnings("ignore", category=FutureWarning)

GRAMMAR = {"v": 4, "n_classes": 2, "m": 2, "s": 2, "L": 2}
EPS = [0.3, 0.7]
SEEDS = [0, 3]
# bruteforce with max_trees=1 refuses every problem: a row with its error and NaN scores
BACKENDS = ["bp", "pgmpy", "meanfield-vi", "bruteforce"]
OPTIONS = {"bruteforce": {"max_trees": 1}, "pgmpy": {"algorithm": "ve"}}
SMALL = {"n": 4, "options": OPTIONS, "progress": False}


def oracle(eps, seed):
    """``compare_backends`` on the problem drawn as ``hiergen compare`` draws it."""
    rhm = RHM(**GRAMMAR, seed=seed)
    data = rhm.sample(4, seed=seed + 1)
    ev = UniformCorruption(GRAMMAR["v"]).evidence(data.leaves, eps, seed=seed + 2)
    opts = {**OPTIONS, "meanfield-vi": {"seed": seed}}
    return compare_backends(rhm, ev, BACKENDS, truth=data.labels, options=opts, progress=False)


def without_seconds(df):
    return df.drop(columns=["seconds"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def serial():
    return sweep_compare(GRAMMAR, EPS, SEEDS, BACKENDS, **SMALL)


def test_rows_equal_compare_backends_on_each_problem(serial):
    assert list(serial.columns[:3]) == ["eps", "seed", "backend"]
    assert len(serial) == len(EPS) * len(SEEDS) * len(BACKENDS)
    k = 0
    for eps in EPS:
        for seed in SEEDS:
            want = oracle(eps, seed)
            got = serial.iloc[k:k + len(BACKENDS)]
            k += len(BACKENDS)
            assert (got["eps"] == eps).all() and (got["seed"] == seed).all()
            got = got.drop(columns=["eps", "seed"])
            assert list(got.columns) == list(want.columns)
            pd.testing.assert_frame_equal(without_seconds(got), without_seconds(want))
    rows = serial.set_index(["eps", "seed", "backend"])
    refused = rows.xs("bruteforce", level="backend")
    assert refused["error"].str.startswith("SizeLimitError").all()
    assert refused["max_abs_dmarginal"].isna().all() and refused["seconds"].isna().all()
    assert (rows.xs("bp", level="backend")["error"] == "").all()
    assert (rows.xs("pgmpy", level="backend")["max_abs_dmarginal"] < 1e-8).all()
    assert (rows.xs("meanfield-vi", level="backend")["max_abs_dmarginal"] > 1e-6).all()
    assert serial.attrs["points_computed"] == len(serial) and serial.attrs["points_reused"] == 0


def test_a_point_round_trips_exactly_through_the_store(tmp_path):
    params = {**GRAMMAR, "n": 4, "eps": 0.3, "seed": 0, "backend": "bruteforce",
              "options": {"max_trees": 1}}
    ds = compare_point(params)
    store = PointStore(tmp_path, {"kind": "test"})
    store.save("p", ds)
    back = store.load("p")
    assert back.attrs[ROW_ATTR] == ds.attrs[ROW_ATTR]
    row = point_row(back)
    assert math.isnan(row["max_abs_dmarginal"]) and math.isnan(row["seconds"])
    assert row["backend"] == "bruteforce" and row["target"] == "truth" and row["n_items"] == 4
    ok = compare_point({**params, "backend": "meanfield-vi", "options": {"seed": 0}})
    store.save("q", ok)
    row = point_row(store.load("q"))
    assert row["error"] == "" and row == point_row(ok)
    assert row["seconds"] == ok.attrs["seconds"] > 0


def test_store_rerun_reuses_every_point_and_a_larger_grid_the_shared_ones(serial, tmp_path):
    first = sweep_compare(GRAMMAR, EPS, SEEDS, BACKENDS, **SMALL, out=tmp_path)
    pd.testing.assert_frame_equal(without_seconds(first), without_seconds(serial))
    again = sweep_compare(GRAMMAR, EPS, SEEDS, BACKENDS, **SMALL, out=tmp_path)
    assert again.attrs["points_computed"] == 0 and again.attrs["points_reused"] == len(first)
    pd.testing.assert_frame_equal(again, first)  # the stored timings too
    assert len(list((tmp_path / "points").glob("*.nc"))) == len(first)
    bigger = sweep_compare(GRAMMAR, [0.3, 0.5, 0.7], SEEDS, ["bp", "pgmpy"], **SMALL, out=tmp_path)
    assert bigger.attrs["points_reused"] == 2 * 2 * 2 and bigger.attrs["points_computed"] == 2 * 2
    assert list(bigger["eps"].unique()) == [0.3, 0.5, 0.7]
    shared = bigger[bigger["eps"] != 0.5].reset_index(drop=True)
    pd.testing.assert_frame_equal(shared, first[first["backend"].isin(["bp", "pgmpy"])]
                                  .reset_index(drop=True))


@pytest.mark.parametrize(("change", "match"), [
    ({"n": 5}, "differs in: n"),
    ({"options": {"bruteforce": {"max_trees": 2}}}, "differs in: options"),
    ({"rhm": {**GRAMMAR, "m": 1}}, "differs in: m"),
])
def test_changed_configuration_is_refused(tmp_path, change, match):
    sweep_compare(GRAMMAR, [0.3], [0], ["bp"], **SMALL, out=tmp_path)
    kw = {**SMALL, **{k: v for k, v in change.items() if k != "rhm"}}
    with pytest.raises(ConfigError, match=match):
        sweep_compare(change.get("rhm", GRAMMAR), [0.3], [0], ["bp"], **kw, out=tmp_path)


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"backends": ["bp", "gpt"]}, BackendError, r"unknown backend\(s\) \['gpt'\]; available: .*pgmpy"),
    ({"backends": []}, ConfigError, "at least one backend"),
    ({"backends": ["bp", "bp"]}, ConfigError, "distinct"),
    ({"eps_values": [0.2, 1.5]}, ConfigError, r"eps must be in \[0, 1\], got 1.5"),
    ({"eps_values": [float("nan")]}, ConfigError, r"eps must be in \[0, 1\]"),
    ({"eps_values": ["a"]}, ConfigError, "eps values must be numbers"),
    ({"eps_values": []}, ConfigError, "at least one eps"),
    ({"eps_values": 0.3}, ConfigError, "eps_values must be a list"),
    ({"seeds": []}, ConfigError, "at least one seed"),
    ({"seeds": [-1]}, ConfigError, "seed must be >= 0"),
    ({"seeds": [1.0]}, ConfigError, "seed must be an integer"),
    ({"n": 0}, ConfigError, "n must be >= 1"),
    ({"rhm_params": {**GRAMMAR, "m": 9}}, GrammarError, "infeasible RHM"),
    ({"rhm_params": {"v": 4, "m": 2, "s": 2, "L": 2}}, GrammarError, r"missing \['n_classes'\]"),
    ({"rhm_params": {**GRAMMAR, "depth": 3}}, GrammarError, r"unknown \['depth'\]"),
    ({"rhm_params": {**GRAMMAR, "L": 0}}, GrammarError, "RHM L must be >= 1"),
    ({"options": {"gpt": {}}}, BackendError, "options for unknown backend"),
    ({"options": {"mcmc": {"x": object()}}}, ConfigError, "JSON-able"),
    ({"scheduler": "nowhere"}, ConfigError, "scheduler"),
])
def test_bad_input_is_refused_before_anything_runs(tmp_path, monkeypatch, change, error, match):
    import hiergen.experiments.compare_sweep as cs

    def boom(*a, **k):
        raise AssertionError("a point ran")

    monkeypatch.setattr(cs, "compare_point", boom)
    kw = {"rhm_params": GRAMMAR, "eps_values": [0.3], "seeds": [0], "backends": ["bp"],
          "n": 4, "progress": False, "out": tmp_path / "out", **change}
    with pytest.raises(error, match=match):
        sweep_compare(**kw)
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        sweep_compare(GRAMMAR, [0.3], [0], ["bp"], n=4, out=f, progress=False)


def test_cli_grid_writes_table_files_and_store_and_resumes(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--L", "2", "--n", "4", "--eps", "0.2,0.6", "--seed", "0,1",
            "--backends", "bp,pgmpy", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "eps in 0.2,0.6, seeds 0,1" in text and "points: 8 computed, 0 reused" in text
    header = next(line for line in text.splitlines() if "backend" in line).split()
    assert header[:3] == ["eps", "seed", "backend"]
    data = json.loads((out / "comparison.json").read_text())
    assert data["meta"]["eps"] == [0.2, 0.6] and data["meta"]["seed"] == [0, 1]
    rows = data["rows"]
    assert [(r["eps"], r["seed"], r["backend"]) for r in rows] == [
        (e, s, b) for e in (0.2, 0.6) for s in (0, 1) for b in ("bp", "pgmpy")]
    assert all(r["max_abs_dmarginal"] < 1e-8 and r["error"] == "" for r in rows)
    assert (out / "comparison.csv").read_text().startswith("eps,seed,backend,kind,seconds")
    assert len(list((out / "points").glob("*.nc"))) == 8
    assert json.loads((out / "config.json").read_text())["kind"] == "backend-comparison"
    # the CLI's numbers are the library's
    api = sweep_compare({**GRAMMAR}, [0.2, 0.6], [0, 1], ["bp", "pgmpy"], n=4, progress=False,
                        options={"numpyro-sample": {"num_samples": 500},
                                 "mcmc": {"num_samples": 500}}, out=out)
    assert api.attrs["points_reused"] == 8
    np.testing.assert_allclose(api["max_abs_dmarginal"], [r["max_abs_dmarginal"] for r in rows],
                               rtol=1e-9, atol=0)
    assert main(argv) == 0
    assert "points: 0 computed, 8 reused" in capsys.readouterr().out


def test_cli_single_problem_prints_todays_table(capsys):
    assert main(["compare", "--L", "2", "--n", "4", "--eps", "0.3", "--seed", "2",
                 "--backends", "bp,meanfield-vi"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("4 items, uniform corruption eps=0.3")
    assert lines[1].split()[:3] == ["backend", "kind", "seconds"]
    assert lines[2].split()[0] == "bp" and lines[3].split()[0] == "meanfield-vi"


@pytest.mark.parametrize(("argv", "match"), [
    (["--eps", "0.2,x"], "--eps must be a comma list of floats"),
    (["--eps", ","], "--eps needs at least one value"),
    (["--eps", "0.2,1.2"], r"--eps must be in \[0, 1\], got 1.2"),
    (["--seed", "0,1.5"], "--seed must be a comma list of ints"),
    (["--seed", "0,0"], "seed values must be distinct"),
    (["--workers", "2"], "n_workers applies to a local scheduler"),
])
def test_cli_bad_lists(argv, match, capsys):
    import re

    assert main(["compare", "--backends", "bp", *argv]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_torch_and_jax_eps_are_validated_like_numpy():
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    kw = {"rhm_params": GRAMMAR, "seeds": [0], "backends": ["bp"], "n": 4, "progress": False}
    ref = sweep_compare(eps_values=[0.25], **kw).drop(columns="seconds")
    got = sweep_compare(eps_values=torch.tensor([0.25], dtype=torch.float64), **kw)
    assert got.drop(columns="seconds").equals(ref)
    for bad in (torch.tensor([0.3, float("nan")]), jnp.asarray([1.5])):
        with pytest.raises(ConfigError, match=r"eps must be in \[0, 1\], got (nan|1\.5)$"):
            sweep_compare(eps_values=bad, **kw)
