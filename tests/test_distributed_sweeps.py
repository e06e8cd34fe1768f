"""Forward-backward sweeps as Dask tasks (hiergen.experiments.distributed): a LocalCluster of
two worker processes gives the serial run's numbers, survives a killed worker and resumes."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("dask.distributed")

from hiergen.cli import main  # noqa: E402
from hiergen.experiments.store import PointStore  # noqa: E402
from hiergen.experiments.sweeps import RESULT_FILE, sweep_forward_backward  # noqa: E402
from hiergen.models.errors import ConfigError  # noqa: E402

RHM = {"v": 8, "n_classes": 8, "m": 4, "s": 2}
SMALL = {"depths": [2, 3], "seeds": [0, 5], "times": np.linspace(0.0, 400.0, 4),
         "n_samples": 300, "progress": False}


@pytest.fixture
def client(dask_client):
    return dask_client


@pytest.fixture(scope="module")
def serial():
    return sweep_forward_backward(RHM, **SMALL)


def assert_same_numbers(a, b):
    """Every variable but the timings, bit for bit (NaN beyond a depth's levels)."""
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for k in a.data_vars:
        if k != "seconds":
            np.testing.assert_array_equal(a[k].values, b[k].values, err_msg=k)
    for c in a.coords:
        np.testing.assert_array_equal(a[c].values, b[c].values)


def test_two_worker_processes_match_serial(client, serial, tmp_path):
    assert len(client.scheduler_info()["workers"]) == 2
    ds = sweep_forward_backward(RHM, **SMALL, out=tmp_path, scheduler=client)
    assert_same_numbers(serial, ds)
    n = 2 * 2 * 4
    assert ds.attrs["points_computed"] == n and ds.attrs["points_reused"] == 0
    # the tasks wrote the points; the driver wrote the same numbers to the result file
    assert len(list(PointStore(tmp_path, _config(tmp_path)).keys())) == n
    import xarray as xr

    with xr.open_dataset(tmp_path / RESULT_FILE, engine="h5netcdf") as f:
        assert_same_numbers(serial, f.load())
    # both workers computed points (the worker caches hold groups of this sweep)
    held = client.run(_cached_groups)
    assert sum(1 for v in held.values() if v) == 2


def _cached_groups():
    from hiergen.experiments import distributed as d

    return len(d._RUNNERS)


def _config(out):
    import json

    return json.loads((out / "config.json").read_text())


def test_rerun_resumes_and_extends(client, serial, tmp_path):
    first = sweep_forward_backward(RHM, **{**SMALL, "depths": [2]}, out=tmp_path, scheduler=client)
    assert first.attrs["points_computed"] == 8
    ds = sweep_forward_backward(RHM, **SMALL, out=tmp_path, scheduler=client)
    assert ds.attrs["points_reused"] == 8 and ds.attrs["points_computed"] == 8
    assert_same_numbers(serial, ds)
    # a serial rerun finds everything done
    again = sweep_forward_backward(RHM, **SMALL, out=tmp_path)
    assert again.attrs["points_computed"] == 0
    assert_same_numbers(serial, again)


def kill_a_worker_after(client, points, n_done: int) -> tuple[threading.Thread, dict]:
    """A started thread that SIGKILLs one worker of ``client`` once ``n_done`` point files are
    in ``points``; its dict gets ``pid`` and ``done_at_kill``."""
    pids_before = client.run(os.getpid)
    killed: dict = {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = len(list(points.glob("*.nc"))) if points.is_dir() else 0
            if done >= n_done:
                killed["done_at_kill"] = done
                killed["pid"] = next(iter(pids_before.values()))
                os.kill(killed["pid"], signal.SIGKILL)
                return
            time.sleep(0.02)

    th = threading.Thread(target=killer)
    th.start()
    return th, killed


def test_killed_worker_still_gives_serial_numbers(client, tmp_path):
    kw = {"depths": [4, 5], "seeds": [1], "times": np.linspace(0.0, 300.0, 10),
          "n_samples": 400, "progress": False}
    reference = sweep_forward_backward(RHM, **kw)
    th, killed = kill_a_worker_after(client, tmp_path / "points", 2)
    ds = sweep_forward_backward(RHM, **kw, out=tmp_path, scheduler=client)
    th.join()
    assert killed and killed["done_at_kill"] < 20, "the worker was not killed mid-way"
    assert_same_numbers(reference, ds)
    assert ds.attrs["points_computed"] + ds.attrs["points_reused"] == 20
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert killed["pid"] not in client.run(os.getpid).values()


def test_cli_forward_backward_on_a_scheduler_address(client, serial, tmp_path, capsys):
    address = client.scheduler.address
    code = main(["forward-backward", "--out", str(tmp_path), "--v", "8", "--n-classes", "8",
                 "--m", "4", "--s", "2", "--depths", "2,3", "--seeds", "0,5",
                 "--times", "0:400:4", "--n-samples", "300", "--no-plots", "--no-progress",
                 "--scheduler", address])
    assert code == 0
    assert "points computed: 16" in capsys.readouterr().out
    import xarray as xr

    with xr.open_dataset(tmp_path / RESULT_FILE, engine="h5netcdf") as f:
        assert_same_numbers(serial, f.load())


@pytest.mark.parametrize(("kw", "match"), [
    ({"scheduler": 42}, "scheduler must be None, a dask Client"),
    ({"scheduler": "nowhere"}, "unknown scheduler 'nowhere'"),
    ({"scheduler": "missing.json"}, "scheduler file missing.json not found"),
    ({"scheduler": "local", "n_workers": 0}, "n_workers must be an integer >= 1, got 0"),
    ({"n_workers": 2}, "n_workers applies to a local scheduler"),
])
def test_bad_scheduler_is_a_config_error(kw, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        sweep_forward_backward(RHM, **SMALL, out=tmp_path, **kw)
    assert not (tmp_path / "points").exists() or not any((tmp_path / "points").iterdir())


def test_cli_bad_scheduler(tmp_path, capsys):
    code = main(["forward-backward", "--out", str(tmp_path), "--depths", "2", "--no-plots",
                 "--no-progress", "--scheduler", "bogus"])
    assert code == 2
    assert "hiergen: error: unknown scheduler 'bogus'" in capsys.readouterr().err


def test_unreachable_scheduler(tmp_path, monkeypatch):
    from hiergen.experiments import distributed as d

    monkeypatch.setattr(d, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler 'tcp://127.0.0.1:9'"):
        sweep_forward_backward(RHM, **SMALL, out=tmp_path, scheduler="tcp://127.0.0.1:9")


def test_local_cluster_by_name(serial):
    ds = sweep_forward_backward(RHM, **SMALL, scheduler="local", n_workers=2)
    assert_same_numbers(serial, ds)


@pytest.mark.slow
def test_python_m_hiergen_with_a_local_cluster(serial, tmp_path):
    """``python -m hiergen`` under spawned Dask workers: they re-import hiergen.__main__, which
    must not rerun the command."""
    import subprocess
    import sys

    import xarray as xr

    cmd = [sys.executable, "-m", "hiergen", "forward-backward", "--out", str(tmp_path),
           "--v", "8", "--n-classes", "8", "--m", "4", "--s", "2", "--depths", "2,3",
           "--seeds", "0,5", "--times", "0:400:4", "--n-samples", "300", "--no-plots",
           "--no-progress", "--scheduler", "local", "--workers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "points computed: 16" in proc.stdout
    with xr.open_dataset(tmp_path / RESULT_FILE, engine="h5netcdf") as f:
        assert_same_numbers(serial, f.load())


# ---------------------------------------------------------------------------- generic grids
PHASE = {"pairs": [(8, 3), (8, 6), (8, 4)], "s": 2, "depths": [2, 4],
         "eps": np.linspace(0.1, 0.9, 6), "n_samples": 150, "seeds": [0, 1], "progress": False}


def _same_phase(a, b):
    for key in ("root", "root_sem", "eps_sim", "kind"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_phase_grid_on_two_workers_matches_serial(client, tmp_path):
    from hiergen.experiments.phase import simulate_phase

    serial = simulate_phase(**PHASE)
    ds = simulate_phase(**PHASE, out=tmp_path, scheduler=client)
    _same_phase(serial, ds)
    assert ds["info"]["points_computed"] == 12
    assert len(list(PointStore(tmp_path, _config(tmp_path)).keys())) == 12
    again = simulate_phase(**PHASE, out=tmp_path, scheduler=client)
    assert again["info"] == {"points_computed": 0, "points_reused": 12, "seconds_computed": 0.0}
    _same_phase(serial, again)


def test_phase_grid_survives_a_killed_worker(client, tmp_path):
    from hiergen.experiments.phase import simulate_phase

    kw = {**PHASE, "pairs": [(8, 3), (8, 4), (16, 4)], "depths": [3, 5], "n_samples": 300}
    reference = simulate_phase(**kw)
    th, killed = kill_a_worker_after(client, tmp_path / "points", 2)
    ds = simulate_phase(**kw, out=tmp_path, scheduler=client)
    th.join()
    assert killed and killed["done_at_kill"] < 12, "the worker was not killed mid-way"
    _same_phase(reference, ds)
    assert ds["info"]["points_computed"] + ds["info"]["points_reused"] == 12
    client.wait_for_workers(2, timeout=60)


@pytest.mark.slow
def test_phase_example_with_local_cluster(tmp_path, capsys):
    from conftest import load_example

    ex = load_example("phase_diagram")
    argv = ["--out", str(tmp_path), "--vmax", "10", "--sim", "8:3,6", "--depths", "2", "4",
            "--n-eps", "8", "--n-samples", "60", "--seeds", "0", "--no-progress",
            "--scheduler", "local", "--workers", "2"]
    assert ex.main(argv) == 0
    assert "BP points: 4 computed, 0 reused" in capsys.readouterr().out
    assert ex.main(argv[:-4]) == 0  # serial rerun: everything reused
    assert "BP points: 0 computed, 4 reused" in capsys.readouterr().out
