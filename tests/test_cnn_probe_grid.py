"""CNN-probe grid (hiergen.experiments.cnn_probe_grid): points equal direct train_cnn +
cnn_probe calls, the store reuses points and checkpoints of killed points, bad settings are
refused up front, a 2-process Dask LocalCluster gives the serial numbers, and the example
runs a 2-seed grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from conftest import load_example  # noqa: E402
from hiergen import RHM  # noqa: E402
from hiergen.experiments import cnn_probe_grid as grid_mod  # noqa: E402
from hiergen.experiments.cnn_probe import cnn_probe, train_cnn  # noqa: E402
from hiergen.experiments.cnn_probe_grid import cnn_probe_grid, cnn_probe_point  # noqa: E402
from hiergen.models.errors import ConfigError, HiergenError  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# 4 * 2**7 = 512 distinct data (d = 8): some test data stay unseen with 400 training data
TINY = {"v": 4, "n_classes": 4, "m": 2, "s": 2, "L": 3}
TIMES = [0.0, 150.0, 400.0, 1000.0]
SETTINGS = {"n_test": 200, "width": 16, "epochs": 3, "batch_size": 32, "lr": 3e-3,
            "n_samples": 50, "progress": False}
SEEDS, N_TRAINS = [0, 3], [200, 400]


@pytest.fixture(scope="module")
def serial():
    return cnn_probe_grid(TINY, SEEDS, N_TRAINS, TIMES, **SETTINGS)


def assert_same_numbers(a: xr.Dataset, b: xr.Dataset) -> None:
    """Every variable but the timings, bit for bit, and the coordinates."""
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for k in a.data_vars:
        if k not in ("seconds", "train_seconds"):
            np.testing.assert_array_equal(a[k].values, b[k].values, err_msg=k)
    for c in a.coords:
        np.testing.assert_array_equal(a[c].values, b[c].values)


def test_grid_layout(serial):
    assert dict(serial.sizes) == {"seed": 2, "n_train": 2, "time": 4, "layer": 3}
    assert serial["cos_sim"].dims == ("seed", "n_train", "time", "layer")
    assert serial["test_acc"].dims == ("seed", "n_train")
    assert serial.attrs["points_computed"] == 4 and serial.attrs["points_reused"] == 0
    assert serial.attrs["cnn_checkpoints_reused"] == 0 and serial.attrs["threads"] == 1
    for name in list(serial.data_vars) + ["time", "n_train", "layer"]:
        assert serial[name].attrs.get("long_name"), name
        assert "units" in serial[name].attrs, name
    # t = 0: x0_hat = x0 exactly
    np.testing.assert_allclose(serial["cos_sim"].sel(time=0.0), 1.0, atol=1e-9)
    assert float(serial["class_change"].sel(time=0.0).max()) == 0.0


def test_point_equals_direct_calls(serial):
    """The oracle: train_cnn + cnn_probe called directly (one thread, probe seed = seed + 1)."""
    seed, n_train = 3, 400
    g = RHM(**TINY, seed=seed)
    model, info = train_cnn(g, n_train=n_train, n_test=200, width=16, epochs=3, batch_size=32,
                            lr=3e-3, seed=seed, threads=1, progress=False)
    ref = cnn_probe(model, g, TIMES, n_samples=50, seed=seed + 1, progress=False)
    pt = serial.sel(seed=seed, n_train=n_train)
    for k in ref.data_vars:
        np.testing.assert_array_equal(pt[k].values, ref[k].values, err_msg=k)
    assert float(pt["train_acc"]) == info["train_acc"]
    assert float(pt["test_acc"]) == info["test_acc"]
    assert int(pt["epochs_run"]) == info["epochs"]
    assert int(pt["n_test_unseen"]) == info["n_test_unseen"]


def test_store_rerun_reuses_points(serial, tmp_path):
    first = cnn_probe_grid(TINY, SEEDS, N_TRAINS, TIMES, **SETTINGS, out=tmp_path)
    assert_same_numbers(serial, first)
    assert (tmp_path / "work" / "seed3-ntrain400" / "model.safetensors").is_file()
    again = cnn_probe_grid(TINY, SEEDS, N_TRAINS, TIMES, **SETTINGS, out=tmp_path)
    assert again.attrs["points_computed"] == 0 and again.attrs["points_reused"] == 4
    assert_same_numbers(serial, again)
    # a sub-grid reuses what it shares; other settings are refused, naming them
    sub = cnn_probe_grid(TINY, [3], [400], TIMES, **SETTINGS, out=tmp_path)
    assert sub.attrs["points_reused"] == 1
    assert_same_numbers(serial.sel(seed=[3], n_train=[400]), sub)
    with pytest.raises(ConfigError, match="differs in: width"):
        cnn_probe_grid(TINY, SEEDS, N_TRAINS, TIMES, **{**SETTINGS, "width": 8}, out=tmp_path)


def test_killed_after_training_resumes_from_checkpoint(serial, tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise RuntimeError("killed while probing")

    monkeypatch.setattr(grid_mod, "cnn_probe", killed)
    with pytest.raises(RuntimeError, match="killed while probing"):
        cnn_probe_grid(TINY, [0], [200], TIMES, **SETTINGS, out=tmp_path)
    work = tmp_path / "work" / "seed0-ntrain200"
    assert (work / "model.safetensors").is_file()
    assert not list((tmp_path / "points").glob("*.nc"))

    def no_training(*args, **kwargs):
        raise AssertionError("the CNN was trained again")

    monkeypatch.setattr(grid_mod, "cnn_probe", cnn_probe)
    monkeypatch.setattr(grid_mod, "train_cnn", no_training)
    ds = cnn_probe_grid(TINY, [0], [200], TIMES, **SETTINGS, out=tmp_path)
    assert ds.attrs["points_computed"] == 1 and ds.attrs["cnn_checkpoints_reused"] == 1
    assert_same_numbers(serial.sel(seed=[0], n_train=[200]), ds)

    # a checkpoint of other training settings is not reused
    monkeypatch.setattr(grid_mod, "train_cnn", train_cnn)
    cfg = json.loads((work / "config.json").read_text())
    cfg["info"]["point_settings"]["epochs"] = 99
    (work / "config.json").write_text(json.dumps(cfg))
    pt = cnn_probe_point(_params(0, 200), work)
    assert pt.attrs["cnn_from_checkpoint"] == 0
    np.testing.assert_array_equal(pt["cos_sim"].values, ds["cos_sim"].values[0, 0])


def _params(seed, n_train):
    s = {k: v for k, v in SETTINGS.items() if k != "progress"}
    return {**TINY, **s, "seed": seed, "n_train": n_train, "times": TIMES, "noise": "gaussian",
            "whiten": True, "device": "cpu", "threads": 1}


def test_point_restores_the_thread_count():
    assert torch.get_num_threads() == 1
    cnn_probe_point({**_params(0, 200), "threads": 2, "times": [0.0]})
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(("change", "match"), [
    ({"rhm": {**TINY, "seed": 1}}, "exactly the keys"),
    ({"rhm": {**TINY, "m": 0}}, "rhm m"),
    ({"rhm": {**TINY, "m": 99}}, "m"),
    ({"seeds": []}, "seeds"),
    ({"seeds": [0, 0]}, "repeat"),
    ({"seeds": [-1]}, "seeds must be >= 0"),
    ({"n_trains": [0]}, "n_trains"),
    ({"n_trains": 200}, "n_trains"),
    ({"times": [0.0, 5000.0]}, "noise levels"),
    ({"noise": "salt"}, "unknown noise"),
    ({"width": 0}, "width"),
    ({"epochs": 2.0}, "epochs"),
    ({"n_samples": 1}, "n_samples"),
    ({"threads": 0}, "threads"),
    ({"lr": -1.0}, "lr"),
    ({"whiten": "yes"}, "whiten"),
    ({"device": "tpu:x"}, "device"),
    ({"scheduler": "nowhere"}, "unknown scheduler"),
    ({"n_workers": 2}, "n_workers"),
])
def test_bad_settings(change, match, tmp_path):
    kw = {"rhm": TINY, "seeds": SEEDS, "n_trains": N_TRAINS, "times": TIMES, **SETTINGS,
          "out": tmp_path / "store", **change}
    with pytest.raises(HiergenError, match=match):
        cnn_probe_grid(**kw)
    assert not (tmp_path / "store").exists()  # refused before any work


# ---------------------------------------------------------------------------- Dask
@pytest.fixture
def client(dask_client):
    return dask_client


def test_two_worker_processes_match_serial(client, serial, tmp_path):
    ds = cnn_probe_grid(TINY, SEEDS, N_TRAINS, TIMES, **SETTINGS, out=tmp_path, scheduler=client)
    assert ds.attrs["points_computed"] == 4
    assert_same_numbers(serial, ds)
    assert len(list((tmp_path / "points").glob("*.nc"))) == 4
    nostore = cnn_probe_grid(TINY, SEEDS, N_TRAINS, TIMES, **SETTINGS, scheduler=client)
    assert_same_numbers(serial, nostore)


# ---------------------------------------------------------------------------- example
def test_example_grid_of_two_seeds(tmp_path):
    mod = load_example("cnn_probe_rhm")
    argv = ["--out", str(tmp_path), "--v", "4", "--n-classes", "4", "--m", "2", "--L", "3",
            "--seeds", "0", "3", "--n-train", "200", "400", "--n-test", "200", "--width", "16",
            "--epochs", "3", "--times", "0:400:4", "--n-samples", "50", "--no-progress"]
    assert mod.main(argv) == 0
    ds = xr.load_dataset(tmp_path / "cnn_probe_grid.nc", engine="h5netcdf")
    assert dict(ds.sizes) == {"seed": 2, "n_train": 2, "time": 4, "layer": 3}
    assert (tmp_path / "cnn_probe_grid.png").stat().st_size > 5000
    assert (tmp_path / "grid" / "work" / "seed3-ntrain400" / "model.safetensors").is_file()
    assert not (tmp_path / "cnn_probe.nc").exists()
    assert mod.main(argv) == 0  # rerun: every point reused
    again = xr.load_dataset(tmp_path / "cnn_probe_grid.nc", engine="h5netcdf")
    assert again.attrs["points_reused"] == 4
    assert_same_numbers(ds, again)
