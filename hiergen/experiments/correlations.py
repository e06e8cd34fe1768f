"""Spatial correlations of the changes of a forward–backward run (BP or a learned denoiser).

For clean leaves ``x0`` ``(n, d)`` and their forward–backward reconstructions ``x0_hat``
``(n, d)`` let ``c_i = 1[x0_hat_i != x0_i]``. The *change correlation* at distance ``r`` is

    C(r) = 1/(d - r) sum_{i=0}^{d-1-r} ( <c_i c_{i+r}> - <c_i> <c_{i+r}> ),   r = 0..d-1,

with ``<.>`` the average over samples (``C(0)`` is the mean variance of one leaf's change).
From it:

- the *susceptibility* ``chi = Var(sum_i c_i) / d = (1/d) sum_{i,j} Cov(c_i, c_j)``, i.e. the
  sum over all distances ``chi = C(0) + 2 sum_{r>=1} (1 - r/d) C(r)`` (exact identity, weights
  ``1 - r/d`` count the pairs at distance ``r``). Independent changes give ``chi = C(0)``;
  changes of whole subtrees (a class change moves all leaves at once) make it large. It peaks
  near the class transition of the forward–backward curve, where the class is changed in
  about half the samples and the number of changed leaves swings between "few" and "most".
- the *correlation length* (second moment) ``xi = sqrt( sum_{r>=1} r^2 C(r) / sum_{r>=0} C(r) )``
  in leaves (0 for independent changes, about ``d / sqrt(3)`` when all leaves change together;
  negative sums from sampling noise are clipped to 0).

:class:`ChangeCorrelation` accumulates the sums over batches (memory ``O(d^2)``);
:func:`change_correlation` is the one-shot version; :func:`bp_change_correlations` runs the
exact-BP forward–backward protocol of :mod:`hiergen.experiments.sweeps` and records these
observables per noise level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from hiergen.models.errors import ConfigError
from hiergen.models.grammar import Grammar


class ChangeCorrelation:
    """Running sums for the change correlation of ``d`` leaves.

    ``add(x0, x0_hat)`` with ``(batch, d)`` integer arrays (or ``add_changes(c)`` with a
    ``(batch, d)`` 0/1 array); :meth:`result` gives ``C`` ``(d,)``, ``chi``, ``xi`` and the
    mean change rate.
    """

    def __init__(self, d: int) -> None:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ConfigError(f"number of leaves d must be a positive integer, got {d!r}")
        self.d = int(d)
        self.n = 0
        self.s1 = np.zeros(self.d)
        self.s2 = np.zeros((self.d, self.d))

    def add(self, x0: Any, x0_hat: Any) -> None:
        """Add a batch of clean leaves ``x0`` and reconstructions ``x0_hat``, ``(batch, d)``."""
        a, b = np.asarray(x0), np.asarray(x0_hat)
        if a.shape != b.shape:
            raise ConfigError(f"x0 and x0_hat must have the same shape, got {a.shape} and {b.shape}")
        self.add_changes(a != b)

    def add_changes(self, changes: Any) -> None:
        """Add a batch of change indicators ``(batch, d)`` (bool or 0/1)."""
        c = np.asarray(changes)
        if c.ndim != 2 or c.shape[1] != self.d:
            raise ConfigError(f"changes must have shape (batch, {self.d}), got {c.shape}")
        c = c.astype(np.float64)
        self.n += c.shape[0]
        self.s1 += c.sum(0)
        self.s2 += c.T @ c

    def covariance(self) -> np.ndarray:
        """``(d, d)`` covariance ``<c_i c_j> - <c_i><c_j>`` over the samples added."""
        if self.n < 1:
            raise ConfigError("no samples added to the change correlation")
        m = self.s1 / self.n
        return self.s2 / self.n - np.outer(m, m)

    def result(self) -> dict[str, Any]:
        """``{"C": (d,), "chi": float, "xi": float, "change_rate": float}``."""
        cov = self.covariance()
        d = self.d
        C = np.array([np.diagonal(cov, offset=r).mean() for r in range(d)])
        return {"C": C, "chi": float(cov.sum() / d), "xi": correlation_length(C),
                "change_rate": float(self.s1.sum() / (self.n * d))}


def correlation_length(C: Any) -> float:
    """Second-moment correlation length ``sqrt(sum_{r>=1} r^2 C(r) / sum_{r>=0} C(r))`` of
    ``C`` ``(d,)`` (0 when the sums are not positive)."""
    C = np.asarray(C, dtype=np.float64)
    r = np.arange(C.size)
    num, den = float((r**2 * C).sum()), float(C.sum())
    if den <= 0 or num <= 0:
        return 0.0
    return math.sqrt(num / den)


def change_correlation(x0: Any, x0_hat: Any) -> dict[str, Any]:
    """Change correlation of one set of samples: ``x0``, ``x0_hat`` ``(n, d)`` ints.

    Returns the dict of :meth:`ChangeCorrelation.result`.
    """
    a = np.asarray(x0)
    if a.ndim != 2:
        raise ConfigError(f"x0 must have shape (n, d), got {a.shape}")
    acc = ChangeCorrelation(a.shape[1])
    acc.add(a, x0_hat)
    return acc.result()


def peak_time(times: Any, y: Any) -> float:
    """Time of the maximum of ``y`` ``(n_t,)``, refined by a parabola through the maximum and
    its two neighbours (the grid point itself at the ends of the range)."""
    t = np.asarray(times, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if t.ndim != 1 or y.shape != t.shape or t.size == 0:
        raise ConfigError(f"times and y must be 1-D of the same length, got {t.shape}, {y.shape}")
    if not np.isfinite(y).any():
        return math.nan
    i = int(np.nanargmax(y))
    if i == 0 or i == t.size - 1 or not np.isfinite(y[i - 1:i + 2]).all():
        return float(t[i])
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    den = y0 - 2 * y1 + y2
    if den >= 0:
        return float(t[i])
    # vertex of the parabola through three (possibly unevenly spaced) points
    h0, h1 = t[i] - t[i - 1], t[i + 1] - t[i]
    slope_l, slope_r = (y1 - y0) / h0, (y2 - y1) / h1
    curv = (slope_r - slope_l) / ((h0 + h1) / 2)
    shift = -((slope_l + slope_r) / 2) / curv if curv < 0 else 0.0
    return float(np.clip(t[i] + shift, t[i - 1], t[i + 1]))


_CORR_ATTRS = {
    "change_corr": ("connected correlation C(r) of leaf changes 1[x0_hat_i != x0_i] at distance r", "1"),
    "chi": ("susceptibility Var(number of changed leaves) / d = sum over r of C(r) with pair weights", "1"),
    "xi": ("second-moment correlation length of leaf changes", "leaves"),
    "leaf_change": ("fraction of leaves whose reconstruction differs from x0", "1"),
    "class_change": ("probability that the reconstruction's class differs from x0's class", "1"),
}


def bp_change_correlations(
    grammar: Grammar,
    times: Sequence[float] | np.ndarray,
    n_samples: int = 2000,
    noise: str = "gaussian",
    seed: int = 0,
    progress: bool = False,
) -> xr.Dataset:
    """Change correlations of the exact forward–backward protocol (BP posterior samples).

    Same data, noise and posterior samples as
    :func:`~hiergen.experiments.sweeps.forward_backward` with the same ``seed`` (float64 BP).
    Returns a Dataset over ``time`` and ``r`` (``0..d-1``): ``change_corr`` ``(time, r)``,
    ``chi``, ``xi``, ``leaf_change``, ``class_change`` ``(time,)``; attrs ``t_peak_chi``
    (:func:`peak_time` of ``chi``) and ``t_star`` (class transition, logistic fit).
    """
    from hiergen._progress import progress_bar
    from hiergen.experiments.analysis import class_limits, transition
    from hiergen.experiments.sweeps import (
        _check_int,
        _check_noise,
        _check_times,
        draw_data,
        forward_backward_point,
    )
    from hiergen.inference.bp import BeliefPropagation
    from hiergen.models.noise import make_noise

    if not isinstance(grammar, Grammar):
        raise ConfigError(f"need a Grammar, got {type(grammar).__name__}")
    _check_noise(noise)
    times = _check_times(times, noise)
    n_samples = _check_int(n_samples, "n_samples", 2)
    bp = BeliefPropagation(grammar)
    proc = make_noise(noise, grammar.vocab_sizes[-1])
    data = draw_data(grammar, n_samples, seed)
    rows = []
    for ti in progress_bar(range(len(times)), enabled=progress, desc="change correlations"):
        acc = ChangeCorrelation(grammar.d)
        cls: list[np.ndarray] = []

        def on_sample(x0: Any, x_hat: Any, acc: ChangeCorrelation = acc, cls: list = cls) -> None:
            acc.add(x0.leaves, x_hat.leaves)
            cls.append(x0.labels != x_hat.labels)

        forward_backward_point(bp, proc, data, float(times[ti]), seed=seed, ti=ti, on_sample=on_sample)
        rows.append({**acc.result(), "class_change": float(np.concatenate(cls).mean())})
    ds = correlation_dataset(times, rows, grammar.d)
    low, high = class_limits(grammar.n_classes, grammar.root_prior)["class_change"]
    ds.attrs.update({"t_peak_chi": peak_time(times, ds["chi"].values),
                     "t_star": transition(times, ds["class_change"].values, low, high).t_star,
                     "noise": noise, "n_samples": n_samples, "seed": int(seed), "grammar": repr(grammar)})
    return ds


def correlation_dataset(times: np.ndarray, rows: Sequence[dict[str, Any]], d: int) -> xr.Dataset:
    """Stack per-time results of :meth:`ChangeCorrelation.result` (plus optional
    ``class_change``) into a Dataset over ``time`` and ``r``."""
    ds = xr.Dataset(coords={"time": np.asarray(times, dtype=np.float64), "r": np.arange(d)})
    ds["change_corr"] = (("time", "r"), np.stack([row["C"] for row in rows]))
    ds["chi"] = ("time", [row["chi"] for row in rows])
    ds["xi"] = ("time", [row["xi"] for row in rows])
    ds["leaf_change"] = ("time", [row["change_rate"] for row in rows])
    if all("class_change" in row for row in rows):
        ds["class_change"] = ("time", [row["class_change"] for row in rows])
    for k, (name, units) in _CORR_ATTRS.items():
        if k in ds:
            ds[k].attrs.update({"long_name": name, "units": units})
    ds["r"].attrs.update({"long_name": "distance between leaves", "units": "leaves"})
    ds["time"].attrs.update({"long_name": "noise level (DDPM time t, or masking probability)"})
    return ds
