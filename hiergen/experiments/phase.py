"""Exact-BP simulations of the phase diagram of class recovery (the paper's Fig. 6).

For each grammar ``(v, m)`` of the grid and each of two depths, exact BP measures the
probability of the correct class on uniformly corrupted RHM data over a grid of corruption
levels eps; where the deeper tree's root curve falls back below the shallower one is the
simulated critical noise eps* (:func:`~hiergen.inference.meanfield_sim.crossing`).

The points ``(v, m, depth, RHM seed)`` are independent: :func:`simulate_phase` runs them with
:func:`hiergen.experiments.grid.run_grid` — in this process or as tasks on a Dask cluster,
optionally through a resumable point store — and assembles the same numbers either way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hiergen.models._validate import check_int
from hiergen.models.errors import ConfigError

#: what :func:`simulate_phase` calls each grammar's pair of curves (``kind`` codes 0, 1, 2)
SIM_KIND = ("crossing", "lost", "kept")


def phase_point(params: Mapping[str, Any], workdir: Path | None = None) -> xr.Dataset:
    """One point: exact BP on ``n_samples`` data of the RHM ``(v, m, s, L, seed)`` at every
    eps of ``params["eps"]``. Returns ``marginal`` ``(eps, level)``: the mean probability of
    the correct value per level (level 0: the class)."""
    from hiergen.inference.meanfield_sim import bp_reconstruction

    sim = bp_reconstruction(params["eps"], params["v"], params["m"], params["s"], params["L"],
                            n_samples=params["n_samples"], seeds=[params["seed"]])
    ds = xr.Dataset({"marginal": (("eps", "level"), sim.marginal)},
                    coords={"eps": np.asarray(params["eps"], dtype=np.float64)})
    ds["marginal"].attrs.update(long_name="mean BP probability of the correct value",
                                units="1")
    return ds


def _check_grid(pairs: Sequence[tuple[int, int]], s: int, depths: Sequence[int], eps: Any,
                n_samples: int, seeds: Sequence[int]) -> tuple[list[tuple[int, int]], np.ndarray]:
    from hiergen.inference.meanfield import _check_eps, check_params

    s = check_int(s, "s", 2, error=ConfigError)
    check_int(n_samples, "n_samples", 1, error=ConfigError)
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise ConfigError("the phase-diagram simulation needs at least one (v, m) pair")
    for v, m in pairs:
        check_params(v, m, s, None)
    if len(depths) != 2 or depths[0] == depths[1]:
        raise ConfigError(f"depths must be two different depths, got {list(depths)}")
    for L in depths:
        check_int(L, "depth", 1, error=ConfigError)
    if not seeds:
        raise ConfigError("the phase-diagram simulation needs at least one RHM seed")
    for seed in seeds:
        check_int(seed, "seed", 0, error=ConfigError)
    values = np.asarray(eps, dtype=np.float64).ravel()
    if values.size < 2 or np.any(np.diff(values) <= 0):
        raise ConfigError("eps must be at least two increasing corruption levels")
    _check_eps(values)
    return pairs, values


def _store(out: str | os.PathLike[str] | None, s: int, eps: np.ndarray, n_samples: int) -> Any:
    if out is None:
        return None
    from hiergen import __version__
    from hiergen.experiments.store import PointStore

    return PointStore(out, {"kind": "phase-diagram-simulation", "s": s, "noise": "uniform",
                            "eps": eps.tolist(), "n_samples": n_samples, "bp_backend": "numpy",
                            "bp_dtype": "float64", "hiergen_version": __version__})


def simulate_phase(
    pairs: Sequence[tuple[int, int]],
    s: int,
    depths: Sequence[int],
    eps: Any,
    n_samples: int,
    seeds: Sequence[int],
    tol: float = 0.003,
    *,
    out: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Exact-BP root curves at two depths and their crossing for every ``(v, m)`` of ``pairs``.

    Each grammar is drawn for every RHM seed of ``seeds`` (``n_samples`` data each, seeded
    as in :func:`~hiergen.inference.meanfield_sim.bp_reconstruction`). The deeper curve
    counts as better somewhere only when it beats the shallower one by more than ``tol``
    (absolute probability).

    ``out``: a point-store folder (``config.json``, ``points/``); finished points are reused,
    so a killed run resumes and a larger grid reuses the points it shares with a smaller one.
    ``scheduler`` / ``n_workers``: run the points as Dask tasks (``"local"``, an address, a
    scheduler file or a ``distributed.Client``); the numbers are those of the serial run.

    Returns ``root`` / ``root_sem`` ``(len(pairs), 2, len(eps))`` (mean over seeds of the
    probability of the correct class, its standard error across seeds, NaN with one seed),
    ``eps_sim`` ``(len(pairs),)`` (the crossing, NaN when none) and ``kind``
    ``(len(pairs),)`` (index into :data:`SIM_KIND`), plus ``info`` (points computed/reused).
    """
    from hiergen.experiments.grid import GridPoint, run_grid
    from hiergen.inference.meanfield_sim import crossing

    pairs, values = _check_grid(pairs, s, depths, eps, n_samples, seeds)
    seeds = [int(x) for x in seeds]
    base = {"s": int(s), "eps": values.tolist(), "n_samples": int(n_samples)}
    points = {
        (v, m, L, seed): GridPoint(f"v{v}-m{m}-L{L}-seed{seed}",
                                   {**base, "v": int(v), "m": int(m), "L": int(L), "seed": seed})
        for v, m in dict.fromkeys(pairs) for L in depths for seed in seeds
    }
    results, info = run_grid(phase_point, list(points.values()),
                             store=_store(out, int(s), values, int(n_samples)),
                             scheduler=scheduler, n_workers=n_workers, progress=progress,
                             desc="BP phase points")
    n = len(pairs)
    root = np.full((n, 2, values.size), np.nan)
    sem = np.full((n, 2, values.size), np.nan)
    eps_sim, kind = np.full(n, np.nan), np.zeros(n, dtype=np.int64)
    for k, (v, m) in enumerate(pairs):
        for j, L in enumerate(depths):
            marg = np.stack([results[points[(v, m, L, seed)].key]["marginal"].values
                             for seed in seeds])
            root[k, j] = marg.mean(0)[:, 0]
            if len(seeds) > 1:
                sem[k, j] = (marg.std(0, ddof=1) / np.sqrt(len(seeds)))[:, 0]
        eps_sim[k] = crossing(values, root[k, 0], root[k, 1], tol=tol)
        if np.isfinite(eps_sim[k]):
            kind[k] = 0
        else:
            kind[k] = 1 if (root[k, 1] - root[k, 0]).max() <= tol else 2
    return {"root": root, "root_sem": sem, "eps_sim": eps_sim, "kind": kind, "info": info}


__all__ = ["SIM_KIND", "phase_point", "simulate_phase"]
