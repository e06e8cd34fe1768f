"""Backend comparisons over many problems: corruption levels x seeds x backends, as a grid.

:func:`hiergen.inference.compare.compare_backends` compares backends on one problem.
:func:`sweep_compare` repeats it over a grid of problems — every corruption level ``eps`` of
``eps_values`` and every seed of ``seeds`` — with one independent point per
``(eps, seed, backend)``, run by :func:`hiergen.experiments.grid.run_grid`: in this process or
as tasks on a Dask cluster, optionally through a resumable
:class:`~hiergen.experiments.store.PointStore`.

A point draws its problem exactly as ``hiergen compare`` does::

    rhm = RHM(v, n_classes, m, s, L, seed=seed)
    data = rhm.sample(n, seed=seed + 1)
    evidence = UniformCorruption(v).evidence(data.leaves, eps, seed=seed + 2)

and runs ``compare_backends(rhm, evidence, [backend], truth=data.labels, options=...)``; its
result is that single row (stored as a JSON attribute of the point's dataset, NaN included).
A backend that refuses the problem gives a row with its error, like ``compare_backends``; that
point is finished and is not retried. The backends in :data:`SEEDED_BACKENDS` get the
problem's seed as their ``seed`` option unless ``options`` set one (as ``hiergen compare``
does), so every number is fixed by the point's parameters: a serial run, a rerun from the
store and a Dask run give the same table, except the ``seconds`` timings of recomputed points.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from hiergen.models._validate import check_int
from hiergen.models.errors import BackendError, ConfigError

#: the point dataset's attribute holding the comparison row (JSON, NaN allowed)
ROW_ATTR = "comparison_row"
#: the RHM parameters a sweep needs
RHM_KEYS = ("v", "n_classes", "m", "s", "L")
#: backends whose ``seed`` option follows the problem's seed unless ``options`` set one
SEEDED_BACKENDS = ("numpyro-sample", "mcmc", "meanfield-vi")
#: the store's ``kind``
KIND = "backend-comparison"


def compare_point(params: Mapping[str, Any], workdir: Path | None = None) -> xr.Dataset:
    """One point: ``compare_backends`` on the problem ``(RHM params, n, eps, seed)`` with the
    single backend ``params["backend"]`` and its ``params["options"]``.

    Returns a dataset without variables whose attribute :data:`ROW_ATTR` holds the row
    (``{column: value}`` in ``compare_backends``' column order, JSON with NaN).
    """
    from hiergen.inference.compare import compare_backends
    from hiergen.models.noise import UniformCorruption
    from hiergen.models.rhm import RHM

    seed = int(params["seed"])
    rhm = RHM(**{k: int(params[k]) for k in RHM_KEYS}, seed=seed)
    data = rhm.sample(int(params["n"]), seed=seed + 1)
    ev = UniformCorruption(rhm.v).evidence(data.leaves, float(params["eps"]), seed=seed + 2)
    backend = params["backend"]
    df = compare_backends(rhm, ev, [backend], truth=data.labels,
                          options={backend: dict(params["options"])}, progress=False)
    row = {col: _plain(df[col].iloc[0]) for col in df.columns}
    seconds = row.get("seconds")
    attrs = {ROW_ATTR: json.dumps(row, allow_nan=True)}
    if isinstance(seconds, float) and math.isfinite(seconds):
        attrs["seconds"] = seconds
    return xr.Dataset(attrs=attrs)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number/string it holds (exact; NaN stays NaN)."""
    return value.item() if hasattr(value, "item") else value


def point_row(ds: xr.Dataset) -> dict[str, Any]:
    """The comparison row of a point dataset (from :func:`compare_point` or the store)."""
    try:
        row = json.loads(ds.attrs[ROW_ATTR])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"sweep point without a readable comparison row: {exc}") from exc
    if not isinstance(row, dict):
        raise ConfigError("sweep point's comparison row is not a JSON object")
    return row


# ----------------------------------------------------------------------------- validation
def check_rhm_params(rhm_params: Mapping[str, Any]) -> dict[str, int]:
    """``{v, n_classes, m, s, L}`` as ints (:func:`hiergen.models.rhm.check_rhm_params`)."""
    from hiergen.models.rhm import check_rhm_params as check

    return check(rhm_params, RHM_KEYS)


