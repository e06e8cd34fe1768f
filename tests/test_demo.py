"""``hiergen demo --quick`` and ``hiergen forward-backward`` run in-process and write their outputs."""

from __future__ import annotations

import xarray as xr

from hiergen.cli import main


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "quick"
    ds = xr.load_dataset(run / "forward_backward.nc", engine="h5netcdf")
    assert set(ds["L"].values.tolist()) == {2, 4}
    assert ds.sizes["time"] == 11 and ds.attrs["n_samples"] == 200
    for name in ("fig5_levels", "class_vs_depth", "inversion", "sharpness_vs_depth"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 5000
    assert "class transition t*" in out and "figures:" in out and str(run) in out
    # a second run resumes: nothing recomputed, same numbers
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "22 points reused" in capsys.readouterr().out
    again = xr.load_dataset(run / "forward_backward.nc", engine="h5netcdf")
    xr.testing.assert_equal(ds.drop_vars("seconds"), again.drop_vars("seconds"))


def test_forward_backward_cli(tmp_path, capsys):
    args = ["forward-backward", "--out", str(tmp_path), "--v", "8", "--n-classes", "4", "--m", "2",
            "--depths", "2,3", "--times", "0:400:5", "--n-samples", "50", "--no-progress",
            "--no-plots"]
    assert main(args) == 0
    assert "points computed: 10" in capsys.readouterr().out
    ds = xr.load_dataset(tmp_path / "forward_backward.nc", engine="h5netcdf")
    assert ds.sizes["time"] == 5 and ds["time"].values[-1] == 400.0


def test_cli_bad_input_is_a_clean_error(tmp_path, capsys):
    assert main(["forward-backward", "--out", str(tmp_path), "--depths", "2,x"]) == 2
    assert "--depths must be a comma list" in capsys.readouterr().err
    assert main(["forward-backward", "--out", str(tmp_path), "--times", "0:2000:3",
                 "--depths", "2", "--no-progress"]) == 2
    assert "out of range" in capsys.readouterr().err
