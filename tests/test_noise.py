"""Noise processes: schedules, exact leaf likelihoods, statistics, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, multivariate_normal

from hiergen.models.errors import EvidenceError
from hiergen.models.noise import (
    DDPMSchedule,
    Evidence,
    GaussianDiffusion,
    Masking,
    UniformCorruption,
    exact_evidence,
    make_noise,
)


def test_ddpm_linear_schedule_values():
    sch = DDPMSchedule()
    ab = sch.alphas_cumprod
    assert ab.shape == (1001,) and ab[0] == 1.0
    assert ab[1] == pytest.approx(1 - 1e-4)
    assert ab[2] == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999)))
    assert 1e-5 < ab[-1] < 1e-4  # about 4e-5 for the standard DDPM schedule
    assert np.all(np.diff(ab) < 0)
    # continuous time interpolates between integer steps
    assert ab[10] > sch.alpha_bar(10.5) > ab[11]
    assert sch.alpha_bar(10.0) == pytest.approx(ab[10])


def test_gaussian_log_likelihood_is_the_exact_gaussian_density_up_to_a_constant():
    v, t = 5, 400
    proc = GaussianDiffusion(v)
    x0 = np.array([[0, 3, 4]])
    x_t = proc.noise(x0, t, seed=1)
    ll = proc.log_likelihood(x_t, t)
    ab = proc.schedule.alpha_bar(t)
    for i in range(3):
        exact = np.array([
            multivariate_normal(np.sqrt(ab) * np.eye(v)[a], (1 - ab) * np.eye(v)).logpdf(x_t[0, i])
            for a in range(v)
        ])
        np.testing.assert_allclose(ll[0, i] - ll[0, i].max(), exact - exact.max(), atol=1e-9)


def test_gaussian_noise_statistics_and_seeding():
    proc = GaussianDiffusion(4)
    x0 = np.zeros((2000, 8), dtype=int)
    t = 250
    ab = proc.schedule.alpha_bar(t)
    x_t = proc.noise(x0, t, seed=0)
    # per coordinate: mean sqrt(ab) on the true symbol, 0 elsewhere; variance 1 - ab
    np.testing.assert_allclose(x_t[..., 0].mean(), np.sqrt(ab), atol=0.02)
    np.testing.assert_allclose(x_t[..., 1:].mean(), 0.0, atol=0.02)
    np.testing.assert_allclose(x_t.var(axis=(0, 1)), 1 - ab, rtol=0.05)
    np.testing.assert_array_equal(proc.noise(x0[:3], t, seed=5), proc.noise(x0[:3], t, seed=5))
    assert not np.array_equal(proc.noise(x0[:3], t, seed=5), proc.noise(x0[:3], t, seed=6))
    ev = proc.evidence(x0[:3], 0, seed=0)
    assert ev.kind == "exact"  # t = 0: clean leaves


def test_uniform_corruption_message():
    ev = UniformCorruption(4).evidence(np.array([[1, 2]]), 0.4)
    lik = np.exp(ev.log_lik)
    np.testing.assert_allclose(lik[0, 0], [0.1, 0.7, 0.1, 0.1])
    np.testing.assert_allclose(lik[0, 1], [0.1, 0.1, 0.7, 0.1])
    np.testing.assert_allclose(np.exp(UniformCorruption(4).evidence([[0]], 1.0).log_lik), 0.25)


def test_masking_fraction_and_messages():
    x0 = np.random.default_rng(0).integers(0, 6, (300, 16))
    ev = Masking(6).evidence(x0, 0.3, seed=4)
    mask = ev.observation
    assert binomtest(int(mask.sum()), mask.size, 0.3).pvalue > 1e-3
    np.testing.assert_array_equal(ev.log_lik[mask], 0.0)
    kept = ~mask
    np.testing.assert_array_equal(ev.log_lik[kept].argmax(-1), x0[kept])
    assert np.isneginf(ev.log_lik[kept]).sum() == kept.sum() * 5


def test_exact_evidence_and_likelihood_helper():
    ev = exact_evidence(np.array([[2, 0]]), 3)
    np.testing.assert_array_equal(ev.likelihood()[0], [[0, 0, 1], [1, 0, 0]])
    assert isinstance(make_noise("uniform", 3), UniformCorruption)
    assert isinstance(ev, Evidence) and ev.shape == (1, 2, 3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: GaussianDiffusion(4).evidence([[0, 1]], 1001), "diffusion time"),
        (lambda: GaussianDiffusion(4).evidence([[0, 1]], -1), "diffusion time"),
        (lambda: GaussianDiffusion(4).evidence([[0, 7]], 10), "leaf symbols"),
        (lambda: UniformCorruption(4).evidence([[0, 1]], 1.5), "eps"),
        (lambda: Masking(4).evidence([[0, 1]], -0.1), "masking probability"),
        (lambda: UniformCorruption(4).evidence(np.zeros((2, 2, 2), int), 0.1), "shape"),
        (lambda: UniformCorruption(4).evidence([[0.5, 1.0]], 0.1), "integer"),
        (lambda: DDPMSchedule(beta_start=0.5, beta_end=0.1), "beta"),
        (lambda: make_noise("poisson", 4), "unknown noise"),
        (lambda: GaussianDiffusion(4).log_likelihood(np.zeros((1, 2, 3)), 5), "shape"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(EvidenceError, match=match):
        call()
