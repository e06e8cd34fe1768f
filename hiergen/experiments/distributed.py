"""Sweep points as tasks on a Dask cluster (``dask.distributed``).

:func:`hiergen.experiments.sweeps.sweep_forward_backward` (and :func:`forward_backward`) take
``scheduler=``; this module runs their points there instead of in the serial in-process loop
(:func:`run_points`, the design below). The other sweeps (phase diagram, backend comparisons,
CNN-probe grid) are generic grids of :mod:`hiergen.experiments.grid`, whose points run here as
:func:`grid_task` tasks (:func:`run_grid_tasks`) with the same store rules.

Design
------
* **One task per point** ``(L, seed, time)``: points of one depth differ a lot in cost (BP on
  depth 8 is ~25x depth 2 in the demo), so small tasks balance the load; a lost worker costs
  one point per thread; a rerun or a retry redoes single points. The clean data of a
  ``(L, seed)`` group are shared by its times: every worker keeps the BP objects and drawn
  data of its last :data:`GROUP_CACHE` groups, so it draws each group's data at most once.
* **The store is the source of truth.** Each task opens the sweep's
  :class:`~hiergen.experiments.store.PointStore` (the output folder must be on a file system
  shared by the workers), claims its point with the store's inter-process lock, skips it when
  finished meanwhile, else computes it and writes it atomically; it returns the point's small
  dataset to the driver, which assembles and writes the result file exactly as the serial run.
  Without ``out`` the tasks only return their points.
* **Lost workers.** When a worker process dies, the scheduler reruns its tasks elsewhere
  (Dask's ``distributed.scheduler.allowed-failures``, default 3); the dead worker's claims
  vanish with it (``flock``), its half-written files are ignored. If the whole run dies, a
  rerun skips every finished point.
* **Identical numbers.** The data, noise and posterior samples of a point are seeded from
  ``(seed, L, time index, block)`` alone, so any number of workers, any order, gives the
  numbers of the serial run (only the ``seconds`` timings differ).

``scheduler``: a ``distributed.Client``; ``"local"`` / ``"processes"`` (a ``LocalCluster`` of
single-threaded worker processes, one per core unless ``n_workers``); ``"threads"`` (one
in-process worker with threads); a scheduler address ``"tcp://host:8786"``; or the path of a
scheduler file (``*.json``, as written by ``dask scheduler --scheduler-file``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hiergen.models.errors import ConfigError

#: (L, seed) groups whose BP objects and drawn data a worker thread keeps
GROUP_CACHE = 8
LOCAL_NAMES = ("local", "processes", "threads")
#: how long to try reaching a remote scheduler
CONNECT_TIMEOUT = "20s"
_ADDRESS_SCHEMES = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")


@dataclass
class PointSpec:
    """Everything a worker needs to compute points of one sweep (sent once per worker).

    ``grammars``: ``{(L, seed): Grammar}``; ``store_root``/``store_config``: the sweep's
    :class:`~hiergen.experiments.store.PointStore` (``None`` without ``out``).
    """

    times: np.ndarray
    grammars: dict[tuple[int, int], Any]
    n_samples: int
    noise: str
    bp_kw: dict[str, Any]
    store_root: str | None
    store_config: dict[str, Any] | None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


# ---------------------------------------------------------------------------- worker side
_CACHE_LOCK = threading.Lock()
_STORES: dict[str, Any] = {}
_RUNNERS: OrderedDict[tuple, Any] = OrderedDict()


def _open_store(root: str | None, config: dict[str, Any] | None, token: str) -> Any:
    """This worker's :class:`~hiergen.experiments.store.PointStore` of run ``token`` (opened,
    and its config checked, once per worker); ``None`` without a store."""
    if root is None:
        return None
    with _CACHE_LOCK:
        if token not in _STORES:
            from hiergen.experiments.store import PointStore

            _STORES[token] = PointStore(root, config or {})
        return _STORES[token]


def _worker_runner(spec: PointSpec, L: int, seed: int) -> Any:
    """The ``_Runner`` of this thread for group ``(L, seed)`` (an LRU of :data:`GROUP_CACHE`)."""
    from hiergen.experiments.sweeps import _Runner

    key = (spec.token, L, seed, threading.get_ident())
    store = _open_store(spec.store_root, spec.store_config, spec.token)
    with _CACHE_LOCK:
        run = _RUNNERS.pop(key, None)
        if run is None:
            run = _Runner(spec.times, lambda lv, s: spec.grammars[(lv, s)],
                          n_samples=spec.n_samples, noise=spec.noise, store=store, **spec.bp_kw)
        _RUNNERS[key] = run
        while len(_RUNNERS) > GROUP_CACHE:
            _RUNNERS.popitem(last=False)
    return run


def compute_point(spec: PointSpec, task: Any) -> tuple[Any, xr.Dataset, bool]:
    """Dask task: compute point ``task`` (a ``_Task``) or load it when another process finished
    it; with a store, under the point's claim and saved atomically before returning.

    Returns ``(task, point dataset (level,), computed)``.
    """
    run = _worker_runner(spec, task.L, task.seed)
    before = run.info["points_computed"]
    if run.store is None:
        run.compute(task)
    else:
        run.claim_and_run(task, wait=True)
    return task, run.results.pop(task), run.info["points_computed"] > before


# ---------------------------------------------------------------------------- driver side
def _import_distributed() -> Any:
    try:
        import dask.distributed as distributed
    except ImportError as exc:
        raise ConfigError(
            "a Dask scheduler needs dask.distributed: pip install 'hiergen[dist]' "
            "(or 'dask[distributed]')"
        ) from exc
    return distributed


#: Dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes glibc map
#: and unmap every large NumPy temporary: BP ran 2.5x slower per point (measured). Our local
#: clusters leave glibc's default (the setting for remote workers: docs/scale_out.md).
WORKER_ENV_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                     "distributed.worker.profile.enabled": False}


def _local_cluster(distributed: Any, kind: str, n_workers: int | None) -> Any:
    import dask

    n = n_workers or os.cpu_count() or 1
    if kind == "threads":
        return distributed.LocalCluster(n_workers=1, threads_per_worker=n, processes=False,
                                        dashboard_address=":0")
    with dask.config.set(WORKER_ENV_CONFIG):
        return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                        dashboard_address=":0")


@contextlib.contextmanager
def dask_client(scheduler: Any, n_workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (see the module docs); a client or cluster
    this function made is closed on exit, a given ``Client`` is left open."""
    check_scheduler(scheduler, n_workers)
    distributed = _import_distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    text = os.fspath(scheduler)
    if text in LOCAL_NAMES:
        with _local_cluster(distributed, text, n_workers) as cluster, \
                distributed.Client(cluster) as client:
            yield client
        return
    kw = _address_kwargs(text)
    try:
        client = distributed.Client(**kw, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler {text!r}: {exc}") from exc
    with client:
        yield client


def check_scheduler(scheduler: Any, n_workers: int | None = None) -> None:
    """Validate ``scheduler`` / ``n_workers`` without connecting (a :class:`ConfigError`
    naming the problem); ``None`` (the serial path) is always valid."""
    if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int)
                                  or n_workers < 1):
        raise ConfigError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    local = isinstance(scheduler, (str, os.PathLike)) and os.fspath(scheduler) in LOCAL_NAMES
    if n_workers is not None and not local:
        raise ConfigError(f"n_workers applies to a local scheduler ('local', 'processes' or "
                          f"'threads'), not to scheduler={scheduler!r}")
    if scheduler is None:
        return
    distributed = _import_distributed()
    if isinstance(scheduler, distributed.Client):
        return
    if not isinstance(scheduler, (str, os.PathLike)):
        raise ConfigError(
            f"scheduler must be None, a dask Client, {', '.join(map(repr, LOCAL_NAMES))}, a "
            f"scheduler address (tcp://host:port) or a scheduler file, got {scheduler!r}"
        )
    if not local:
        _address_kwargs(os.fspath(scheduler))


