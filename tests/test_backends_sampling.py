"""Sampling and approximate backends: infer_discrete, Gibbs MCMC, prior Predictive, mean-field VI.

Statistical tolerances: an empirical frequency of ``N`` independent draws is within
``5 sqrt(p (1 - p) / N) + 2e-3`` of the exact marginal ``p`` (fixed seeds); Gibbs draws are
correlated, so their tolerance uses the number of sweeps divided by 10.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from conftest import random_grammar
from hiergen import RHM
from hiergen.inference.registry import run
from hiergen.models.errors import BackendError, ConfigError

warnings.filterwarnings("ignore", category=FutureWarning)


def _soft_likelihood(g, batch, seed, power=1.0):
    rng = np.random.default_rng(seed)
    return 0.2 + rng.random((batch, g.d, g.vocab_sizes[-1])) ** power


def _assert_within(post, ref, n_eff):
    for est, exact in zip(post.marginals, ref.marginals):
        tol = 5 * np.sqrt(exact * (1 - exact) / n_eff) + 2e-3
        assert np.all(np.abs(est - exact) <= tol), np.abs(est - exact).max()


def test_sampler_settings_are_checked():
    """Bad settings are ConfigError / BackendError before anything is compiled."""
    g = RHM(v=3, n_classes=2, m=2, s=2, L=2, seed=2)
    lik = _soft_likelihood(g, 1, seed=4)
    for bad, msg in ((0, "num_samples must be >= 1, got 0"),
                     (10.0, "num_samples must be an integer, got the float 10.0"),
                     ("10", "num_samples must be an integer, got '10'")):
        with pytest.raises(ConfigError, match=msg):
            run(g, lik, "numpyro-sample", num_samples=bad)
    with pytest.raises(BackendError, match="dtype must be 'float32' or 'float64', got 'float16'"):
        run(g, lik, "numpyro-sample", dtype="float16")
    with pytest.raises(ConfigError, match="batch_chunk must be >= 1, got 0"):
        run(g, lik, "numpyro", batch_chunk=0)
    with pytest.raises(ConfigError, match="max_elements must be an integer, got the float 10000000.0"):
        run(g, lik, "numpyro", max_elements=1e7)


@pytest.mark.slow
def test_infer_discrete_samples_match_bp_marginals():
    g = random_grammar((2, 3, 3, 2), (2, 2, 2), 2, seed=3)  # ambiguous, non-uniform, depth 3
    lik = _soft_likelihood(g, 2, seed=1, power=3)
    ref = run(g, lik, "bp")
    post = run(g, lik, "numpyro-sample", num_samples=4000, seed=0)
    _assert_within(post, ref, 4000)
    assert np.isnan(post.log_evidence).all()
    draws = post.extra["samples"]
    assert [d.shape for d in draws] == [(4000, 2, g.n_nodes(lev)) for lev in range(g.L + 1)]
    # every drawn tree is a derivation of the grammar
    for lev in range(g.L):
        parent, child = draws[lev], draws[lev + 1].reshape(draws[lev].shape + (-1,))
        ok = np.zeros(parent.shape, bool)
        for r in range(g.children[lev].shape[1]):
            ok |= (g.probs[lev][parent, r] > 0) & np.all(g.children[lev][parent, r] == child, -1)
        assert ok.all()


@pytest.mark.slow
def test_gibbs_matches_bp_and_reports_diagnostics():
    g = RHM(v=3, n_classes=2, m=2, s=2, L=3, seed=2)
    lik = _soft_likelihood(g, 2, seed=4)
    ref = run(g, lik, "bp")
    post = run(g, lik, "mcmc", num_samples=4000, num_warmup=200, num_chains=4, seed=1)
    _assert_within(post, ref, 4 * 4000 / 10)
    idata = post.extra["inference_data"]
    assert set(idata.posterior.data_vars) >= {"class", "log_joint", "class_indicator"}
    assert idata.posterior["class"].shape == (4, 4000, 2)
    assert np.all(post.extra["rhat_log_joint"] < 1.05)
    assert np.all(post.extra["ess_log_joint"] > 400)
    assert np.isnan(post.log_evidence).all()


def test_gibbs_is_seeded():
    g = RHM(v=3, n_classes=2, m=2, s=2, L=2, seed=2)
    lik = _soft_likelihood(g, 1, seed=4)
    a = run(g, lik, "mcmc", num_samples=50, num_warmup=5, seed=3)
    b = run(g, lik, "mcmc", num_samples=50, num_warmup=5, seed=3)
    np.testing.assert_array_equal(a.extra["inference_data"].posterior["class"],
                                  b.extra["inference_data"].posterior["class"])
    with pytest.raises(ConfigError, match="num_chains must be >= 1, got 0"):
        run(g, lik, "mcmc", num_chains=0)
    with pytest.raises(ConfigError, match=r"num_warmup must be an integer, got 2.5 \(float\)"):
        run(g, lik, "mcmc", num_warmup=2.5)


@pytest.mark.slow
def test_prior_predictive_matches_grammar_sample():
    import jax
    from numpyro.infer import Predictive

    from hiergen.models.numpyro_model import GrammarModel

    g = random_grammar((3, 3, 2, 3), (2, 2, 1), 3, seed=8)
    model = GrammarModel(g)
    n = 4000
    draws = Predictive(model, num_samples=n)(jax.random.PRNGKey(0), batch=1)
    ref = g.sample(n, seed=0)
    # exact prior marginals (BP with flat evidence) as the oracle for every node
    prior = run(g, np.ones((1, g.d, g.vocab_sizes[-1])), "bp").marginals
    for lev in range(g.L + 1):
        x = model.flatten_level(draws[f"x_{lev}"], lev)[:, 0]  # (n, n_l)
        for i in range(g.n_nodes(lev)):
            counts = np.bincount(x[:, i], minlength=g.vocab_sizes[lev])
            p = prior[lev][0, i]
            keep = p > 0
            assert counts[~keep].sum() == 0
            assert stats.chisquare(counts[keep], n * p[keep] / p[keep].sum()).pvalue > 1e-3
    # joint statistics of leaf pairs against grammar.sample (two-sample chi-square)
    leaves = model.flatten_level(draws[f"x_{g.L}"], g.L)[:, 0]
    v = g.vocab_sizes[-1]
    for i, j in ((0, 1), (0, g.d - 1)):
        a = np.bincount(leaves[:, i] * v + leaves[:, j], minlength=v * v)
        b = np.bincount(ref.leaves[:, i] * v + ref.leaves[:, j], minlength=v * v)
        table = np.stack([a, b])[:, (a + b) > 0]
        assert stats.chi2_contingency(table).pvalue > 1e-3


def test_meanfield_vi_error_is_reported_and_finite():
    g = random_grammar((2, 3, 3, 2), (2, 2, 2), 2, seed=3)
    lik = _soft_likelihood(g, 3, seed=2, power=3)
    ref = run(g, lik, "bp")
    post = run(g, lik, "meanfield-vi")
    err = max(np.abs(a - b).max() for a, b in zip(post.marginals, ref.marginals))
    assert np.isfinite(err) and 0 < err <= 1
    assert all(np.allclose(m.sum(-1), 1.0) for m in post.marginals)
    # the ELBO is a lower bound on log p(evidence) and never decreases over sweeps
    assert np.all(post.log_evidence <= ref.log_evidence + 1e-9)
    trace = post.extra["elbo_trace"]
    assert np.all(np.diff(trace, axis=0) >= -1e-9)
    assert post.extra["log_evidence_kind"].startswith("ELBO")


def test_meanfield_vi_is_exact_when_the_posterior_factorises():
    """Flat evidence on a uniform grammar: the posterior is the prior, which factorises
    over the class and the rule choices, so mean-field is exact (ELBO = log Z = 0)."""
    g = RHM(v=4, n_classes=3, m=2, s=2, L=3, seed=5)
    lik = np.ones((2, g.d, 4))
    ref = run(g, lik, "bp")
    post = run(g, lik, "meanfield-vi")
    for a, b in zip(post.marginals, ref.marginals):
        np.testing.assert_allclose(a, b, atol=1e-10)
    np.testing.assert_allclose(post.log_evidence, ref.log_evidence, atol=1e-10)
    with pytest.raises(ConfigError, match="init"):
        run(g, lik, "meanfield-vi", init="magic")
    with pytest.raises(ConfigError, match="max_iter must be >= 1, got 0"):
        run(g, lik, "meanfield-vi", max_iter=0)
