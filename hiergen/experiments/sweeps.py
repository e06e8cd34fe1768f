"""Forward–backward experiments on a grammar (the paper's Fig. 5 and 7b).

Protocol, for every noise level ``t`` ("time"):

1. draw clean data ``x0`` with their latent trees from the grammar;
2. *forward*: noise the leaves to level ``t`` (Gaussian diffusion at DDPM time ``t``,
   uniform corruption ``eps = t`` or masking probability ``p = t``) -> leaf evidence;
3. exact belief propagation on that evidence: the marginal of every node, and
   *backward*: one exact posterior sample ``x0_hat`` of the whole latent tree;
4. per level ``l`` of the tree, measure

   - ``p_correct``: the probability BP's marginal puts on the true symbol of ``x0``
     (averaged over the level's nodes; the paper's Fig. 5);
   - ``argmax_correct``: how often the marginal's most probable symbol is the true one;
   - ``p_change``: how often the symbol of ``x0_hat`` differs from that of ``x0``;
   - ``class_change`` / ``p_correct_class``: the same at the root (level 0);

   each with its standard error over samples (``*_se``; per-sample averages over the
   level's nodes, then ``std / sqrt(n_samples)``).

The clean data of a (depth, seed) pair are shared by all times (common random numbers: the
curves are smooth in ``t``); the noise and the posterior samples of a point are seeded from
``(seed, L, time index)`` with :class:`numpy.random.SeedSequence`, in fixed blocks of
``BLOCK`` samples, so the same call gives the same numbers on any machine and a resumed
sweep gives exactly the numbers of an uninterrupted one.

Public functions: :func:`forward_backward` (one grammar, dims ``(time, level)``) and
:func:`sweep_forward_backward` (RHMs over depths and seeds, dims ``(L, seed, time, level)``);
both resumable when given ``out``.
"""

from __future__ import annotations

import hashlib
import json
import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hiergen.models._validate import check_int
from hiergen.models.errors import ConfigError, EvidenceError
from hiergen.models.grammar import Grammar, TreeSample
from hiergen.models.noise import DDPMSchedule, make_noise

#: samples per block; fixed so that the numbers do not depend on the machine or batch size
BLOCK = 256
NOISES = ("gaussian", "uniform", "masking")
TIME_MEANING = {
    "gaussian": "DDPM diffusion time t (linear betas 1e-4..0.02, T=1000)",
    "uniform": "uniform belief corruption eps",
    "masking": "masking probability p",
}
RESULT_FILE = "forward_backward.nc"
#: default BP message dtype of the sweeps: float32 is about twice as fast as float64 on the
#: CPU kernel, and its marginals agree with float64 to ~2e-5 (log-evidence accumulated in
#: float64) -- far below the sampling error of the averaged statistics. Pass
#: ``dtype="float64"`` for exact-to-1e-10 marginals.
SWEEP_DTYPE = "float32"

_VAR_DOCS = {
    "p_correct": "BP marginal probability of the true symbol (mean over the level's nodes)",
    "argmax_correct": "fraction of the level's nodes whose most probable symbol is the true one",
    "p_change": "fraction of the level's nodes whose posterior sample differs from x0",
    "class_change": "probability that the posterior sample's class differs from x0's class",
    "p_correct_class": "BP marginal probability of the true class",
}

# purposes of the derived seeds
_DATA, _NOISE, _SAMPLE = 0, 1, 2


# ---------------------------------------------------------------------------- inputs
def default_times(noise: str = "gaussian", n: int = 51, t_max: float | None = None) -> np.ndarray:
    """``n`` equally spaced noise levels from 0 to ``t_max`` (default T = 1000 for Gaussian
    diffusion, 1 for uniform corruption and masking)."""
    _check_noise(noise)
    if t_max is None:
        t_max = float(DDPMSchedule().T) if noise == "gaussian" else 1.0
    return np.linspace(0.0, float(t_max), int(n))


def _check_noise(noise: str) -> str:
    if noise not in NOISES:
        raise ConfigError(f"unknown noise {noise!r}; choose one of {', '.join(NOISES)}")
    return noise


