"""Independent points of a sweep, computed in one process or as tasks on a Dask cluster, with
the resumable :class:`~hiergen.experiments.store.PointStore` as the source of truth.

The phase-diagram simulations, the backend-comparison sweep and the CNN-probe grid are lists
of independent points. Each sweep gives :func:`run_grid` its points (:class:`GridPoint`: a
file-safe ``key`` and the JSON-able ``params`` that fix its numbers) and a module-level
function ``compute(params, workdir) -> xarray.Dataset``; :func:`run_grid` returns
``{key: dataset}`` and the sweep assembles its result from them, in its own order, so the
result does not depend on where or in which order the points ran.

* **Store** (``store=``): a finished point is loaded, never recomputed; a point is computed
  under its claim (an inter-process lock) and written atomically at once, so processes that
  share the folder split the points and a killed run loses only the points in flight. Each
  point file carries its ``params``; a file whose parameters differ is refused
  (:class:`~hiergen.models.errors.ConfigError`), never mixed in. ``workdir`` is the point's
  own folder ``DIR/work/<key>/`` for large side products (a trained network...), ``None``
  without a store.
* **Dask** (``scheduler=``, as for :func:`hiergen.experiments.distributed.dask_client`): one
  task per point; each task opens the store itself (the folder must be shared by the
  workers), so a lost worker's points are recomputed elsewhere and a rerun skips every
  finished point. Points are seeded by their ``params`` alone, so the numbers are those of
  the serial run whatever the number of workers.
* Progress: a bar advances as points finish (completion order).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from hiergen.models.errors import ConfigError

#: a point dataset's attribute holding its parameters (canonical JSON)
PARAMS_ATTR = "point_params"
#: a point dataset's attribute holding the seconds its computation took
SECONDS_ATTR = "seconds"

Compute = Callable[[Mapping[str, Any], "Path | None"], xr.Dataset]


@dataclass(frozen=True)
class GridPoint:
    """One point: ``key`` (its file name in the store: letters, digits, ``.-_=`` only) and
    ``params`` (JSON-able; everything the point's numbers depend on beyond the store config)."""

    key: str
    params: Mapping[str, Any]


def _canonical(params: Mapping[str, Any]) -> str:
    try:
        return json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"point parameters must be JSON-able numbers and strings: {exc}") from exc


def check_points(points: Sequence[GridPoint]) -> list[GridPoint]:
    """The points as a list; a :class:`ConfigError` for a bad or repeated key or parameters
    that are not JSON-able."""
    points = list(points)
    seen: set[str] = set()
    for p in points:
        if not isinstance(p, GridPoint):
            raise ConfigError(f"grid points must be GridPoint objects, got {p!r}")
        if not p.key or not all(c.isalnum() or c in ".-_=" for c in p.key) or p.key[0] == ".":
            raise ConfigError(f"bad point key {p.key!r}: use letters, digits and . - _ = only")
        if p.key in seen:
            raise ConfigError(f"point key {p.key!r} appears twice in the grid")
        seen.add(p.key)
        _canonical(p.params)
    return points


def _workdir(store: Any, key: str) -> Path | None:
    return None if store is None else store.root / "work" / key


def compute_point(compute: Compute, point: GridPoint, store: Any) -> xr.Dataset:
    """Compute one point (no claim) and save it when ``store`` is given."""
    t0 = time.perf_counter()
    ds = compute(point.params, _workdir(store, point.key))
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"grid compute function returned {type(ds).__name__}, not a Dataset")
    ds.attrs[PARAMS_ATTR] = _canonical(point.params)
    ds.attrs.setdefault(SECONDS_ATTR, time.perf_counter() - t0)
    if store is not None:
        store.save(point.key, ds)
    return ds


def load_point(store: Any, point: GridPoint) -> xr.Dataset:
    """A finished point from ``store`` (a :class:`ConfigError` if its parameters differ)."""
    return store.load(point.key, expect={PARAMS_ATTR: _canonical(point.params)})


def claim_and_compute(compute: Compute, point: GridPoint, store: Any, wait: bool
                      ) -> tuple[xr.Dataset | None, bool]:
    """Under the point's claim: load it if finished meanwhile, else compute and save it.

    Returns ``(dataset, computed)``; ``(None, False)`` when another live process holds the
    claim (only with ``wait=False``).
    """
    with store.claim(point.key, wait=wait) as mine:
        if not mine:
            return None, False
        if store.has(point.key):
            return load_point(store, point), False
        return compute_point(compute, point, store), True


class GridRun:
    """Results and counters of one :func:`run_grid` call."""

    def __init__(self) -> None:
        self.results: dict[str, xr.Dataset] = {}
        self.info: dict[str, Any] = {"points_reused": 0, "points_computed": 0,
                                     "seconds_computed": 0.0}

    def record(self, key: str, ds: xr.Dataset, computed: bool) -> None:
        self.results[key] = ds
        if computed:
            self.info["points_computed"] += 1
            self.info["seconds_computed"] += float(ds.attrs.get(SECONDS_ATTR, 0.0))
        else:
            self.info["points_reused"] += 1


def run_grid(
    compute: Compute,
    points: Sequence[GridPoint],
    *,
    store: Any = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    progress: bool = True,
    desc: str = "points",
) -> tuple[dict[str, xr.Dataset], dict[str, Any]]:
    """Compute or load every point; returns ``({key: dataset}, info)``.

    ``compute``: a module-level function ``(params, workdir) -> xr.Dataset`` (picklable, for
    Dask). ``store``: a :class:`~hiergen.experiments.store.PointStore` or ``None``.
    ``scheduler`` / ``n_workers``: run the points as Dask tasks (see
    :func:`hiergen.experiments.distributed.dask_client`); ``None``: in this process.
    ``info``: ``points_computed``, ``points_reused``, ``seconds_computed``.
    """
    from hiergen._progress import progress_bar

    points = check_points(points)
    if scheduler is not None or n_workers is not None:
        from hiergen.experiments.distributed import check_scheduler

        check_scheduler(scheduler, n_workers)
    run = GridRun()
    todo = []
    for point in points:
        if store is not None and store.has(point.key):
            run.record(point.key, load_point(store, point), False)
        else:
            todo.append(point)
    bar = progress_bar(total=len(points), initial=len(points) - len(todo), desc=desc,
                       enabled=progress, unit="pt")
    try:
        if scheduler is not None and todo:
            from hiergen.experiments.distributed import run_grid_tasks

            for key, ds, computed in run_grid_tasks(compute, todo, store, scheduler,
                                                    n_workers=n_workers):
                run.record(key, ds, computed)
                bar.update(1)
        else:
            _run_serial(compute, todo, store, run, bar)
    finally:
        bar.close()
    return run.results, run.info


def _run_serial(compute: Compute, todo: list[GridPoint], store: Any, run: GridRun, bar: Any) -> None:
    busy = []
    for point in todo:
        bar.set_postfix_str(point.key, refresh=False)
        if store is None:
            run.record(point.key, compute_point(compute, point, None), True)
        else:
            ds, computed = claim_and_compute(compute, point, store, wait=False)
            if ds is None:  # another process computes it: come back to it at the end
                busy.append(point)
                continue
            run.record(point.key, ds, computed)
        bar.update(1)
    for point in busy:
        ds, computed = claim_and_compute(compute, point, store, wait=True)
        run.record(point.key, ds, computed)
        bar.update(1)
