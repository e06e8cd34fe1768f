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
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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


def _point_dataset(stats: Mapping[str, np.ndarray], t: float, seconds: float) -> xr.Dataset:
    n_levels = len(next(iter(stats.values())))
    ds = xr.Dataset(
        {k: ("level", np.asarray(v, dtype=np.float64)) for k, v in stats.items()},
        coords={"level": np.arange(n_levels)},
    )
    ds.attrs["time"] = float(t)
    ds.attrs["seconds"] = float(seconds)
    return ds


# ---------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class _Task:
    L: int
    seed: int
    ti: int

    @property
    def key(self) -> str:
        return f"L{self.L:02d}_seed{self.seed}_t{self.ti:04d}"


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
) -> tuple[dict[_Task, xr.Dataset], dict[str, Any]]:
    """Compute (or load) every task; save each at once when ``store`` is given."""
    from tqdm.auto import tqdm

    from hiergen.inference.bp import BeliefPropagation

    results: dict[_Task, xr.Dataset] = {}
    todo = []
    for task in tasks:
        if store is not None and store.has(task.key):
            results[task] = store.load(task.key)
        else:
            todo.append(task)
    info = {"points_reused": len(tasks) - len(todo), "points_computed": 0, "seconds_computed": 0.0}
    bar = tqdm(total=len(tasks), initial=info["points_reused"], desc=desc, disable=not progress,
               unit="pt", dynamic_ncols=True)
    current: tuple[int, int] | None = None
    bp = data = proc = None
    try:
        for task in todo:
            if current != (task.L, task.seed):
                grammar = make_grammar(task.L, task.seed)
                bp = BeliefPropagation(grammar, backend=backend, dtype=dtype, device=device)
                proc = make_noise(noise, grammar.vocab_sizes[-1])
                data = draw_data(grammar, n_samples, task.seed)
                current = (task.L, task.seed)
            bar.set_postfix(L=task.L, seed=task.seed, t=f"{times[task.ti]:g}", refresh=False)
            t0 = _time.perf_counter()
            stats = forward_backward_point(bp, proc, data, float(times[task.ti]), seed=task.seed, ti=task.ti)
            dt = _time.perf_counter() - t0
            ds = _point_dataset(stats, times[task.ti], dt)
            if store is not None:
                store.save(task.key, ds)
            results[task] = ds
            info["points_computed"] += 1
            info["seconds_computed"] += dt
            bar.update(1)
    finally:
        bar.close()
    return results, info


def _assemble(
    results: Mapping[_Task, xr.Dataset], depths: Sequence[int], seeds: Sequence[int], times: np.ndarray
) -> xr.Dataset:
    """Stack point datasets into dims ``(L, seed, time, level)``; levels beyond L are NaN."""
    n_levels = max(depths) + 1
    names = list(next(iter(results.values())).data_vars)
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
    for k, doc in _VAR_DOCS.items():
        out[k].attrs["long_name"] = doc
        if k + "_se" in out:
            out[k + "_se"].attrs["long_name"] = f"standard error of {k} over samples"
    out["seconds"].attrs["long_name"] = "wall time spent computing the point (s)"
    out["level"].attrs["long_name"] = "tree level (0 = root/class, L = leaves)"
    return out


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


def _attrs(noise: str, n_samples: int, backend: str, info: Mapping[str, Any]) -> dict[str, Any]:
    from hiergen import __version__

    attrs = {
        "title": "forward-backward experiment (exact BP posterior sampling)",
        "noise": noise,
        "time_meaning": TIME_MEANING[noise],
        "n_samples": n_samples,
        "block": BLOCK,
        "backend": backend,
        "hiergen_version": __version__,
        **info,
    }
    if noise == "gaussian":
        attrs["T"] = DDPMSchedule().T
    return attrs