def _address_kwargs(text: str) -> dict[str, str]:
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise ConfigError(f"Dask scheduler file {text} not found")
        return {"scheduler_file": text}
    host, _, port = text.rpartition(":")
    if text.startswith(_ADDRESS_SCHEMES) or (host and port.isdigit()):
        return {"address": text}
    raise ConfigError(
        f"unknown scheduler {text!r}: use {', '.join(map(repr, LOCAL_NAMES))}, an address "
        "like tcp://host:8786, or a scheduler file ending in .json"
    )


def run_points(
    run: Any,
    todo: list[Any],
    spec: PointSpec,
    scheduler: Any,
    *,
    n_workers: int | None,
    on_done: Callable[[Any], None],
) -> None:
    """Compute the points ``todo`` as Dask tasks and record them in the driver's ``_Runner``
    ``run`` (results and ``points_computed`` / ``points_reused`` / ``seconds_computed``),
    calling ``on_done(task)`` as each finishes (in completion order)."""
    distributed = _import_distributed()
    with dask_client(scheduler, n_workers) as client:
        spec_future = client.scatter(spec, broadcast=True, hash=False)
        futures = [
            client.submit(compute_point, spec_future, task, pure=False,
                          key=f"hiergen-fb-{spec.token[:12]}-{task.key}")
            for task in todo
        ]
        try:
            for fut in distributed.as_completed(futures):
                task, ds, computed = fut.result()
                _record(run, task, ds, computed)
                on_done(task)
        finally:
            client.cancel(futures + [spec_future])


