"""Forward–backward experiments: limits, sharpening with depth, resumability, seeding, errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

# the module (the package attribute of the same name is the function)
import hiergen.experiments.sweeps as fbmod
from hiergen import RHM, BeliefPropagation
from hiergen.experiments.analysis import inversion_time, transition, transitions, trees_generable
from hiergen.experiments.sweeps import forward_backward, sweep_forward_backward
from hiergen.models.errors import ConfigError, EvidenceError, GrammarError
from hiergen.models.noise import GaussianDiffusion, UniformCorruption

SMALL = {"v": 8, "n_classes": 4, "m": 2, "s": 2}
# v = n_classes = 16, m = 4, s = 2: s * f = 0.5 < 1, a class transition near t = 150
MID = {"v": 16, "n_classes": 16, "m": 4, "s": 2}


def _assert_same(a: xr.Dataset, b: xr.Dataset) -> None:
    xr.testing.assert_equal(a.drop_vars("seconds"), b.drop_vars("seconds"))


def test_no_noise_nothing_changes_and_correct_value_certain():
    g = RHM(**SMALL, L=3, seed=0)
    ds = forward_backward(g, times=[0.0, 1.0, 5.0], n_samples=300, seed=0, progress=False)
    assert ds["p_change"].sel(time=0.0).max() == 0.0
    np.testing.assert_allclose(ds["p_correct"].sel(time=0.0), 1.0, atol=1e-12)
    # t = 1, 5: abar > 0.999, the evidence is nearly exact; BP (which sees the rules)
    # recovers everything up to a tiny tolerance
    assert float(ds["p_change"].sel(time=5.0).max()) < 0.01
    assert float(ds["p_correct"].sel(time=5.0).min()) > 0.99
    assert ds.attrs["points_computed"] == 3


def test_full_noise_class_change_is_one_minus_one_over_classes():
    g = RHM(v=8, n_classes=8, m=2, s=2, L=3, seed=1)
    n = 2000
    ds = forward_backward(g, times=[1000.0], n_samples=n, seed=3, progress=False)
    expected = 1 - 1 / 8
    se = np.sqrt(expected * (1 - expected) / n)  # 0.0074
    assert abs(float(ds["class_change"][0]) - expected) < 4 * se
    # the marginal of the true class is back to the uniform prior (tolerance 0.01)
    assert abs(float(ds["p_correct_class"][0]) - 1 / 8) < 0.01
    # uniform corruption eps = 1 removes all information: exact limits for every level
    du = forward_backward(g, times=[1.0], n_samples=n, noise="uniform", seed=3, progress=False)
    assert abs(float(du["class_change"][0]) - expected) < 4 * se
    np.testing.assert_allclose(du["p_correct_class"], 1 / 8, atol=1e-12)


def test_class_curve_steeper_with_depth_and_low_levels_smooth():
    times = np.linspace(0.0, 400.0, 33)
    ds = sweep_forward_backward(MID, depths=[2, 6], seeds=[0], times=times, n_samples=768,
                                progress=False)
    tr = transitions(ds, "class_change")
    s2, s6 = float(tr["slope"].sel(L=2)), float(tr["slope"].sel(L=6))
    # measured: slope about 0.008 at L=2 vs 0.02 at L=6; require a clear factor 1.5
    assert s6 > 1.5 * s2, (s2, s6)
    assert abs(float(tr["t_star"].sel(L=6)) - float(tr["t_star"].sel(L=2))) < 60
    # low levels change smoothly in t: the leaf curve's 10-90% width (logistic fit) is more
    # than twice the deep class curve's, its largest step between neighbouring times (12.5)
    # under 0.6 x the class curve's, and it hardly sharpens with depth (measured: leaf widths
    # 170 at L=2 and 150 at L=6; class width 55 at L=6; steps 0.11 vs 0.24)
    leaf = ds["p_change"].sel(L=6, seed=0, level=6).values
    leaf2 = ds["p_change"].sel(L=2, seed=0, level=2).values
    cls = ds["class_change"].sel(L=6, seed=0).values
    w_leaf = transition(times, leaf, 0.0, 15 / 16).width
    w_leaf2 = transition(times, leaf2, 0.0, 15 / 16).width
    assert w_leaf > 2 * float(tr["width"].sel(L=6)), (w_leaf, float(tr["width"].sel(L=6)))
    assert w_leaf > 0.75 * w_leaf2
    assert np.abs(np.diff(leaf)).max() < 0.6 * np.abs(np.diff(cls)).max()
    # the curves of low and high levels invert around the transition
    t_inv = inversion_time(times, cls, leaf)
    assert np.isfinite(t_inv) and t_inv < float(tr["t_star"].sel(L=6)) + 25


def test_posterior_samples_are_generable():
    g = RHM(**SMALL, L=4, seed=2)
    bp = BeliefPropagation(g)
    x0 = g.sample(200, seed=0)
    for t in (0.0, 50.0, 150.0, 400.0, 1000.0):
        tree = bp.sample(GaussianDiffusion(g.v).evidence(x0.leaves, t, seed=1), seed=2)
        assert trees_generable(g, tree).all()
    # the checker is not vacuous: a corrupted tree is rejected
    bad = g.sample(5, seed=3)
    bad.symbols[2][0, 1] = (bad.symbols[2][0, 1] + 1) % g.v
    ok = trees_generable(g, bad)
    assert not ok[0] and ok[1:].all()


def test_same_call_same_numbers_other_seed_other_numbers():
    g = RHM(**SMALL, L=3, seed=0)
    kw = {"times": [100.0, 200.0], "n_samples": 300, "progress": False}
    a = forward_backward(g, seed=5, **kw)
    b = forward_backward(g, seed=5, **kw)
    c = forward_backward(g, seed=6, **kw)
    _assert_same(a, b)
    assert not np.allclose(a["p_change"].values, c["p_change"].values)


def test_resume_after_kill_gives_same_dataset_without_recomputing(tmp_path, monkeypatch):
    times = np.linspace(0.0, 300.0, 4)
    kw = {"depths": [2, 3], "seeds": [0, 1], "times": times, "n_samples": 300, "progress": False}
    full = sweep_forward_backward(SMALL, **kw)  # uninterrupted, in memory
    assert full.attrs["points_computed"] == 16

    real = fbmod.forward_backward_point
    calls = {"n": 0}

    def dying(*args, **kwargs):
        if calls["n"] == 6:
            raise KeyboardInterrupt  # the sweep is killed while computing point 7
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(fbmod, "forward_backward_point", dying)
    with pytest.raises(KeyboardInterrupt):
        sweep_forward_backward(SMALL, out=tmp_path / "run", **kw)
    assert len(list((tmp_path / "run" / "points").glob("*.nc"))) == 6  # finished points kept
    monkeypatch.setattr(fbmod, "forward_backward_point", real)

    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(fbmod, "forward_backward_point", counting)
    resumed = sweep_forward_backward(SMALL, out=tmp_path / "run", **kw)
    assert counted["n"] == 10  # only the unfinished points
    assert resumed.attrs["points_reused"] == 6 and resumed.attrs["points_computed"] == 10
    _assert_same(resumed, full)
    on_disk = xr.load_dataset(tmp_path / "run" / "forward_backward.nc", engine="h5netcdf")
    _assert_same(on_disk, full)

    # a third run recomputes nothing; adding a depth computes only the new points
    again = sweep_forward_backward(SMALL, out=tmp_path / "run", **kw)
    assert again.attrs["points_computed"] == 0
    more = sweep_forward_backward(SMALL, out=tmp_path / "run", **{**kw, "depths": [2, 3, 4]})
    assert more.attrs["points_computed"] == 8
    _assert_same(more.sel(L=[2, 3]).isel(level=slice(0, 4)), full)


def test_store_refuses_other_configuration(tmp_path):
    kw = {"depths": [2], "seeds": [0], "n_samples": 50, "progress": False, "out": tmp_path}
    sweep_forward_backward(SMALL, times=[0.0, 100.0], **kw)
    with pytest.raises(ConfigError, match="another configuration.*times"):
        sweep_forward_backward(SMALL, times=[0.0, 200.0], **kw)
    g = RHM(**SMALL, L=2, seed=0)
    with pytest.raises(ConfigError, match="another configuration"):
        forward_backward(g, times=[0.0, 100.0], n_samples=50, out=tmp_path, progress=False)


def test_single_grammar_store_and_matches_sweep(tmp_path):
    g = RHM(**SMALL, L=3, seed=4)
    times = [50.0, 150.0]
    a = forward_backward(g, times=times, n_samples=100, seed=4, out=tmp_path, progress=False)
    b = forward_backward(g, times=times, n_samples=100, seed=4, out=tmp_path, progress=False)
    assert b.attrs["points_reused"] == 2
    _assert_same(a, b)
    s = sweep_forward_backward(SMALL, depths=[3], seeds=[4], times=times, n_samples=100,
                               progress=False).isel(L=0, seed=0, drop=True)
    _assert_same(a, s)


def test_uniform_and_masking_noise_limits():
    g = RHM(**SMALL, L=3, seed=0)
    for noise in ("uniform", "masking"):
        ds = forward_backward(g, times=[0.0, 0.5, 1.0], n_samples=400, noise=noise, progress=False)
        assert float(ds["p_change"].sel(time=0.0).max()) == 0.0
        cc = ds["class_change"].values
        assert cc[0] <= cc[1] <= cc[2] + 0.05
        assert ds.attrs["noise"] == noise


def test_standard_errors_match_binomial():
    g = RHM(**SMALL, L=2, seed=0)
    ds = forward_backward(g, times=[200.0], n_samples=1000, progress=False)
    p = float(ds["class_change"][0])
    np.testing.assert_allclose(float(ds["class_change_se"][0]), np.sqrt(p * (1 - p) / 999), rtol=1e-9)


def test_transition_on_known_logistic():
    t = np.linspace(0, 100, 41)
    y = 0.9 / (1 + np.exp(-(t - 40.0) / 5.0))
    tr = transition(t, y, 0.0, 0.9)
    assert tr.method == "logistic"
    assert abs(tr.t_star - 40.0) < 1e-3 and abs(tr.slope - 0.9 / 20.0) < 1e-4
    assert abs(tr.width - 2 * np.log(9) * 5.0) < 1e-2
    # a curve that never gets halfway has no transition
    assert np.isnan(transition(t, 0.1 * y, 0.0, 0.9).t_star)
    with pytest.raises(ConfigError, match="low != high"):
        transition(t, y, 0.5, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"noise": "salt"}, ConfigError, "unknown noise"),
        ({"times": [-1.0, 5.0]}, EvidenceError, "out of range"),
        ({"times": [0.0, 1001.0]}, EvidenceError, r"\[0, 1000\]"),
        ({"times": [0.5, 2.0], "noise": "uniform"}, EvidenceError, "out of range"),
        ({"times": [1.0, 1.0]}, ConfigError, "distinct"),
        ({"times": [[1.0]]}, ConfigError, "1-D"),
        ({"times": ["a"]}, ConfigError, "numbers"),
        ({"n_samples": 1}, ConfigError, "n_samples"),
        ({"seed": -1}, ConfigError, "seed"),
    ],
)
def test_bad_inputs_raise(kwargs, err, match):
    g = RHM(**SMALL, L=2, seed=0)
    with pytest.raises(err, match=match):
        forward_backward(g, **{"times": [0.0], "n_samples": 10, "progress": False, **kwargs})


def test_bad_sweep_inputs_raise(tmp_path):
    with pytest.raises(ConfigError, match="depths=.*seeds="):
        sweep_forward_backward({**SMALL, "L": 3}, depths=[2], progress=False)
    with pytest.raises(ConfigError, match="missing.*'m'"):
        sweep_forward_backward({"v": 8, "n_classes": 4, "s": 2}, depths=[2], progress=False)
    with pytest.raises(ConfigError, match="distinct"):
        sweep_forward_backward(SMALL, depths=[2, 2], progress=False)
    with pytest.raises(GrammarError, match="infeasible"):
        sweep_forward_backward({"v": 4, "n_classes": 4, "m": 8, "s": 2}, depths=[2], progress=False)
    with pytest.raises(ConfigError, match="needs a Grammar"):
        forward_backward("not a grammar", progress=False)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        sweep_forward_backward(SMALL, depths=[2], times=[0.0], n_samples=10, out=f, progress=False)


def test_uniform_evidence_agrees_with_direct_bp():
    """The dataset's p_correct equals a direct BP computation on the same data (oracle:
    BeliefPropagation + UniformCorruption, deterministic evidence)."""
    g = RHM(**SMALL, L=3, seed=0)
    ds = forward_backward(g, times=[0.3], n_samples=100, noise="uniform", seed=2, progress=False,
                          dtype="float64")
    data = fbmod.draw_data(g, 100, 2)
    x0 = data[0]
    post = BeliefPropagation(g).run(UniformCorruption(g.v).evidence(x0.leaves, 0.3))
    want = [p.mean() for p in post.prob_of(x0.symbols)]
    np.testing.assert_allclose(ds["p_correct"].sel(time=0.3).values, want, rtol=1e-10)