def _as_list(values: Any, name: str) -> list[Any]:
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"{name} must be a list, got {values!r}")
    return list(values)


def _check_eps(eps_values: Any) -> list[float]:
    values = []
    for e in _as_list(eps_values, "eps_values"):
        if isinstance(e, (bool, str, bytes)):
            raise ConfigError(f"eps values must be numbers, got {e!r}")
        try:
            x = float(e)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"eps values must be numbers, got {e!r}") from exc
        if not 0.0 <= x <= 1.0:  # also refuses NaN
            raise ConfigError(f"eps must be in [0, 1], got {x!r}")
        values.append(x)
    return _distinct(values, "eps")


def _distinct(values: list[Any], name: str) -> list[Any]:
    if not values:
        raise ConfigError(f"the comparison sweep needs at least one {name} value")
    repeated = sorted({x for x in values if values.count(x) > 1}, key=str)
    if repeated:
        raise ConfigError(f"{name} values must be distinct; repeated: {repeated}")
    return values


def _check_backends(backends: Sequence[str]) -> list[str]:
    from hiergen.inference.registry import available_backends

    backends = _as_list(backends, "backends")
    unknown = [b for b in backends if b not in available_backends()]
    if unknown:
        raise BackendError(
            f"unknown backend(s) {unknown}; available: {', '.join(available_backends())}")
    return _distinct(backends, "backend")


def _check_options(options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    from hiergen.inference.registry import available_backends

    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"options must map backend names to option dicts, got {options!r}")
    unknown = [b for b in options if b not in available_backends()]
    if unknown:
        raise BackendError(f"options for unknown backend(s) {unknown}; "
                           f"available: {', '.join(available_backends())}")
    out = {}
    for name, opts in options.items():
        if not isinstance(opts, Mapping):
            raise ConfigError(f"options[{name!r}] must be a dict of options, got {opts!r}")
        try:
            json.dumps(dict(opts), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"options[{name!r}] must be JSON-able (numbers, strings, lists), "
                              f"as the store records them: {exc}") from exc
        out[name] = dict(opts)
    return out


def point_options(backend: str, seed: int, options: Mapping[str, Mapping[str, Any]]
                  ) -> dict[str, Any]:
    """The options a point passes to ``backend``: ``options[backend]``, plus ``seed=seed`` for
    the :data:`SEEDED_BACKENDS` when not set there."""
    opts = dict(options.get(backend, {}))
    if backend in SEEDED_BACKENDS:
        opts.setdefault("seed", seed)
    return opts


# ----------------------------------------------------------------------------- the sweep
def _store(out: str | os.PathLike[str] | None, rhm: Mapping[str, int], n: int,
           options: Mapping[str, Any]) -> Any:
    if out is None:
        return None
    from hiergen import __version__
    from hiergen.experiments.store import PointStore

    return PointStore(out, {"kind": KIND, **rhm, "n": n, "noise": "uniform",
                            "options": options, "seeded_backends": list(SEEDED_BACKENDS),
                            "hiergen_version": __version__})


def comparison_points(rhm: Mapping[str, int], eps_values: Sequence[float], seeds: Sequence[int],
                      backends: Sequence[str], n: int, options: Mapping[str, Any]) -> list[Any]:
    """The grid points in the table's order: eps, then seed, then the backends' order."""
    from hiergen.experiments.grid import GridPoint

    return [GridPoint(f"eps{eps!r}_seed{seed}_{backend}",
                      {**rhm, "n": n, "eps": eps, "seed": seed, "backend": backend,
                       "options": point_options(backend, seed, options)})
            for eps in eps_values for seed in seeds for backend in backends]