def _write(ds: xr.Dataset, out: Path) -> Path:
    path = out / RESULT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    ds.to_netcdf(tmp, engine="h5netcdf")
    tmp.replace(path)
    return path


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
    backend, dtype, device : BP backend (``"numpy"``, ``"torch"``, ``"jax"``).
    out : folder; when given, each finished time point is saved there at once, a rerun
        resumes, and the result is also written to ``out/forward_backward.nc``.
    progress : show a tqdm progress bar.

    Returns
    -------
    xarray.Dataset with coords ``time`` ``(n_t,)`` and ``level`` ``(L+1,)`` and variables
    ``p_correct``, ``argmax_correct``, ``p_change`` ``(time, level)`` (+ ``*_se``),
    ``class_change``, ``p_correct_class`` ``(time,)`` (+ ``*_se``), ``seconds`` ``(time,)``.
    """
    if not isinstance(grammar, Grammar):
        raise ConfigError(f"forward_backward needs a Grammar, got {type(grammar).__name__}")
    times, n_samples, seeds = _prepare_common(times, n_samples, noise, [seed])
    store = None
    if out is not None:
        from hiergen.experiments.store import PointStore

        config = {
            "kind": "forward_backward",
            "grammar": _fingerprint(grammar),
            "noise": noise,
            "times": times.tolist(),
            "n_samples": n_samples,
            "block": BLOCK,
        }
        store = PointStore(out, config)
    tasks = [_Task(grammar.L, seeds[0], ti) for ti in range(len(times))]
    results, info = _run_tasks(
        tasks, times, lambda L, s: grammar, n_samples=n_samples, noise=noise, backend=backend,
        dtype=dtype, device=device, store=store, progress=progress, desc="forward-backward",
    )
    ds = _assemble(results, [grammar.L], seeds, times).isel(L=0, seed=0, drop=True)
    ds.attrs.update(_attrs(noise, n_samples, backend, info))
    q = float(np.sum(np.asarray(grammar.root_prior, dtype=np.float64) ** 2))
    ds.attrs.update({"seed": seeds[0], "grammar": repr(grammar), "L": grammar.L,
                     "n_classes": grammar.n_classes, "class_change_limit": 1.0 - q,
                     "p_correct_class_limit": q})
    if out is not None:
        _write(ds, Path(out))
    return ds


_RHM_KEYS = {"v", "n_classes", "m", "s"}


def _check_rhm_params(rhm_params: Mapping[str, Any]) -> dict[str, int]:
    if not isinstance(rhm_params, Mapping):
        raise ConfigError(f"rhm_params must be a dict with keys {sorted(_RHM_KEYS)}, got {rhm_params!r}")
    extra = set(rhm_params) - _RHM_KEYS
    if extra & {"L", "seed"}:
        raise ConfigError("give L and seed through depths=[...] and seeds=[...], not in rhm_params")
    if extra or _RHM_KEYS - set(rhm_params):
        raise ConfigError(
            f"rhm_params needs exactly the keys {sorted(_RHM_KEYS)}; "
            f"missing {sorted(_RHM_KEYS - set(rhm_params))}, unknown {sorted(extra)}"
        )
    return {k: _check_int(rhm_params[k], k, 1) for k in sorted(_RHM_KEYS)}


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
) -> xr.Dataset:
    """Forward–backward experiments on RHMs over depths and seeds, in one call.

    ``RHM(**rhm_params, L=L, seed=seed)`` is built for every depth ``L`` in ``depths`` and
    every ``seed`` in ``seeds`` (the seed draws the rules and seeds the data, noise and
    posterior samples). ``rhm_params``: ``{"v", "n_classes", "m", "s"}``.

    With ``out`` (a folder), every finished point ``(L, seed, time)`` is saved at once under
    ``out/points/``; a killed sweep rerun with the same arguments skips the finished points
    (more depths or seeds can be added later; other times, noise, sizes are refused), and
    the assembled dataset is written to ``out/forward_backward.nc``.

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
    # building the grammars first validates the parameters before any work starts
    grammars = {(L, s): RHM(**params, L=L, seed=s) for L in depths for s in seeds}
    store = None
    if out is not None:
        from hiergen.experiments.store import PointStore

        config = {
            "kind": "sweep_forward_backward",
            "rhm": params,
            "noise": noise,
            "times": times.tolist(),
            "n_samples": n_samples,
            "block": BLOCK,
        }
        store = PointStore(out, config)
    tasks = [_Task(L, s, ti) for L in depths for s in seeds for ti in range(len(times))]
    results, info = _run_tasks(
        tasks, times, lambda L, s: grammars[(L, s)], n_samples=n_samples, noise=noise,
        backend=backend, dtype=dtype, device=device, store=store, progress=progress,
        desc="forward-backward sweep",
    )
    ds = _assemble(results, depths, seeds, times)
    ds.attrs.update(_attrs(noise, n_samples, backend, info))
    ds.attrs.update({f"rhm_{k}": v for k, v in params.items()})
    ds.attrs["n_classes"] = params["n_classes"]
    if out is not None:
        _write(ds, Path(out))
    return ds