def _check_times(times: Any, noise: str) -> np.ndarray:
    try:
        t = np.asarray(times, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"times must be numbers, got {times!r}") from exc
    if t.ndim != 1 or t.size == 0:
        raise ConfigError(f"times must be a non-empty 1-D sequence, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ConfigError(f"times must be finite, got {t.tolist()}")
    hi = float(DDPMSchedule().T) if noise == "gaussian" else 1.0
    bad = (t < 0) | (t > hi)
    if bad.any():
        raise EvidenceError(
            f"{noise} noise levels must lie in [0, {hi:g}] ({TIME_MEANING[noise]}); "
            f"out of range: {t[bad].tolist()}"
        )
    if np.unique(t).size != t.size:
        raise ConfigError(f"times must be distinct, got {t.tolist()}")
    return t


def _check_int(value: Any, name: str, minimum: int) -> int:
    return check_int(value, name, minimum, error=ConfigError)


def _fingerprint(grammar: Grammar) -> str:
    """sha256 of the grammar's rules, probabilities and prior (what changes the numbers)."""
    h = hashlib.sha256()
    h.update(json.dumps([list(grammar.vocab_sizes), list(grammar.branching)]).encode())
    for lev in range(grammar.L):
        h.update(np.ascontiguousarray(grammar.children[lev], dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(grammar.probs[lev], dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(grammar.root_prior, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _seed_int(seed: int, L: int, ti: int, block: int, purpose: int) -> int:
    """A 63-bit seed for (sweep seed, depth, time index, block, purpose)."""
    seq = np.random.SeedSequence(entropy=[seed, L, ti], spawn_key=(block, purpose))
    return int(seq.generate_state(2, np.uint64)[0] >> np.uint64(1))


# ---------------------------------------------------------------------------- one point
def draw_data(grammar: Grammar, n_samples: int, seed: int) -> list[TreeSample]:
    """The clean data of a (grammar, seed): a list of blocks of at most ``BLOCK`` samples."""
    blocks = []
    for b, start in enumerate(range(0, n_samples, BLOCK)):
        n = min(BLOCK, n_samples - start)
        blocks.append(grammar.sample(n, seed=_seed_int(seed, grammar.L, 0, b, _DATA)))
    return blocks


class _Moments:
    """Running sums for means and standard errors of per-sample values, per level."""

    def __init__(self, n_levels: int) -> None:
        self.n = 0
        self.s1 = np.zeros(n_levels)
        self.s2 = np.zeros(n_levels)

    def add(self, per_level: Sequence[np.ndarray]) -> None:
        """``per_level``: list over levels of ``(batch,)`` per-sample values."""
        x = np.stack([np.asarray(v, dtype=np.float64) for v in per_level], 0)  # (levels, B)
        self.n += x.shape[1]
        self.s1 += x.sum(1)
        self.s2 += (x * x).sum(1)

    def mean_se(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.s1 / self.n
        if self.n < 2:
            return mean, np.full_like(mean, np.nan)
        var = np.maximum(self.s2 - self.n * mean * mean, 0.0) / (self.n - 1)
        return mean, np.sqrt(var / self.n)


def forward_backward_point(
    bp: Any,
    noise_process: Any,
    data: Sequence[TreeSample],
    t: float,
    *,
    seed: int,
    ti: int,
    on_sample: Callable[[TreeSample, TreeSample], None] | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of one noise level ``t`` for the data blocks ``data``.

    ``bp`` is a :class:`~hiergen.inference.bp.BeliefPropagation` on the grammar,
    ``noise_process`` a noise process of :mod:`hiergen.models.noise`. ``on_sample(x0, x0_hat)``
    (optional) sees every block of clean data and posterior samples.

    Returns ``{name: (L+1,) array}`` for ``p_correct``, ``argmax_correct``, ``p_change``
    and their ``*_se``.
    """
    L = bp.grammar.L
    stats = {k: _Moments(L + 1) for k in ("p_correct", "argmax_correct", "p_change")}
    for b, x0 in enumerate(data):
        ev = noise_process.evidence(x0.leaves, t, seed=_seed_int(seed, L, ti, b, _NOISE))
        # one pass for marginals and posterior sample (the kernel engine reuses the upward
        # messages; identical to bp.run(ev) followed by bp.sample(ev, seed))
        post, x_hat = bp.run_and_sample(ev, seed=_seed_int(seed, L, ti, b, _SAMPLE))
        probs = post.prob_of(x0.symbols)
        stats["p_correct"].add([p.mean(1) for p in probs])
        stats["argmax_correct"].add([(a == s).mean(1) for a, s in zip(post.argmax(), x0.symbols)])
        stats["p_change"].add([(h != s).mean(1) for h, s in zip(x_hat.symbols, x0.symbols)])
        if on_sample is not None:
            on_sample(x0, x_hat)
    out: dict[str, np.ndarray] = {}
    for name, mom in stats.items():
        out[name], out[name + "_se"] = mom.mean_se()
    return out


def _point_dataset(stats: Mapping[str, np.ndarray], t: float, seconds: float, noise: str) -> xr.Dataset:
    n_levels = len(next(iter(stats.values())))
    ds = xr.Dataset(
        {k: ("level", np.asarray(v, dtype=np.float64)) for k, v in stats.items()},
        coords={"level": np.arange(n_levels)},
    )
    ds.attrs["time"] = float(t)
    ds.attrs["seconds"] = float(seconds)
    return _cf_attrs(ds, noise)


# ---------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class _Task:
    L: int
    seed: int
    ti: int

    @property
    def key(self) -> str:
        return f"L{self.L:02d}_seed{self.seed}_t{self.ti:04d}"


def bp_settings(grammar: Grammar, backend: str, dtype: str | None, device: str | None) -> dict[str, str]:
    """The BP settings that change the numbers, as resolved by
    :class:`~hiergen.inference.bp.BeliefPropagation` (defaults filled in): ``backend``,
    ``dtype`` (``"float32"``/``"float64"``) and ``device_kind`` (``"cpu"``, ``"cuda"``, ...)."""
    from hiergen.inference.bp import BeliefPropagation

    ops = BeliefPropagation(grammar, backend=backend, dtype=dtype, device=device).ops
    name = str(ops.device_name).lower()
    kind = "cpu" if name.startswith(("cpu", "tfrt_cpu")) else name.split(":")[0]
    return {
        "backend": str(ops.name),
        "dtype": np.dtype(str(ops.dtype).replace("torch.", "")).name,
        "device_kind": kind,
    }


def _store_config(kind: str, model: Mapping[str, Any], noise: str, times: np.ndarray,
                  n_samples: int, settings: Mapping[str, str]) -> dict[str, Any]:
    """Everything that changes the numbers of a point (recorded in ``config.json``)."""
    from hiergen import __version__

    return {"kind": kind, **model, "noise": noise, "times": times.tolist(), "n_samples": n_samples,
            "block": BLOCK, **settings, "hiergen_version": __version__}


class _Runner:
    """Computes, or loads from the store, the points of a sweep (see :func:`_run_tasks`)."""

    def __init__(self, times: np.ndarray, make_grammar: Callable[[int, int], Grammar], *,
                 n_samples: int, noise: str, backend: str, dtype: str | None,
                 device: str | None, store: Any) -> None:
        self.times, self.make_grammar, self.store = times, make_grammar, store
        self.n_samples, self.noise = n_samples, noise
        self.bp_kw = {"backend": backend, "dtype": dtype, "device": device}
        self.current: tuple[int, int] | None = None
        self.fingerprints: dict[tuple[int, int], str] = {}
        self.results: dict[_Task, xr.Dataset] = {}
        self.info = {"points_reused": 0, "points_computed": 0, "seconds_computed": 0.0}

    def fingerprint(self, task: _Task) -> str:
        key = (task.L, task.seed)
        if key not in self.fingerprints:
            self.fingerprints[key] = _fingerprint(self.make_grammar(task.L, task.seed))
        return self.fingerprints[key]

    def load(self, task: _Task) -> None:
        self.results[task] = self.store.load(task.key, expect={"grammar": self.fingerprint(task)})
        self.info["points_reused"] += 1

    def compute(self, task: _Task) -> None:
        from hiergen.inference.bp import BeliefPropagation

        if self.current != (task.L, task.seed):
            grammar = self.make_grammar(task.L, task.seed)
            self.bp = BeliefPropagation(grammar, **self.bp_kw)
            self.proc = make_noise(self.noise, grammar.vocab_sizes[-1])
            self.data = draw_data(grammar, self.n_samples, task.seed)
            self.current = (task.L, task.seed)
        t = float(self.times[task.ti])
        t0 = _time.perf_counter()
        # looked up at call time, so tests can wrap it
        stats = forward_backward_point(self.bp, self.proc, self.data, t, seed=task.seed, ti=task.ti)
        dt = _time.perf_counter() - t0
        ds = _point_dataset(stats, t, dt, self.noise)
        ds.attrs["grammar"] = self.fingerprint(task)
        if self.store is not None:
            self.store.save(task.key, ds)
        self.results[task] = ds
        self.info["points_computed"] += 1
        self.info["seconds_computed"] += dt

    def claim_and_run(self, task: _Task, wait: bool) -> bool:
        """Compute ``task`` under its claim, or load it when another process finished it
        meanwhile; ``False`` when another live process holds the claim (``wait=False``)."""
        with self.store.claim(task.key, wait=wait) as mine:
            if not mine:
                return False
            if self.store.has(task.key):
                self.load(task)
            else:
                self.compute(task)
        return True


def _run_tasks(
    tasks: list[_Task],
    times: np.ndarray,
    make_grammar: Callable[[int, int], Grammar],
    *,
    n_samples: int,
    noise: str,
    backend: str,
    dtype: str | None,
    device: str | None,
    store: Any,
    progress: bool,
    desc: str,
    scheduler: Any = None,
    n_workers: int | None = None,
) -> tuple[dict[_Task, xr.Dataset], dict[str, Any]]:
    """Compute (or load) every task; save each at once when ``store`` is given.

    With a store, finished points are loaded; the others are claimed one by one (an
    inter-process lock per point) and computed, so that processes sharing the folder split
    the work. Points claimed by another process are done last: waiting for that process,
    then loading its result (or computing the point if that process died).
    With a Dask ``scheduler``, the points are tasks there (:func:`_run_tasks_dask`).
    """
    if scheduler is not None:
        return _run_tasks_dask(
            tasks, times, make_grammar, n_samples=n_samples, noise=noise, backend=backend,
            dtype=dtype, device=device, store=store, progress=progress, desc=desc,
            scheduler=scheduler, n_workers=n_workers,
        )
    from hiergen._progress import progress_bar

    run = _Runner(times, make_grammar, n_samples=n_samples, noise=noise, backend=backend,
                  dtype=dtype, device=device, store=store)
    todo = []
    for task in tasks:
        if store is not None and store.has(task.key):
            run.load(task)
        else:
            todo.append(task)
    bar = progress_bar(total=len(tasks), initial=len(tasks) - len(todo), desc=desc,
                       enabled=progress, unit="pt")
    try:
        busy = []
        for task in todo:
            bar.set_postfix(L=task.L, seed=task.seed, t=f"{times[task.ti]:g}", refresh=False)
            if store is None:
                run.compute(task)
            elif not run.claim_and_run(task, wait=False):
                busy.append(task)
                continue
            bar.update(1)
        for task in busy:
            run.claim_and_run(task, wait=True)
            bar.update(1)
    finally:
        bar.close()
    return run.results, run.info


def _run_tasks_dask(
    tasks: list[_Task],
    times: np.ndarray,
    make_grammar: Callable[[int, int], Grammar],
    *,
    n_samples: int,
    noise: str,
    backend: str,
    dtype: str | None,
    device: str | None,
    store: Any,
    progress: bool,
    desc: str,
    scheduler: Any,
    n_workers: int | None,
) -> tuple[dict[_Task, xr.Dataset], dict[str, Any]]:
    """:func:`_run_tasks` on a Dask cluster: finished points are loaded here, the others are
    Dask tasks (one per point) that write through the store themselves
    (:mod:`hiergen.experiments.distributed`); a progress bar advances as they finish."""
    from hiergen._progress import progress_bar
    from hiergen.experiments.distributed import PointSpec, grammar_table, run_points

    run = _Runner(times, make_grammar, n_samples=n_samples, noise=noise, backend=backend,
                  dtype=dtype, device=device, store=store)
    todo = []
    for task in tasks:
        if store is not None and store.has(task.key):
            run.load(task)
        else:
            todo.append(task)
    if not todo:
        return run.results, run.info
    spec = PointSpec(times, dict(grammar_table(todo, make_grammar)), n_samples, noise, run.bp_kw,
                     None if store is None else str(store.root),
                     None if store is None else dict(store.config))
    bar = progress_bar(total=len(tasks), initial=len(tasks) - len(todo), desc=desc,
                       enabled=progress, unit="pt")
    try:
        run_points(run, todo, spec, scheduler, n_workers=n_workers,
                   on_done=lambda task: bar.update(1))
    finally:
        bar.close()
    return run.results, run.info


def _assemble(
    results: Mapping[_Task, xr.Dataset], depths: Sequence[int], seeds: Sequence[int],
    times: np.ndarray, noise: str,
) -> xr.Dataset:
    """Stack point datasets into dims ``(L, seed, time, level)``; levels beyond L are NaN."""
    n_levels = max(depths) + 1
    names = [k for k in next(iter(results.values())).data_vars]
    arrays = {k: np.full((len(depths), len(seeds), len(times), n_levels), np.nan) for k in names}
    seconds = np.full((len(depths), len(seeds), len(times)), np.nan)
    for task, ds in results.items():
        i, j = list(depths).index(task.L), list(seeds).index(task.seed)
        for k in names:
            arrays[k][i, j, task.ti, : task.L + 1] = ds[k].values
        seconds[i, j, task.ti] = ds.attrs.get("seconds", np.nan)
    out = xr.Dataset(
        {k: (("L", "seed", "time", "level"), v) for k, v in arrays.items()},
        coords={
            "L": np.asarray(depths, dtype=np.int64),
            "seed": np.asarray(seeds, dtype=np.int64),
            "time": times,
            "level": np.arange(n_levels),
        },
    )
    out["class_change"] = out["p_change"].sel(level=0, drop=True)
    out["class_change_se"] = out["p_change_se"].sel(level=0, drop=True)
    out["p_correct_class"] = out["p_correct"].sel(level=0, drop=True)
    out["p_correct_class_se"] = out["p_correct_se"].sel(level=0, drop=True)
    out["seconds"] = (("L", "seed", "time"), seconds)
    return _cf_attrs(out, noise)


#: CF ``long_name`` / ``units`` of coordinates (``time`` depends on the noise)
_COORD_ATTRS = {
    "L": {"long_name": "depth of the tree (levels below the root)", "units": "1"},
    "seed": {"long_name": "seed of the grammar rules, data, noise and posterior samples"},
    "level": {"long_name": "tree level (0 = root/class, L = leaves)", "units": "1"},
}
_TIME_UNITS = {"gaussian": "DDPM steps", "uniform": "1", "masking": "1"}


def _cf_attrs(ds: xr.Dataset, noise: str) -> xr.Dataset:
    """Set CF ``long_name`` (and ``units`` where meaningful) on every coordinate and variable."""
    for name, attrs in _COORD_ATTRS.items():
        if name in ds.coords:
            ds[name].attrs.update(attrs)
    if "time" in ds.coords:
        ds["time"].attrs.update({"long_name": f"noise level: {TIME_MEANING[noise]}",
                                 "units": _TIME_UNITS[noise]})
    for k, doc in _VAR_DOCS.items():
        if k in ds:
            ds[k].attrs.update({"long_name": doc, "units": "1"})
        if k + "_se" in ds:
            ds[k + "_se"].attrs.update({"long_name": f"standard error of {k} over samples", "units": "1"})
    if "seconds" in ds:
        ds["seconds"].attrs.update({"long_name": "wall time spent computing the point", "units": "s"})
    return ds


def _prepare_common(times: Any, n_samples: Any, noise: str, seeds: Iterable[Any]) -> tuple[np.ndarray, int, list[int]]:
    _check_noise(noise)
    times = default_times(noise) if times is None else _check_times(times, noise)
    n_samples = _check_int(n_samples, "n_samples", 2)
    seeds = [_check_int(s, "seed", 0) for s in seeds]
    if not seeds:
        raise ConfigError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    return times, n_samples, seeds


def _check_scheduler(scheduler: Any, n_workers: int | None) -> None:
    if scheduler is not None or n_workers is not None:
        from hiergen.experiments.distributed import check_scheduler

        check_scheduler(scheduler, n_workers)


def _attrs(noise: str, n_samples: int, settings: Mapping[str, str], info: Mapping[str, Any]) -> dict[str, Any]:
    from hiergen import __version__

    attrs = {
        "title": "forward-backward experiment (exact BP posterior sampling)",
        "Conventions": "CF-1.8",
        "noise": noise,
        "time_meaning": TIME_MEANING[noise],
        "n_samples": n_samples,
        "block": BLOCK,
        **settings,
        "hiergen_version": __version__,
        **info,
    }
    if noise == "gaussian":
        attrs["T"] = DDPMSchedule().T
    return attrs


def _write(ds: xr.Dataset, store: Any) -> Path:
    """Write the result file ``out/forward_backward.nc`` atomically, under the store's
    result lock (one writer at a time). Its data come from the store's points only (each was
    read from the store or written to it by this process, and a finished point is never
    rewritten), so every process writes the same numbers."""
    from hiergen.experiments.store import write_netcdf

    with store.lock(RESULT_FILE):
        return write_netcdf(store.root / RESULT_FILE, ds)


def forward_backward(
    grammar: Grammar,
    times: Sequence[float] | np.ndarray | None = None,
    n_samples: int = 1000,
    noise: str = "gaussian",
    seed: int = 0,
    backend: str = "numpy",
    out: str | Path | None = None,
    *,
    dtype: str | None = None,
    device: str | None = None,
    progress: bool = True,
    scheduler: Any = None,
    n_workers: int | None = None,
) -> xr.Dataset:
    """Forward–backward experiment on one grammar.

    Parameters
    ----------
    grammar : any :class:`~hiergen.models.grammar.Grammar` (e.g. an RHM).
    times : noise levels (default: 51 levels over the whole range): DDPM times in
        ``[0, 1000]`` for ``noise="gaussian"``, ``eps`` in ``[0, 1]`` for ``"uniform"``,
        masking probabilities in ``[0, 1]`` for ``"masking"``.
    n_samples : clean data per noise level (the same data at every level).
    seed : seeds the data, the noise and the posterior samples.
    backend, dtype, device : BP backend (``"numpy"``, ``"torch"``, ``"jax"``), message dtype
        (default ``"float32"``, see :data:`SWEEP_DTYPE`) and device.
    out : folder; when given, each finished time point is saved there at once, a rerun
        resumes, and the result is also written to ``out/forward_backward.nc``. Several
        processes may share the folder (they split the points, see
        :mod:`hiergen.experiments.store`); other settings (including backend and dtype)
        are refused with a :class:`ConfigError`.
    progress : show a progress bar on stderr (plain lines every 10 s when it is a file).
    scheduler, n_workers : run the points as tasks on a Dask cluster (``"local"``, an address
        ``tcp://host:8786``, a scheduler file or a ``distributed.Client``; ``n_workers`` for
        local clusters), see :mod:`hiergen.experiments.distributed`; same numbers as the
        default serial in-process run.

    Returns
    -------
    xarray.Dataset with coords ``time`` ``(n_t,)`` and ``level`` ``(L+1,)`` and variables
    ``p_correct``, ``argmax_correct``, ``p_change`` ``(time, level)`` (+ ``*_se``),
    ``class_change``, ``p_correct_class`` ``(time,)`` (+ ``*_se``), ``seconds`` ``(time,)``.
    """
    if not isinstance(grammar, Grammar):
        raise ConfigError(f"forward_backward needs a Grammar, got {type(grammar).__name__}")
    times, n_samples, seeds = _prepare_common(times, n_samples, noise, [seed])
    dtype = SWEEP_DTYPE if dtype is None else dtype
    _check_scheduler(scheduler, n_workers)
    settings = bp_settings(grammar, backend, dtype, device)
    store = None
    if out is not None:
        from hiergen.experiments.store import PointStore

        model = {"grammar": _fingerprint(grammar)}
        store = PointStore(out, _store_config("forward_backward", model, noise, times, n_samples, settings))
    tasks = [_Task(grammar.L, seeds[0], ti) for ti in range(len(times))]
    results, info = _run_tasks(
        tasks, times, lambda L, s: grammar, n_samples=n_samples, noise=noise, backend=backend,
        dtype=dtype, device=device, store=store, progress=progress, desc="forward-backward",
        scheduler=scheduler, n_workers=n_workers,
    )
    ds = _assemble(results, [grammar.L], seeds, times, noise).isel(L=0, seed=0, drop=True)
    ds.attrs.update(_attrs(noise, n_samples, settings, info))
    q = float(np.sum(np.asarray(grammar.root_prior, dtype=np.float64) ** 2))
    ds.attrs.update({"seed": seeds[0], "grammar": repr(grammar), "L": grammar.L,
                     "n_classes": grammar.n_classes, "class_change_limit": 1.0 - q,
                     "p_correct_class_limit": q})
    if store is not None:
        _write(ds, store)
    return ds


_RHM_KEYS = {"v", "n_classes", "m", "s"}


def _check_rhm_params(rhm_params: Mapping[str, Any]) -> dict[str, int]:
    from hiergen.models.rhm import check_rhm_params

    if isinstance(rhm_params, Mapping) and {"L", "seed"} & set(rhm_params):
        raise ConfigError("give L and seed through depths=[...] and seeds=[...], not in rhm_params")
    return check_rhm_params(rhm_params, tuple(sorted(_RHM_KEYS)), label="rhm_params",
                            error=ConfigError)


def sweep_forward_backward(
    rhm_params: Mapping[str, int],
    depths: Sequence[int],
    seeds: Sequence[int] = (0,),
    times: Sequence[float] | np.ndarray | None = None,
    n_samples: int = 1000,
    noise: str = "gaussian",
    backend: str = "numpy",
    out: str | Path | None = None,
    *,
    dtype: str | None = None,
    device: str | None = None,
    progress: bool = True,
    scheduler: Any = None,
    n_workers: int | None = None,
) -> xr.Dataset:
    """Forward–backward experiments on RHMs over depths and seeds, in one call.

    ``RHM(**rhm_params, L=L, seed=seed)`` is built for every depth ``L`` in ``depths`` and
    every ``seed`` in ``seeds`` (the seed draws the rules and seeds the data, noise and
    posterior samples). ``rhm_params``: ``{"v", "n_classes", "m", "s"}``.

    With ``out`` (a folder), every finished point ``(L, seed, time)`` is saved at once under
    ``out/points/``; a killed sweep rerun with the same arguments skips the finished points
    (more depths or seeds can be added later; other times, noise, sizes, backend, dtype,
    device kind or hiergen version are refused), and the assembled dataset is written to
    ``out/forward_backward.nc``. Processes sharing ``out`` claim points with inter-process
    locks, so each point is computed once and the result file is the same as one clean run's.

    With ``scheduler`` (``"local"``, ``"tcp://host:8786"``, a scheduler file or a
    ``distributed.Client``; ``n_workers`` for local clusters) the points are Dask tasks that
    write through the store themselves (``out`` must then be on a file system shared with the
    workers); the numbers are those of the serial run whatever the number of workers. See
    :mod:`hiergen.experiments.distributed` and ``docs/scale_out.md``.

    Returns
    -------
    xarray.Dataset with coords ``L``, ``seed``, ``time``, ``level`` (``0..max(depths)``;
    NaN beyond a depth's leaves) and the variables of :func:`forward_backward` with the
    extra leading dims ``(L, seed)``. ``attrs``: ``points_computed``, ``points_reused``, ...
    """
    from hiergen.models.rhm import RHM

    params = _check_rhm_params(rhm_params)
    depths = [_check_int(L, "depth L", 1) for L in depths]
    if not depths or len(set(depths)) != len(depths):
        raise ConfigError(f"depths must be a non-empty list of distinct integers, got {depths}")
    times, n_samples, seeds = _prepare_common(times, n_samples, noise, seeds)
    _check_scheduler(scheduler, n_workers)
    # building the grammars first validates the parameters before any work starts
    grammars = {(L, s): RHM(**params, L=L, seed=s) for L in depths for s in seeds}
    dtype = SWEEP_DTYPE if dtype is None else dtype
    settings = bp_settings(grammars[(depths[0], seeds[0])], backend, dtype, device)
    store = None
    if out is not None:
        from hiergen.experiments.store import PointStore

        config = _store_config("sweep_forward_backward", {"rhm": params}, noise, times, n_samples, settings)
        store = PointStore(out, config)
    tasks = [_Task(L, s, ti) for L in depths for s in seeds for ti in range(len(times))]
    results, info = _run_tasks(
        tasks, times, lambda L, s: grammars[(L, s)], n_samples=n_samples, noise=noise,
        backend=backend, dtype=dtype, device=device, store=store, progress=progress,
        desc="forward-backward sweep", scheduler=scheduler, n_workers=n_workers,
    )
    ds = _assemble(results, depths, seeds, times, noise)
    ds.attrs.update(_attrs(noise, n_samples, settings, info))
    ds.attrs.update({f"rhm_{k}": v for k, v in params.items()})
    ds.attrs["n_classes"] = params["n_classes"]
    if store is not None:
        _write(ds, store)
    return ds