# ---------------------------------------------------------------------------- generic grids
def grid_task(compute: Callable[..., xr.Dataset], point: Any, store_root: str | None,
              store_config: dict[str, Any] | None, token: str) -> tuple[str, xr.Dataset, bool]:
    """Dask task of :func:`hiergen.experiments.grid.run_grid`: compute ``point`` (a
    ``GridPoint``), or load it when another process finished it; with a store, under the
    point's claim and saved atomically before returning. Returns ``(key, dataset, computed)``."""
    from hiergen.experiments.grid import claim_and_compute, compute_point

    if store_root is None:
        return point.key, compute_point(compute, point, None), True
    store = _open_store(store_root, store_config, token)
    ds, computed = claim_and_compute(compute, point, store, wait=True)
    return point.key, ds, computed


def run_grid_tasks(compute: Callable[..., xr.Dataset], todo: list[Any], store: Any,
                   scheduler: Any, *, n_workers: int | None) -> Iterator[tuple[str, xr.Dataset, bool]]:
    """Submit one :func:`grid_task` per point of ``todo``; yields ``(key, dataset, computed)``
    as they finish (completion order). Unfinished tasks are cancelled when the caller stops."""
    distributed = _import_distributed()
    token = uuid.uuid4().hex
    root = None if store is None else str(store.root)
    config = None if store is None else dict(store.config)
    with dask_client(scheduler, n_workers) as client:
        futures = [
            client.submit(grid_task, compute, point, root, config, token, pure=False,
                          key=f"hiergen-grid-{token[:12]}-{point.key}")
            for point in todo
        ]
        try:
            for fut in distributed.as_completed(futures):
                yield fut.result()
        finally:
            client.cancel(futures)


def _record(run: Any, task: Any, ds: xr.Dataset, computed: bool) -> None:
    run.results[task] = ds
    if computed:
        run.info["points_computed"] += 1
        run.info["seconds_computed"] += float(ds.attrs.get("seconds", 0.0))
    else:
        run.info["points_reused"] += 1


def grammar_table(tasks: list[Any], make_grammar: Callable[[int, int], Any]
                  ) -> Mapping[tuple[int, int], Any]:
    """``{(L, seed): grammar}`` for the groups of ``tasks``."""
    return {(t.L, t.seed): make_grammar(t.L, t.seed) for t in tasks}
