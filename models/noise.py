"""Noise processes that turn clean leaves into evidence for belief propagation.

Every process takes clean leaves ``x0`` of shape ``(batch, d)`` (ints in ``0..v-1``), a noise
level and a seed, and returns an :class:`Evidence`: the leaf log-likelihoods
``log p(observation | x0_leaf = a)`` of shape ``(batch, d, v)`` (up to a constant per leaf),
which :class:`hiergen.BeliefPropagation` accepts directly.

- :class:`GaussianDiffusion` — DDPM diffusion of one-hot leaves (the paper's eq. 2 and 4):
  ``x_t = sqrt(abar_t) onehot(x0) + sqrt(1 - abar_t) xi`` and
  ``log p(x_t | x0 = a) = sqrt(abar_t) x_t[a] / (1 - abar_t) + const``.
- :class:`UniformCorruption` — the paper's belief corruption (eq. 6–7): leaf message
  ``(1 - eps) delta(a, x0) + eps / v``.
- :class:`Masking` — absorbing discrete diffusion: each leaf is masked with probability
  ``p``; a masked leaf carries a uniform message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hiergen.models.errors import EvidenceError


@dataclass(frozen=True)
class Evidence:
    """Leaf evidence for BP.

    Attributes
    ----------
    log_lik : (batch, d, v) float64
        Leaf log-likelihoods; ``-inf`` marks impossible values.
    kind : name of the noise process that made it.
    level : the noise level (time ``t``, ``eps`` or masking probability).
    observation : the noisy observation itself where it has one (``x_t`` for Gaussian
        diffusion, ``(batch, d, v)``; the mask ``(batch, d)`` bool for masking).
    """

    log_lik: np.ndarray
    kind: str = "custom"
    level: float | None = None
    observation: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.log_lik.shape)

    def likelihood(self) -> np.ndarray:
        """Leaf likelihoods normalised over the alphabet, ``(batch, d, v)``."""
        x = self.log_lik - self.log_lik.max(-1, keepdims=True)
        e = np.exp(x)
        return e / e.sum(-1, keepdims=True)


def _check_leaves(x0: Any, v: int) -> np.ndarray:
    x0 = np.asarray(x0)
    if x0.ndim == 1:
        x0 = x0[None, :]
    if x0.ndim != 2:
        raise EvidenceError(f"clean leaves must have shape (batch, d), got {x0.shape}")
    if not np.issubdtype(x0.dtype, np.integer):
        raise EvidenceError(f"clean leaves must be integer symbols, got dtype {x0.dtype}")
    if x0.size and (x0.min() < 0 or x0.max() >= v):
        raise EvidenceError(f"leaf symbols must be in 0..{v - 1}, found {x0.min()}..{x0.max()}")
    return x0.astype(np.int64, copy=False)


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@dataclass(frozen=True)
class DDPMSchedule:
    """The DDPM linear variance schedule: ``beta_t`` from ``beta_start`` to ``beta_end``.

    Time runs over ``t = 0..T``: ``t = 0`` is clean data (``abar_0 = 1``) and
    ``abar_t = prod_{k=1..t} (1 - beta_k)``. Non-integer ``t`` interpolates ``log abar``
    linearly (continuous time).
    """

    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if int(self.T) != self.T or self.T < 1:
            raise EvidenceError(f"T must be a positive integer, got {self.T}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise EvidenceError(
                f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )

    @property
    def betas(self) -> np.ndarray:
        """(T,) ``beta_1 .. beta_T``."""
        return np.linspace(self.beta_start, self.beta_end, self.T, dtype=np.float64)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """(T+1,) ``abar_0 = 1, abar_1, ..., abar_T``."""
        return np.concatenate([[1.0], np.cumprod(1.0 - self.betas)])

    def alpha_bar(self, t: float | np.ndarray) -> np.ndarray:
        """``abar_t`` for (possibly fractional) ``t`` in ``[0, T]``."""
        t = np.asarray(t, dtype=np.float64)
        if np.any(~np.isfinite(t)) or np.any(t < 0) or np.any(t > self.T):
            raise EvidenceError(f"diffusion time must be in [0, {self.T}], got {t}")
        log_ab = np.log(self.alphas_cumprod)
        return np.exp(np.interp(t, np.arange(self.T + 1), log_ab))

    def snr(self, t: float | np.ndarray) -> np.ndarray:
        """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` (inf at t = 0)."""
        ab = self.alpha_bar(t)
        with np.errstate(divide="ignore"):
            return ab / (1.0 - ab)


@dataclass(frozen=True)
class GaussianDiffusion:
    """Gaussian (DDPM) diffusion of one-hot leaves, with the exact leaf likelihood."""

    v: int
    schedule: DDPMSchedule = field(default_factory=DDPMSchedule)

    def noise(self, x0: Any, t: float, seed: int | np.random.Generator | None = 0) -> np.ndarray:
        """``x_t`` of shape ``(batch, d, v)`` for clean leaves ``x0`` ``(batch, d)``."""
        x0 = _check_leaves(x0, self.v)
        ab = float(self.schedule.alpha_bar(t))
        x_t = _rng(seed).standard_normal(x0.shape + (self.v,))
        x_t *= np.sqrt(1.0 - ab)
        signal = np.take_along_axis(x_t, x0[..., None], axis=-1) + np.sqrt(ab)
        np.put_along_axis(x_t, x0[..., None], signal, axis=-1)  # + sqrt(abar) onehot(x0)
        return x_t

    def log_likelihood(self, x_t: np.ndarray, t: float) -> np.ndarray:
        """``log p(x_t | x0 = a)`` up to a per-leaf constant, ``(batch, d, v)``."""
        x_t = np.asarray(x_t, dtype=np.float64)
        if x_t.ndim != 3 or x_t.shape[-1] != self.v:
            raise EvidenceError(f"x_t must have shape (batch, d, {self.v}), got {x_t.shape}")
        ab = float(self.schedule.alpha_bar(t))
        if ab >= 1.0:
            raise EvidenceError("at t = 0 there is no noise: use exact (one-hot) evidence instead")
        return x_t * (np.sqrt(ab) / (1.0 - ab))

    def evidence(self, x0: Any, t: float, seed: int | np.random.Generator | None = 0) -> Evidence:
        """Noise ``x0`` to time ``t`` and return the exact leaf evidence (t = 0: exact leaves)."""
        x0 = _check_leaves(x0, self.v)
        if float(self.schedule.alpha_bar(t)) >= 1.0:
            return exact_evidence(x0, self.v)
        x_t = self.noise(x0, t, seed)
        return Evidence(self.log_likelihood(x_t, t), kind="gaussian", level=float(t), observation=x_t)


@dataclass(frozen=True)
class UniformCorruption:
    """The paper's uniform belief corruption: leaf message ``(1-eps) delta + eps/v``."""

    v: int

    def evidence(self, x0: Any, eps: float, seed: int | np.random.Generator | None = None) -> Evidence:
        """Deterministic given ``x0`` and ``eps`` (``seed`` is accepted for a uniform API)."""
        x0 = _check_leaves(x0, self.v)
        eps = float(eps)
        if not 0.0 <= eps <= 1.0:
            raise EvidenceError(f"eps must be in [0, 1], got {eps}")
        lik = np.full(x0.shape + (self.v,), eps / self.v)
        np.put_along_axis(lik, x0[..., None], 1.0 - eps + eps / self.v, axis=-1)
        with np.errstate(divide="ignore"):
            return Evidence(np.log(lik), kind="uniform", level=eps)


@dataclass(frozen=True)
class Masking:
    """Absorbing (masking) diffusion: each leaf masked with probability ``p``."""

    v: int

    def evidence(self, x0: Any, p: float, seed: int | np.random.Generator | None = 0) -> Evidence:
        x0 = _check_leaves(x0, self.v)
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise EvidenceError(f"masking probability must be in [0, 1], got {p}")
        mask = _rng(seed).random(x0.shape) < p
        log_lik = exact_evidence(x0, self.v).log_lik
        log_lik[mask] = 0.0
        return Evidence(log_lik, kind="masking", level=p, observation=mask)


def exact_evidence(x0: Any, v: int) -> Evidence:
    """Noiseless evidence: log-likelihood 0 on the observed symbol, ``-inf`` elsewhere."""
    x0 = _check_leaves(x0, v)
    log_lik = np.full(x0.shape + (v,), -np.inf)
    np.put_along_axis(log_lik, x0[..., None], 0.0, axis=-1)
    return Evidence(log_lik, kind="exact", level=0.0)


NOISES = {"gaussian": GaussianDiffusion, "uniform": UniformCorruption, "masking": Masking}


def make_noise(kind: str, v: int, **kwargs: Any) -> GaussianDiffusion | UniformCorruption | Masking:
    """Build a noise process by name: ``"gaussian"``, ``"uniform"`` or ``"masking"``."""
    if kind not in NOISES:
        raise EvidenceError(f"unknown noise {kind!r}; choose one of {', '.join(NOISES)}")
    return NOISES[kind](v=v, **kwargs)
