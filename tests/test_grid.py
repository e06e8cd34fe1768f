"""Generic sweep grids (hiergen.experiments.grid) and the phase-diagram simulation built on them:
serial runs, the point store (resume, refused mismatches, two processes on one folder) and the
exact-BP oracle. The Dask side is in test_distributed_sweeps.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr

from hiergen.experiments.grid import GridPoint, run_grid
from hiergen.experiments.phase import simulate_phase
from hiergen.experiments.store import PointStore
from hiergen.inference.meanfield_sim import bp_reconstruction
from hiergen.models.errors import ConfigError

EPS = np.linspace(0.1, 0.9, 5)
PHASE = {"pairs": [(8, 3), (8, 6)], "s": 2, "depths": [2, 3], "eps": EPS, "n_samples": 40,
         "seeds": [0, 1], "progress": False}


def square(params, workdir):
    """A cheap point: ``x**2`` (and a file in its work folder, when there is one)."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "note.txt").write_text(str(params["x"]))
    return xr.Dataset({"y": ((), float(params["x"]) ** 2)})


def _points(xs):
    return [GridPoint(f"x{x}", {"x": x}) for x in xs]


def test_serial_grid_without_store():
    results, info = run_grid(square, _points([1, 2, 3]), progress=False)
    assert {k: float(ds.y) for k, ds in results.items()} == {"x1": 1.0, "x2": 4.0, "x3": 9.0}
    assert info["points_computed"] == 3 and info["points_reused"] == 0


def test_store_resumes_and_extends(tmp_path):
    store = PointStore(tmp_path, {"kind": "test"})
    _, info = run_grid(square, _points([1, 2]), store=store, progress=False)
    assert info["points_computed"] == 2
    assert (tmp_path / "work" / "x2" / "note.txt").read_text() == "2"
    results, info = run_grid(square, _points([1, 2, 3]), store=store, progress=False)
    assert info == {"points_computed": 1, "points_reused": 2,
                    "seconds_computed": pytest.approx(info["seconds_computed"])}
    assert float(results["x3"].y) == 9.0 and float(results["x1"].y) == 1.0


def test_stored_point_with_other_params_is_refused(tmp_path):
    store = PointStore(tmp_path, {"kind": "test"})
    run_grid(square, [GridPoint("p", {"x": 2})], store=store, progress=False)
    with pytest.raises(ConfigError, match="point_params"):
        run_grid(square, [GridPoint("p", {"x": 3})], store=store, progress=False)


@pytest.mark.parametrize(("points", "match"), [
    ([GridPoint("a b", {"x": 1})], "bad point key 'a b'"),
    ([GridPoint(".hidden", {"x": 1})], "bad point key"),
    ([GridPoint("a", {"x": 1}), GridPoint("a", {"x": 2})], "appears twice"),
    ([GridPoint("a", {"x": float("nan")})], "JSON-able"),
    ([GridPoint("a", {"x": object()})], "JSON-able"),
    ([("a", {"x": 1})], "GridPoint objects"),
])
def test_bad_points_are_config_errors(points, match):
    with pytest.raises(ConfigError, match=match):
        run_grid(square, points, progress=False)


def test_compute_must_return_a_dataset():
    with pytest.raises(TypeError, match="not a Dataset"):
        run_grid(lambda p, w: 1.0, _points([1]), progress=False)


# ---------------------------------------------------------------------------- phase diagram
def test_phase_simulation_equals_bp_reconstruction():
    """The oracle: the per-grammar multi-seed runs of bp_reconstruction."""
    sim = simulate_phase(**PHASE)
    for k, (v, m) in enumerate(PHASE["pairs"]):
        for j, L in enumerate(PHASE["depths"]):
            ref = bp_reconstruction(EPS, v, m, 2, L, n_samples=40, seeds=[0, 1])
            np.testing.assert_array_equal(sim["root"][k, j], ref.marginal[:, 0])
            np.testing.assert_array_equal(sim["root_sem"][k, j], ref.marginal_sem[:, 0])
    assert sim["info"]["points_computed"] == 2 * 2 * 2


def test_phase_store_rerun_is_identical_and_reuses_points(tmp_path):
    first = simulate_phase(**PHASE, out=tmp_path)
    again = simulate_phase(**PHASE, out=tmp_path)
    assert again["info"]["points_computed"] == 0 and again["info"]["points_reused"] == 8
    for key in ("root", "root_sem", "eps_sim", "kind"):
        np.testing.assert_array_equal(first[key], again[key])
    # another eps grid is another configuration: refused, naming the key
    with pytest.raises(ConfigError, match="differs in: eps"):
        simulate_phase(**{**PHASE, "eps": EPS[:4]}, out=tmp_path)


@pytest.mark.parametrize(("change", "match"), [
    ({"pairs": []}, "at least one"),
    ({"pairs": [(8, 0)]}, "m"),
    ({"depths": [3, 3]}, "two different depths"),
    ({"depths": [0, 3]}, "depth"),
    ({"seeds": []}, "at least one RHM seed"),
    ({"eps": [0.5, 0.2]}, "increasing"),
    ({"eps": [0.2, 1.5]}, "eps"),
    ({"n_samples": 0}, "n_samples"),
])
def test_phase_bad_settings(change, match):
    from hiergen.models.errors import HiergenError

    with pytest.raises(HiergenError, match=match):
        simulate_phase(**{**PHASE, **change})


def test_two_processes_split_a_phase_store(tmp_path):
    """Two processes started together on one folder compute every point once between them
    and both assemble the serial numbers."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from hiergen.experiments.phase import simulate_phase
        kw = dict(pairs=[(8, 3), (8, 6), (8, 4)], s=2, depths=[2, 4], eps=np.linspace(0.1, 0.9, 5),
                  n_samples=150, seeds=[0, 1, 2], progress=False)
        sim = simulate_phase(**kw, out={str(tmp_path / "store")!r})
        print(json.dumps({{"info": sim["info"], "root": sim["root"].tolist()}}))
    """))
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    computed = [o["info"]["points_computed"] for o in outs]
    assert sum(computed) == 3 * 2 * 3, computed
    assert outs[0]["root"] == outs[1]["root"]
    serial = simulate_phase([(8, 3), (8, 6), (8, 4)], 2, [2, 4], np.linspace(0.1, 0.9, 5), 150,
                            [0, 1, 2], progress=False)
    np.testing.assert_array_equal(np.array(outs[0]["root"]), serial["root"])
