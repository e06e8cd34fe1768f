"""examples/meanfield_vs_bp.py and examples/phase_diagram.py run in reduced size."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from conftest import load_example
from hiergen.inference import meanfield as mf


@pytest.mark.slow
def test_meanfield_vs_bp_example(tmp_path, capsys):
    ex = load_example("meanfield_vs_bp")
    argv = ["--out", str(tmp_path), "--depths", "2", "3", "--eps", "0.2,0.6,0.8,0.9",
            "--times", "100,150,250", "--n-samples", "60", "--seeds", "0", "1", "--no-progress"]
    assert ex.main(argv) == 0
    assert (tmp_path / "meanfield_vs_bp.png").read_bytes()[:4] == b"\x89PNG"
    ds = xr.open_dataset(tmp_path / "meanfield_vs_bp.nc", engine="h5netcdf")
    assert ds.th_marginal.shape == (2, 4, 4) and ds.bp_marginal_t.shape == (2, 3, 4)
    assert ds.attrs["eps_star"] == pytest.approx(0.8)
    np.testing.assert_allclose(ds.th_marginal.sel(L=3).values, mf.predict(ds.eps.values, 16, 4, 2, 3).marginal)
    assert np.all(np.isnan(ds.bp_marginal.sel(L=2, level=3)))  # level 3 does not exist at L=2
    err = np.abs(ds.th_marginal - ds.bp_marginal).max()
    assert float(err) < 0.05  # theory vs BP, 120 samples per point
    assert np.isfinite(ds.bp_up.sel(L=3)).all()  # upward messages measured at the largest L
    assert "eps* = 0.8000" in capsys.readouterr().out


def test_phase_diagram_example(tmp_path, capsys):
    ex = load_example("phase_diagram")
    argv = ["--out", str(tmp_path), "--vmax", "12", "--sim", "8:3,6", "--depths", "2", "4",
            "--n-eps", "12", "--n-samples", "80", "--seeds", "0", "1", "--no-progress"]
    assert ex.main(argv) == 0
    assert (tmp_path / "phase_diagram.png").read_bytes()[:4] == b"\x89PNG"
    ds = xr.open_dataset(tmp_path / "phase_diagram.nc", engine="h5netcdf")
    assert ds.regime.shape == (9, 12)
    assert int(ds.regime.sel(v=8, m=6)) == mf.REGIMES.index("unrecoverable")
    assert float(ds.eps_star.sel(v=8, m=3)) == pytest.approx(mf.critical_eps(8, 3, 2))
    kinds = ds.sim_kind.values.tolist()
    assert kinds[1] == ex.SIM_KIND.index("lost")  # (8, 6): no transition in BP either
    assert kinds[0] == ex.SIM_KIND.index("crossing")
    assert float(ds.sim_eps_star[0]) == pytest.approx(mf.critical_eps(8, 3, 2), abs=0.1)
    assert "unrecoverable" in capsys.readouterr().out