def sweep_compare(
    rhm_params: Mapping[str, Any],
    eps_values: Sequence[float],
    seeds: Sequence[int],
    backends: Sequence[str],
    *,
    n: int = 8,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    out: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    progress: bool = True,
) -> Any:
    """Compare ``backends`` on every problem ``(eps, seed)``; returns a ``pandas.DataFrame``.

    Parameters
    ----------
    rhm_params : ``{"v", "n_classes", "m", "s", "L"}`` of the RHM (drawn anew for each seed).
    eps_values : uniform-corruption levels in [0, 1] (distinct).
    seeds : seeds >= 0 of the rules, data and noise (distinct); see the module docstring.
    backends : registry names (distinct); unknown names raise :class:`BackendError`.
    n : noisy data per problem (the batch of each comparison).
    options : per-backend constructor options, e.g. ``{"mcmc": {"num_samples": 2000}}``
        (JSON-able); the :data:`SEEDED_BACKENDS` get ``seed=<problem seed>`` unless set here.
    out : a point-store folder (``config.json``, ``points/``): finished points are reused, so a
        rerun computes nothing and a larger grid computes only its new points; a folder holding
        another configuration (RHM, ``n``, ``options``, version) is refused.
    scheduler, n_workers : run the points as Dask tasks (``"local"``, an address, a scheduler
        file or a ``distributed.Client``); the numbers are those of the serial run.
    progress : a progress bar over the points (standard error).

    Returns
    -------
    One row per ``(eps, seed, backend)``, ordered by eps, then seed, then ``backends``; the
    columns ``eps`` and ``seed``, then those of
    :func:`~hiergen.inference.compare.compare_backends`. ``df.attrs`` holds the run's
    ``points_computed``, ``points_reused`` and ``seconds_computed``.
    """
    from hiergen.experiments.grid import run_grid

    rhm = check_rhm_params(rhm_params)
    eps_list = _check_eps(eps_values)
    seed_list = _distinct([check_int(s, "seed", 0) for s in _as_list(seeds, "seeds")], "seed")
    names = _check_backends(backends)
    n = check_int(n, "n", 1)
    opts = _check_options(options)
    if scheduler is not None or n_workers is not None:
        from hiergen.experiments.distributed import check_scheduler

        check_scheduler(scheduler, n_workers)
    points = comparison_points(rhm, eps_list, seed_list, names, n, opts)
    results, info = run_grid(compare_point, points, store=_store(out, rhm, n, opts),
                             scheduler=scheduler, n_workers=n_workers, progress=progress,
                             desc="comparison points")
    rows = [{"eps": p.params["eps"], "seed": p.params["seed"], **point_row(results[p.key])}
            for p in points]
    df = comparison_table(rows)
    df.attrs.update(info)
    return df


def comparison_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Rows ``{eps, seed, <compare_backends columns>}`` as a DataFrame with
    ``compare_backends``' column order (missing values NaN)."""
    import pandas as pd

    df = pd.DataFrame(list(rows))
    first = ["eps", "seed", "backend", "kind", "seconds", "max_abs_dmarginal",
             "abs_dlog_evidence", "class_accuracy", "bp_class_accuracy", "target", "n_items"]
    rest = [c for c in df.columns if c not in first and c != "error"]
    return df[first + rest + ["error"]]


def format_sweep(df: Any) -> str:
    """A readable table: :func:`~hiergen.inference.compare.format_comparison` for a single
    problem, else one table with ``eps`` and ``seed`` columns and the errors listed below."""
    from hiergen.inference.compare import format_comparison

    problems = df[["eps", "seed"]].drop_duplicates()
    if len(problems) == 1:
        return format_comparison(df.drop(columns=["eps", "seed"]).reset_index(drop=True))
    cols = ["eps", "seed", "backend", "kind", "seconds", "max_abs_dmarginal",
            "abs_dlog_evidence", "class_accuracy", "rhat_class_max"]
    cols = [c for c in cols if c in df.columns]
    text = df[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}", na_rep="-")
    errors = [f"  eps={r.eps:g} seed={r.seed} {r.backend}: {r.error}"
              for r in df.itertuples() if r.error]
    if errors:
        text += "\nbackends that did not run:\n" + "\n".join(errors)
    return text


__all__ = ["KIND", "ROW_ATTR", "SEEDED_BACKENDS", "compare_point", "comparison_table",
           "format_sweep", "point_row", "sweep_compare"]
