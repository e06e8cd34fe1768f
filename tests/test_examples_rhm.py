"""The RHM example scripts run end to end in reduced size and write figure + data."""

from __future__ import annotations

import pytest
import xarray as xr

from conftest import load_example


def test_forward_backward_example(tmp_path):
    mod = load_example("forward_backward_rhm")
    argv = ["--out", str(tmp_path), "--v", "8", "--n-classes", "8", "--m", "2", "--depths", "2", "3",
            "--times", "0:500:6", "--n-samples", "100", "--no-progress"]
    assert mod.main(argv) == 0
    ds = xr.load_dataset(tmp_path / "forward_backward.nc", engine="h5netcdf")
    assert ds.sizes["L"] == 2 and ds.sizes["time"] == 6
    assert (tmp_path / "fig5_levels.png").stat().st_size > 5000
    assert "class transition" in (tmp_path / "summary.txt").read_text()


def test_cnn_probe_example(tmp_path):
    pytest.importorskip("torch")
    mod = load_example("cnn_probe_rhm")
    argv = ["--out", str(tmp_path), "--v", "8", "--n-classes", "8", "--m", "2", "--L", "3",
            "--n-train", "2000", "--n-test", "500", "--width", "32", "--epochs", "3",
            "--times", "0:400:4", "--n-samples", "64", "--no-progress"]
    assert mod.main(argv) == 0
    ds = xr.load_dataset(tmp_path / "cnn_probe.nc", engine="h5netcdf")
    assert ds.sizes["layer"] == 3 and ds.sizes["time"] == 4
    assert (tmp_path / "cnn_probe.png").stat().st_size > 5000
    assert (tmp_path / "cnn" / "model.safetensors").exists()
    # rerun reuses the checkpoint (same settings)
    assert mod.main(argv) == 0
