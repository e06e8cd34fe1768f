"""Respacing a DDPM schedule: against diffusers' own alphas_cumprod and the authors' spacing."""

from __future__ import annotations

import numpy as np
import pytest

from hiergen.imagenet.schedule import k_grid, respace, spaced_timesteps
from hiergen.models.errors import ConfigError


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("n_steps", [1, 7, 50, 250, 1000])
def test_respaced_schedule_matches_scheduler(beta_schedule, n_steps):
    from diffusers import DDPMScheduler

    sch = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    abar = sch.alphas_cumprod.double().numpy()
    rs = respace(sch.alphas_cumprod, n_steps)
    assert rs.n_steps == n_steps
    # the kept steps keep the scheduler's exact noise level ...
    np.testing.assert_allclose(rs.alphas_cumprod, abar[rs.timesteps], rtol=1e-12)
    # ... and the respaced betas rebuild it as a cumulative product
    np.testing.assert_allclose(np.cumprod(1.0 - rs.betas), abar[rs.timesteps], rtol=1e-8,
                               atol=1e-15)
    assert np.all(rs.betas > 0) and np.all(rs.betas < 1)
    if n_steps == 1000:
        # N = T gives back the original betas (up to the float32 cumprod of the scheduler)
        np.testing.assert_allclose(rs.betas, sch.betas.double().numpy(), rtol=0, atol=5e-7)


def test_authors_spacing_1000_to_250():
    ts = spaced_timesteps(1000, 250)
    # guided-diffusion space_timesteps(1000, "250"): stride 999/249, rounded
    assert ts[0] == 0 and ts[-1] == 999 and len(ts) == 250
    assert ts[1] == 4 and ts[2] == 8 and ts[3] == 12 and ts[124] == round(124 * 999 / 249)
    assert np.all(np.diff(ts) > 0)


def test_timestep_for_k_and_bounds():
    rs = respace(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), 250)
    assert rs.timestep_for_k(250) == 999
    assert rs.timestep_for_k(1) == 0
    with pytest.raises(ConfigError, match="k = 251"):
        rs.timestep_for_k(251)
    with pytest.raises(ConfigError, match="k = 0"):
        rs.timestep_for_k(0)
    pv = rs.posterior_variance
    assert pv[0] == 0 and np.all(pv[1:] > 0) and np.all(pv <= rs.betas)


def test_bad_respacing_inputs():
    with pytest.raises(ConfigError, match="cannot respace 10"):
        respace(np.linspace(1, 0.1, 10), 11)
    with pytest.raises(ConfigError, match="non-increasing"):
        respace(np.array([0.5, 0.9]), 2)
    with pytest.raises(ConfigError, match="at least 2"):
        k_grid(10, 1)


def test_k_grid():
    assert k_grid(50, 11) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert k_grid(3, 10) == [0, 1, 2, 3]
