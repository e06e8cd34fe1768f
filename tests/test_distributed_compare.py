"""Backend-comparison sweeps as Dask tasks: a LocalCluster of two worker processes gives the
serial run's table (all but the timings), through the store and from the CLI."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

distributed = pytest.importorskip("dask.distributed")

from hiergen.cli import main  # noqa: E402
from hiergen.experiments.compare_sweep import sweep_compare  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)

GRAMMAR = {"v": 4, "n_classes": 2, "m": 2, "s": 2, "L": 2}
GRID = {"eps_values": [0.2, 0.6], "seeds": [0, 1], "backends": ["bp", "pgmpy", "meanfield-vi"]}
OPTIONS = {"meanfield-vi": {"max_iter": 50}}


@pytest.fixture
def client(dask_client):
    return dask_client


@pytest.fixture(scope="module")
def serial():
    return sweep_compare(GRAMMAR, **GRID, n=4, options=OPTIONS, progress=False)


def same_but_seconds(a, b):
    pd.testing.assert_frame_equal(a.drop(columns=["seconds"]), b.drop(columns=["seconds"]))


@pytest.mark.slow
def test_two_worker_processes_match_serial_and_resume(client, serial, tmp_path):
    assert len(client.scheduler_info()["workers"]) == 2
    df = sweep_compare(GRAMMAR, **GRID, n=4, options=OPTIONS, progress=False, out=tmp_path,
                       scheduler=client)
    same_but_seconds(df, serial)
    assert df.attrs["points_computed"] == 12 and df.attrs["points_reused"] == 0
    assert len(list((tmp_path / "points").glob("*.nc"))) == 12  # the tasks wrote the points
    # a serial rerun on the store the workers filled: every point reused, same timings
    again = sweep_compare(GRAMMAR, **GRID, n=4, options=OPTIONS, progress=False, out=tmp_path)
    assert again.attrs["points_computed"] == 0 and again.attrs["points_reused"] == 12
    pd.testing.assert_frame_equal(again, df)


def test_cli_on_the_cluster_matches_serial(client, serial, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--L", "2", "--n", "4", "--eps", "0.2,0.6", "--seed", "0,1",
            "--backends", "bp,pgmpy", "--out", str(out),
            "--scheduler", client.scheduler.address]
    assert main(argv) == 0
    assert "points: 8 computed, 0 reused" in capsys.readouterr().out
    table = pd.read_csv(out / "comparison.csv", keep_default_na=False)
    want = serial[serial["backend"].isin(["bp", "pgmpy"])].reset_index(drop=True)
    want = want.drop(columns=[c for c in want.columns if c not in table.columns])
    same_but_seconds(table, want)
    assert json.loads((out / "comparison.json").read_text())["meta"]["scheduler"].startswith("tcp://")
