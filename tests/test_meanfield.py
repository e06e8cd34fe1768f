"""Mean-field theory of BP denoising (hiergen.inference.meanfield) against exact BP.

Oracles: exact BP on sampled RHM data averaged over RHM seeds (the annealed average is over
random rules), closed forms (s = 2 fixed point, v -> inf limit, fixed points 1 and 1/v),
finite differences, Gauss-Hermite quadrature for the v = 2 Gaussian leaf message, and
GaussianDiffusion's own evidence. Tolerances are stated next to each check.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hiergen import RHM, BeliefPropagation
from hiergen.inference import meanfield as mf
from hiergen.models.errors import ConfigError, EvidenceError, GrammarError
from hiergen.models.noise import DDPMSchedule, GaussianDiffusion, UniformCorruption

CASES = [(16, 4, 2), (8, 2, 2), (8, 3, 2), (32, 8, 2), (4, 2, 3), (8, 8, 3), (8, 6, 2)]


# ---------------------------------------------------------------------------- the map
@pytest.mark.parametrize("v,m,s", CASES)
def test_fixed_points_one_and_uniform(v, m, s):
    for n_parent in (v, 2, 3 * v // 2):
        if n_parent * m > v**s:
            continue
        assert mf.upward_map(1.0, v, m, s, n_parent) == pytest.approx(1.0, abs=1e-14)
    assert mf.upward_map(1.0 / v, v, m, s) == pytest.approx(1.0 / v, rel=1e-12)
    fps = mf.fixed_points(v, m, s)
    assert fps[0].p == pytest.approx(1.0 / v) and fps[-1].p == 1.0
    assert fps[0].eps == pytest.approx(1.0) and fps[-1].eps == 0.0
    for fp in fps:
        assert float(mf.upward_map(fp.p, v, m, s)) == pytest.approx(fp.p, abs=1e-10)
    # slopes: closed forms equal finite differences of the map
    h = 1e-6
    fd1 = (1.0 - mf.upward_map(1.0 - h, v, m, s)) / h
    fd0 = (mf.upward_map(1.0 / v + h, v, m, s) - 1.0 / v) / h
    assert mf.slope_at_one(v, m, s) == pytest.approx(float(fd1), rel=1e-4)
    assert mf.slope_at_uniform(v, m, s) == pytest.approx(float(fd0), rel=1e-4)
    assert mf.slope_at_one(v, m, s) == pytest.approx(s * m * (v - 1) / (v**s - 1))
    # stability classification is consistent with the regime
    assert fps[-1].stable == (mf.slope_at_one(v, m, s) < 1)
    assert fps[0].stable == (mf.slope_at_uniform(v, m, s) < 1)


def test_upward_map_equals_annealed_average_by_enumeration():
    """The map is the ratio of the rule-averaged upward messages: check by enumerating all
    tuples for a small alphabet with non-uniform wrong mass (the average does not care)."""
    v, m, s = 4, 3, 2
    rng = np.random.default_rng(0)
    p = 0.7
    u = [np.r_[p, (1 - p) * rng.dirichlet(np.ones(v - 1))] for _ in range(s)]  # correct = 0
    prods = np.multiply.outer(u[0], u[1]).ravel()
    true, others = prods[0], prods[1:]
    q = others.mean()  # average over a uniformly random tuple other than the true one
    num, den = true + (m - 1) * q, true + (v * m - 1) * q
    assert float(mf.upward_map(p, v, m, s)) == pytest.approx(num / den, rel=1e-12)


@pytest.mark.parametrize("v,m", [(8, 2), (8, 3), (16, 4), (16, 6), (32, 8), (64, 20)])
def test_critical_eps_s2_closed_form(v, m):
    """For s = 2 the interior fixed point is p* = (m - 1) / (v - m) (quadratic's second root)."""
    p_star = (m - 1) / (v - m)
    assert mf.transition_exists(v, m, 2)
    assert mf.critical_eps(v, m, 2) == pytest.approx((1 - p_star) * v / (v - 1), abs=1e-9)


def test_critical_eps_large_v_limit():
    for f in (0.1, 0.25, 0.4):
        assert mf.critical_eps_large_v(f, 2) == pytest.approx((1 - 2 * f) / (1 - f), abs=1e-9)
        v = 2048
        assert mf.critical_eps(v, int(f * v), 2) == pytest.approx((1 - 2 * f) / (1 - f), abs=2e-3)
    e3 = mf.critical_eps_large_v(0.1, 3)
    p = 1 - e3
    assert float(mf.upward_map_large_v(p, 0.1, 3)) == pytest.approx(p, abs=1e-10)
    assert np.isnan(mf.critical_eps_large_v(0.5, 2)) and np.isnan(mf.critical_eps_large_v(0.4, 3))


def test_regimes():
    assert mf.regime(16, 4, 2) == "transition" and mf.critical_eps(16, 4, 2) == pytest.approx(0.8)
    assert mf.regime(8, 6, 2) == "unrecoverable" and np.isnan(mf.critical_eps(8, 6, 2))
    assert mf.regime(4, 2, 3) == "always-recoverable" and np.isnan(mf.critical_eps(4, 2, 3))
    # both ends unstable ("partial") needs s^2 (v-1)^2 v^(s-1) > (v^s - 1)^2: never on this grid
    assert all(mf.regime(v, m, s) != "partial" for s in (2, 3, 4) for v in range(2, 9)
               for m in range(1, v ** (s - 1) + 1))
    pd = mf.phase_diagram(range(4, 17), range(1, 17), 2)
    for i, v in enumerate(pd.v):
        for j, m in enumerate(pd.m):
            if m > v:
                assert pd.code[i, j] == -1
                continue
            assert mf.REGIMES[pd.code[i, j]] == mf.regime(int(v), int(m), 2)
            assert np.isfinite(pd.eps_star[i, j]) == (pd.code[i, j] == 0)
            # s = 2: p = 1 is stable iff 2m < v + 1
            assert (pd.slope_one[i, j] < 1) == (2 * m < v + 1)


def test_predict_limits_and_shapes():
    pred = mf.predict(np.array([[0.0, 1.0], [0.3, 0.5]]), 16, 4, 2, 3, n_classes=4)
    assert pred.marginal.shape == pred.up.shape == pred.down.shape == (2, 2, 4)
    np.testing.assert_allclose(pred.marginal[0, 0], 1.0, atol=1e-12)  # eps = 0: perfect
    # eps = 1: no evidence; upward messages are uniform, the class marginal is the prior, and
    # lower levels keep the prior's non-uniformity (checked against BP in the grid below)
    np.testing.assert_allclose(pred.up[0, 1], [1 / 4, 1 / 16, 1 / 16, 1 / 16], rtol=1e-9)
    assert pred.marginal[0, 1, 0] == pytest.approx(0.25) and np.all(pred.marginal[0, 1, 1:] > 1 / 16)
    assert pred.root.shape == (2, 2)
    np.testing.assert_allclose(pred.up[..., 0], pred.marginal[..., 0])  # uniform class prior
    assert np.all(np.diff(pred.root[1]) < 0)


# ---------------------------------------------------------------------------- against BP
def test_simulation_helper_matches_direct_bp():
    v, m, s, L = 8, 2, 2, 3
    sim = mf.bp_reconstruction([0.4], v, m, s, L, n_samples=50, seeds=[3])
    rhm = RHM(v, v, m, s, L, seed=3)
    x = rhm.sample(50, seed=1003)
    post = BeliefPropagation(rhm).run(UniformCorruption(v).evidence(x.leaves, 0.4))
    for lev in range(L + 1):
        direct = np.take_along_axis(post.marginals[lev], x.symbols[lev][..., None], -1).mean()
        assert sim.marginal[0, lev] == pytest.approx(direct, abs=1e-12)


# (v, m, s, n_classes, L, tolerance on |theory - BP| for every level and eps)
AGREEMENT = [
    (16, 4, 2, 16, 2, 0.015),
    (16, 4, 2, 16, 4, 0.015),
    (16, 4, 2, 4, 3, 0.05),
    (8, 6, 2, 8, 3, 0.03),
    (4, 2, 3, 4, 3, 0.05),
    (8, 2, 2, 8, 3, 0.08),
]


@pytest.mark.parametrize("v,m,s,nc,L,tol", AGREEMENT)
def test_theory_matches_bp_every_level(v, m, s, nc, L, tol):
    """Marginal and upward probability of the correct value: theory vs exact BP averaged over
    4 RHMs x 200 samples, eps in {0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1}. Measured max deviations:
    0.005 (16,4,2), 0.037 (16,4,2; 4 classes), 0.02 (8,6,2), 0.035 (4,2,3), 0.057 (8,2,2):
    the annealed average is best for many rules (large m) and worst for m = 2."""
    eps = np.array([0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0])
    sim = mf.bp_reconstruction(eps, v, m, s, L, n_classes=nc, n_samples=200, seeds=range(4),
                               upward=True)
    th = mf.predict(eps, v, m, s, L, n_classes=nc)
    np.testing.assert_allclose(sim.marginal, th.marginal, atol=tol)
    np.testing.assert_allclose(sim.up, th.up, atol=tol)
    np.testing.assert_allclose(sim.up[:, -1], mf.leaf_prob(eps, v), atol=1e-12)  # leaves exact


def test_critical_eps_matches_bp_crossing():
    """Theory: root curves of any two depths cross exactly at eps* = 0.8 (v=16, m=4, s=2).
    BP: crossing of L = 2 and L = 4 within 0.03 (measured 0.804 for L = 3/5)."""
    v, m, s = 16, 4, 2
    eps = np.linspace(0.6, 0.95, 15)
    th = {L: mf.predict(eps, v, m, s, L).root for L in (2, 3, 4)}
    assert mf.crossing(eps, th[2], th[4]) == pytest.approx(0.8, abs=2e-3)
    assert mf.crossing(eps, th[3], th[4]) == pytest.approx(0.8, abs=2e-3)
    bp = {L: mf.bp_reconstruction(eps, v, m, s, L, n_samples=300, seeds=range(4)).marginal[:, 0]
          for L in (2, 4)}
    assert mf.crossing(eps, bp[2], bp[4], tol=0.01) == pytest.approx(mf.critical_eps(v, m, s), abs=0.03)


def test_no_transition_when_sf_above_one():
    """v=8, m=6, s=2 (s f = 1.5): theory has no eps*, and both theory and BP root curves get
    worse with depth at every eps (no crossing)."""
    v, m, s = 8, 6, 2
    assert not mf.transition_exists(v, m, s) and np.isnan(mf.critical_eps(v, m, s))
    eps = np.linspace(0.1, 0.9, 9)
    th = {L: mf.predict(eps, v, m, s, L).root for L in (2, 4)}
    bp = {L: mf.bp_reconstruction(eps, v, m, s, L, n_samples=200, seeds=range(3)).marginal[:, 0]
          for L in (2, 4)}
    assert np.all(th[4] < th[2])
    assert np.all(bp[4] < bp[2] + 0.003)
    assert np.isnan(mf.crossing(eps, th[2], th[4])) and np.isnan(mf.crossing(eps, bp[2], bp[4], tol=0.003))


def test_always_recoverable_regime_in_bp():
    """v=4, m=2, s=3: p = 1/v is unstable (slope 1.14) -- deeper trees recover the class
    better even at eps = 0.9, in theory and in BP."""
    v, m, s = 4, 2, 3
    eps = np.array([0.85, 0.9])
    th = {L: mf.predict(eps, v, m, s, L).root for L in (2, 3)}
    bp = {L: mf.bp_reconstruction(eps, v, m, s, L, n_samples=200, seeds=range(4)).marginal[:, 0]
          for L in (2, 3)}
    assert np.all(th[3] > th[2]) and np.all(bp[3] > bp[2])


# ---------------------------------------------------------------------------- diffusion time
def test_gaussian_leaf_prob_against_quadrature_v2():
    """v = 2: mu = sigmoid(snr + sqrt(2 snr) Z), Z ~ N(0,1): Gauss-Hermite oracle."""
    sched = DDPMSchedule()
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    for t in (100.0, 200.0, 300.0):
        r = float(sched.snr(t))
        log_mu = -np.logaddexp(0.0, -(r + np.sqrt(2 * r) * x))
        mean, geo = float(w @ np.exp(log_mu)), float(np.exp(w @ log_mu))
        assert mf.gaussian_leaf_prob(t, 2, statistic="mean", n_samples=40000) == pytest.approx(mean, abs=4e-3)
        assert mf.gaussian_leaf_prob(t, 2, n_samples=40000) == pytest.approx(geo, abs=4e-3)


def test_gaussian_leaf_prob_matches_noise_module():
    v, t = 8, 180.0
    x0 = np.zeros((4000, 1), dtype=np.int64)
    lik = GaussianDiffusion(v).evidence(x0, t, seed=5).likelihood()[:, 0, 0]
    assert mf.gaussian_leaf_prob(t, v, statistic="mean") == pytest.approx(lik.mean(), abs=0.01)
    assert mf.gaussian_leaf_prob(t, v) == pytest.approx(np.exp(np.log(lik).mean()), rel=0.05)


def test_eps_of_time_monotone_and_limits():
    ts = np.linspace(0, 1000, 101)
    e = mf.eps_of_time(ts, 16)
    assert e[0] == 0.0 and e[-1] > 0.99 and np.all(np.diff(e) >= -1e-12)
    assert np.all(mf.eps_of_time(ts, 16, statistic="mean") <= e + 1e-12)  # AM >= GM
    pred = mf.predict_time([100.0, 200.0], 16, 4, 2, 3)
    np.testing.assert_allclose(pred.marginal, mf.predict(pred.eps, 16, 4, 2, 3).marginal)
    assert pred.time.tolist() == [100.0, 200.0]


@pytest.mark.slow
def test_critical_time_matches_gaussian_bp_crossing():
    """Gaussian diffusion, v=16, m=4, s=2: BP root curves of L = 2 and 4 cross at t = 148
    (measured; 141..156 over depth pairs 2..5); the geometric-mean mapping predicts t* = 152.6
    (tolerance 15 steps), the arithmetic-mean mapping 195.7 (more than 30 steps off)."""
    v, m, s = 16, 4, 2
    t_star = mf.critical_time(v, m, s)
    ts = np.arange(120.0, 185.0, 5.0)
    bp = {L: mf.bp_reconstruction(ts, v, m, s, L, n_samples=250, seeds=range(3),
                                  noise="gaussian").marginal[:, 0] for L in (2, 4)}
    t_bp = mf.crossing(ts, bp[2], bp[4])
    assert t_bp == pytest.approx(t_star, abs=15)
    assert abs(mf.critical_time(v, m, s, statistic="mean") - t_bp) > 30


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs():
    with pytest.raises(EvidenceError, match="eps must be in"):
        mf.predict(1.5, 8, 2, 2, 3)
    with pytest.raises(EvidenceError, match="eps must be in"):
        mf.predict([0.2, -0.1], 8, 2, 2, 3)
    with pytest.raises(EvidenceError, match="eps must be in"):
        mf.leaf_prob(np.nan, 8)
    with pytest.raises(GrammarError, match="m = 9 is too large"):
        mf.critical_eps(8, 9, 2)
    with pytest.raises(GrammarError, match="n_classes"):
        mf.predict(0.1, 8, 8, 2, 3, n_classes=9)
    with pytest.raises(GrammarError, match="s must be >= 2"):
        mf.upward_map(0.5, 8, 1, 1)
    with pytest.raises(GrammarError, match="v must be an integer"):
        mf.regime(8.0, 2, 2)
    with pytest.raises(GrammarError, match="L must be >= 1"):
        mf.predict(0.1, 8, 2, 2, 0)
    with pytest.raises(EvidenceError, match="p must be a probability"):
        mf.upward_map(1.2, 8, 2, 2)
    with pytest.raises(EvidenceError, match="diffusion time"):
        mf.eps_of_time(2000, 8)
    with pytest.raises(ConfigError, match="statistic"):
        mf.eps_of_time(10, 8, statistic="median")
    with pytest.raises(GrammarError, match="f = m"):
        mf.critical_eps_large_v(1.5, 2)


# ---------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli(capsys):
    from hiergen.cli import main

    assert main(["meanfield", "--v", "16", "--m", "4", "--s", "2", "--L", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["regime"] == "transition" and info["eps_star"] == pytest.approx(0.8)
    assert info["t_star"] == pytest.approx(mf.critical_time(16, 4, 2))
    marg = np.array(info["predictions"]["marginal"])
    np.testing.assert_allclose(marg, mf.predict(info["predictions"]["eps"], 16, 4, 2, 3).marginal)
    assert main(["meanfield", "--v", "8", "--m", "6", "--s", "2", "--L", "2", "--t", "100"]) == 0
    out = capsys.readouterr().out
    assert "eps* = none" in out and "unrecoverable" in out and "l=2" in out
    assert main(["meanfield", "--v", "8", "--m", "9", "--s", "2"]) == 2
    assert "m = 9 is too large" in capsys.readouterr().err
    assert main(["meanfield", "--v", "8", "--m", "2", "--s", "2", "--L", "2", "--eps", "1.5"]) == 2
    assert "eps must be in [0, 1]" in capsys.readouterr().err
