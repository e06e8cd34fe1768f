"""Respacing a DDPM noise schedule to fewer steps, and the reversal-step -> timestep map.

The authors' protocol (guided-diffusion's ``space_timesteps(1000, "250")``) keeps N of the
T original timesteps, evenly spaced with rounding, ``t_i = round(i * (T - 1) / (N - 1))``
for ``i = 0 .. N-1``, and recomputes the betas of the shorter chain from the *original*
cumulative products so that the kept timesteps keep their exact noise level:

    abar'_i = abar[t_i],      beta'_i = 1 - abar[t_i] / abar[t_{i-1}]   (abar[t_{-1}] = 1).

Reversal step k (0 <= k <= N) noises a start image to ``t_{k-1}`` (k = 0: no noise, the start
image itself; k = N: pure Gaussian noise) and runs the respaced reverse chain down to 0.

Everything here is numpy; :func:`respace` accepts a torch tensor too (``scheduler.alphas_cumprod``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hiergen.models.errors import ConfigError


@dataclass(frozen=True)
class RespacedSchedule:
    """A respaced DDPM schedule of N steps.

    Attributes
    ----------
    timesteps : (N,) int64, increasing original timesteps ``t_0 = 0 < ... < t_{N-1} = T - 1``
        (the values fed to the UNet).
    alphas_cumprod : (N,) float64, ``abar[t_i]`` of the original schedule.
    betas : (N,) float64, respaced betas ``1 - abar'_i / abar'_{i-1}``.
    num_train_timesteps : T of the original schedule.
    """

    timesteps: np.ndarray
    alphas_cumprod: np.ndarray
    betas: np.ndarray
    num_train_timesteps: int

    @property
    def n_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        """(N,) ``abar'_{i-1}`` with ``abar'_{-1} = 1``."""
        return np.concatenate([[1.0], self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> np.ndarray:
        """(N,) variance of q(x_{i-1} | x_i, x_0): ``beta'_i (1 - abar'_{i-1}) / (1 - abar'_i)``."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    def timestep_for_k(self, k: int) -> int:
        """Original timestep a start image is noised to at reversal step k (k >= 1)."""
        self._check_k(k)
        if k == 0:
            raise ConfigError("reversal step k = 0 has no timestep: it returns the start image")
        return int(self.timesteps[k - 1])

    def _check_k(self, k: int) -> None:
        if not 0 <= int(k) <= self.n_steps:
            raise ConfigError(f"reversal step k = {k} is outside 0..{self.n_steps}")


def spaced_timesteps(num_train_timesteps: int, n_steps: int) -> np.ndarray:
    """(n_steps,) int64 evenly spaced kept timesteps ``round(i (T-1) / (N-1))``.

    Equal to guided-diffusion's single-section spacing (``space_timesteps(T, str(N))``).
    """
    T, N = int(num_train_timesteps), int(n_steps)
    if not 1 <= N <= T:
        raise ConfigError(f"cannot respace {T} training timesteps to {N} steps (need 1 <= N <= T)")
    if N == 1:
        return np.array([0], dtype=np.int64)
    stride = (T - 1) / (N - 1)
    ts = np.array([round(i * stride) for i in range(N)], dtype=np.int64)
    if len(np.unique(ts)) != N:  # cannot happen for N <= T, kept as a guard
        raise ConfigError(f"respacing {T} -> {N} produced repeated timesteps")
    return ts


def respace(alphas_cumprod, n_steps: int) -> RespacedSchedule:
    """Respace an original schedule given by its cumulative products.

    Parameters
    ----------
    alphas_cumprod : (T,) array or torch tensor, ``abar_t`` of the original schedule
        (e.g. ``DDPMScheduler.alphas_cumprod``).
    n_steps : N, the number of kept steps.
    """
    try:
        abar = np.asarray(alphas_cumprod.detach().cpu().double().numpy())
    except AttributeError:
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
    if abar.ndim != 1 or abar.size == 0:
        raise ConfigError(f"alphas_cumprod must be a non-empty 1-d array, got shape {abar.shape}")
    if not (np.all(abar > 0) and np.all(abar <= 1) and np.all(np.diff(abar) <= 0)):
        raise ConfigError("alphas_cumprod must be in (0, 1] and non-increasing")
    ts = spaced_timesteps(abar.size, n_steps)
    kept = abar[ts]
    prev = np.concatenate([[1.0], kept[:-1]])
    betas = 1.0 - kept / prev
    return RespacedSchedule(ts, kept, betas, int(abar.size))


def k_grid(n_steps: int, n_points: int) -> list[int]:
    """``n_points`` reversal steps evenly spread over 0..N, always including 0 and N."""
    if n_points < 2:
        raise ConfigError(f"need at least 2 reversal steps (0 and N), got {n_points}")
    ks = np.unique(np.round(np.linspace(0, n_steps, n_points)).astype(int))
    return [int(k) for k in ks]
