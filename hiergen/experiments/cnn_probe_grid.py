"""The CNN probe (the paper's Fig. 7b) over a grid of RHM seeds and training-set sizes.

Each point ``(seed, n_train)`` is independent: build ``RHM(**rhm, seed=seed)``, train a
:class:`~hiergen.experiments.cnn_probe.TreeCNN` on ``n_train`` of its data
(:func:`~hiergen.experiments.cnn_probe.train_cnn`, seeded by ``seed``) and probe it at every
noise level with forward–backward resampling
(:func:`~hiergen.experiments.cnn_probe.cnn_probe`, probe seed ``seed + 1`` as in
``examples/cnn_probe_rhm.py``). :func:`cnn_probe_grid` runs the points with
:func:`hiergen.experiments.grid.run_grid` — in this process or as Dask tasks, optionally
through a resumable point store — and assembles them in a fixed order.

Reproducibility. torch CPU results can depend on the number of intra-op threads, so the
thread count is part of every point's parameters (default 1): :func:`cnn_probe_point` runs
both training and probe under it (and restores the caller's setting), and the numbers are
those of the serial run whatever the number of Dask workers. On a GPU, cuDNN may choose
non-deterministic kernels; bit-identity is only promised on the CPU.

Resuming. With a store, each point saves its trained CNN in its work folder
``DIR/work/<key>/`` (``model.safetensors``, ``config.json``) before probing; a point killed
after training retrains nothing when rerun: a checkpoint of exactly the point's training
settings (and torch version) is loaded instead.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hiergen.experiments.cnn_probe import (
    CPU_DEFAULT,
    _torch,
    cnn_probe,
    load_checkpoint,
    save_checkpoint,
    train_cnn,
)
from hiergen.models._validate import check_int
from hiergen.models.errors import ConfigError

#: the RHM settings :func:`cnn_probe_grid` needs (``seed`` comes from ``seeds``)
RHM_KEYS = ("v", "n_classes", "m", "s", "L")
#: point parameters that fix the trained network (the checkpoint must match all of them)
TRAIN_KEYS = (*RHM_KEYS, "seed", "n_train", "n_test", "width", "epochs", "batch_size", "lr",
              "device", "threads")
#: per-point scalars of the trained network added to the probe's variables
CNN_VARS = {
    "train_acc": ("CNN accuracy on its training set", "1"),
    "test_acc": ("CNN accuracy on held-out data not in the training set", "1"),
    "n_test_unseen": ("held-out data used for test_acc", "1"),
    "epochs_run": ("training epochs run (training stops at 100% training accuracy)", "1"),
    "train_seconds": ("wall time of the CNN training", "s"),
}
#: attribute of a point dataset: 1 when its CNN was loaded from a checkpoint, not trained
FROM_CHECKPOINT = "cnn_from_checkpoint"


# ---------------------------------------------------------------------------- one point
def _train_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes a point's trained CNN: its training parameters and the torch version."""
    return {**{k: params[k] for k in TRAIN_KEYS}, "torch_version": str(_torch().__version__)}


def _trained_model(params: Mapping[str, Any], grammar: Any, workdir: Path | None,
                   progress: bool = False) -> tuple[Any, dict[str, Any], bool]:
    """``(model, info, from_checkpoint)``: the checkpoint in ``workdir`` when it was saved
    with exactly this point's training settings, else a freshly trained CNN (saved there)."""
    settings = _train_settings(params)
    if workdir is not None and (workdir / "config.json").is_file():
        try:
            model, info = load_checkpoint(workdir, device=params["device"])
        except ConfigError:
            info = {}  # unreadable (a write killed half-way): train anew
        if json.dumps(info.get("point_settings"), sort_keys=True) == json.dumps(settings, sort_keys=True):
            return model, info, True
    model, info = train_cnn(
        grammar, n_train=params["n_train"], n_test=params["n_test"], width=params["width"],
        epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
        seed=params["seed"], device=params["device"], threads=params["threads"], progress=progress,
    )
    info["point_settings"] = settings
    if workdir is not None:
        save_checkpoint(model, workdir, info)
    return model, info, False


def cnn_probe_point(params: Mapping[str, Any], workdir: Path | None = None,
                    progress: bool = False) -> xr.Dataset:
    """One grid point: train (or reload from ``workdir``) and probe the CNN of
    ``RHM(v, n_classes, m, s, L, seed)`` trained on ``n_train`` data.

    ``params``: the RHM keys of :data:`RHM_KEYS`, ``seed``, ``n_train``, ``n_test``,
    ``width``, ``epochs``, ``batch_size``, ``lr``, ``device``, ``threads`` (torch intra-op
    threads for training and probe), ``times``, ``n_samples``, ``noise``, ``whiten``
    (:func:`point_params` builds them, validated). ``progress``: show the training and probe
    bars (off in grids, whose bar counts points).

    Returns the :func:`~hiergen.experiments.cnn_probe.cnn_probe` dataset over ``time``
    ``(n_t,)`` and ``layer`` ``(L,)`` plus the scalars of :data:`CNN_VARS`; attrs
    ``cnn_info`` (the training info as JSON) and :data:`FROM_CHECKPOINT`.
    """
    from hiergen.models.rhm import RHM

    torch = _torch()
    grammar = RHM(**{k: params[k] for k in RHM_KEYS}, seed=params["seed"])
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(params["threads"]))
    try:
        model, info, reused = _trained_model(params, grammar, workdir, progress)
        ds = cnn_probe(model, grammar, params["times"], n_samples=params["n_samples"],
                       noise=params["noise"], seed=params["seed"] + 1, device=params["device"],
                       whiten=bool(params["whiten"]), progress=progress)
    finally:
        torch.set_num_threads(old_threads)
    for name, key in (("train_acc", "train_acc"), ("test_acc", "test_acc"),
                      ("n_test_unseen", "n_test_unseen"), ("epochs_run", "epochs"),
                      ("train_seconds", "seconds")):
        ds[name] = ((), info[key])
    ds.attrs.pop("grammar", None)
    ds.attrs["cnn_info"] = json.dumps(info)
    ds.attrs[FROM_CHECKPOINT] = int(reused)
    return ds


# ---------------------------------------------------------------------------- inputs
def _check_list(values: Any, name: str, minimum: int) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{name} must be a non-empty list of integers, got {values!r}")
    out = [check_int(x, name, minimum, error=ConfigError) for x in values]
    if len(set(out)) != len(out):
        raise ConfigError(f"{name} must not repeat values, got {out}")
    return out


def _check_rhm(rhm: Any) -> dict[str, int]:
    from hiergen.models.rhm import check_rhm_params

    return check_rhm_params(rhm, RHM_KEYS, label="rhm")


def _check_device(device: Any) -> str:
    torch = _torch()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: torch sees no CUDA GPU here")
    return str(device)


def _check_settings(rhm: Any, seeds: Any, n_trains: Any, times: Any, kw: dict[str, Any]
                    ) -> dict[str, Any]:
    """Validated settings (every check before any work); ``kw``: the keyword settings."""
    from hiergen.experiments.sweeps import _check_noise, _check_times

    rhm = _check_rhm(rhm)
    seeds = _check_list(seeds, "seeds", 0)
    n_trains = _check_list(n_trains, "n_trains", 1)
    out = {"rhm": rhm, "seeds": seeds, "n_trains": n_trains,
           "noise": _check_noise(kw["noise"])}
    out["times"] = _check_times(times, out["noise"]).tolist()
    for name, minimum in (("n_test", 1), ("width", 1), ("epochs", 1), ("batch_size", 1),
                          ("n_samples", 2), ("threads", 1)):
        out[name] = check_int(kw[name], name, minimum, error=ConfigError)
    lr = kw["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    out["lr"] = float(lr)
    if not isinstance(kw["whiten"], (bool, np.bool_)):
        raise ConfigError(f"whiten must be True or False, got {kw['whiten']!r}")
    out["whiten"] = bool(kw["whiten"])
    out["device"] = _check_device(kw["device"])
    return out


# ---------------------------------------------------------------------------- the grid
def _point_key(seed: int, n_train: int) -> str:
    return f"seed{seed}-ntrain{n_train}"


def _store(out: str | os.PathLike[str] | None, cfg: Mapping[str, Any]) -> Any:
    if out is None:
        return None
    from hiergen import __version__
    from hiergen.experiments.store import PointStore

    config = {k: v for k, v in cfg.items() if k not in ("seeds", "n_trains")}
    config.update(kind="cnn-probe-grid", hiergen_version=__version__,
                  torch_version=str(_torch().__version__), bp_backend="numpy")
    return PointStore(out, config)


#: defaults of the keyword settings of :func:`cnn_probe_grid` and :func:`point_params`
#: (the CPU preset of :mod:`hiergen.experiments.cnn_probe`, one torch thread per point)
DEFAULTS: dict[str, Any] = {
    **{k: CPU_DEFAULT[k] for k in ("n_test", "width", "epochs", "batch_size", "lr")},
    "n_samples": 1000, "noise": "gaussian", "whiten": True, "device": "cpu", "threads": 1,
}


def _params(cfg: Mapping[str, Any], seed: int, n_train: int) -> dict[str, Any]:
    base = {k: v for k, v in cfg.items() if k not in ("rhm", "seeds", "n_trains")}
    return {**base, **cfg["rhm"], "seed": seed, "n_train": n_train}


def point_params(rhm: Mapping[str, int], seed: int, n_train: int, times: Any, **settings: Any
                 ) -> dict[str, Any]:
    """The validated parameters of one point for :func:`cnn_probe_point` (``settings``: the
    keyword settings of :func:`cnn_probe_grid`, defaults :data:`DEFAULTS`)."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown CNN-probe settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = _check_settings(rhm, [seed], [n_train], times, {**DEFAULTS, **settings})
    return _params(cfg, cfg["seeds"][0], cfg["n_trains"][0])


def cnn_probe_grid(
    rhm: Mapping[str, int],
    seeds: Sequence[int],
    n_trains: Sequence[int],
    times: Any,
    *,
    n_test: int = DEFAULTS["n_test"],
    width: int = DEFAULTS["width"],
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    n_samples: int = DEFAULTS["n_samples"],
    noise: str = DEFAULTS["noise"],
    whiten: bool = DEFAULTS["whiten"],
    device: str = DEFAULTS["device"],
    threads: int = DEFAULTS["threads"],
    out: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Train and probe one CNN per RHM seed and training-set size (see the module docs).

    ``rhm``: ``{"v", "n_classes", "m", "s", "L"}``; point ``(seed, n_train)`` uses
    ``RHM(**rhm, seed=seed)``, ``train_cnn(..., n_train=n_train, seed=seed,
    threads=threads)`` and ``cnn_probe(..., times, seed=seed + 1)``.
    ``out``: a point-store folder; finished points are reused and a point killed after
    training reuses its saved CNN (other settings are refused, naming them).
    ``scheduler`` / ``n_workers``: run the points as Dask tasks (``"local"``, an address, a
    scheduler file or a ``distributed.Client``; ``out`` must then be shared with the
    workers); the numbers are those of the serial run.

    Returns an ``xarray.Dataset`` over ``seed`` ``(n_seeds,)``, ``n_train`` ``(n_P,)``,
    ``time`` ``(n_t,)``, ``layer`` ``(L,)``: ``cos_sim`` / ``cos_sim_se`` ``(seed, n_train,
    time, layer)``; ``logits_cos``, ``class_change``, ``class_change_bp`` (+ ``_se``) and
    ``cnn_acc_x0`` ``(seed, n_train, time)``; :data:`CNN_VARS` and ``seconds`` ``(seed,
    n_train)``. ``attrs``: the settings, ``points_computed``, ``points_reused``,
    ``seconds_computed``, ``cnn_checkpoints_reused``.
    """
    from hiergen.experiments.grid import GridPoint, run_grid

    cfg = _check_settings(rhm, seeds, n_trains, times, dict(
        n_test=n_test, width=width, epochs=epochs, batch_size=batch_size, lr=lr,
        n_samples=n_samples, noise=noise, whiten=whiten, device=device, threads=threads))
    if scheduler is not None or n_workers is not None:
        from hiergen.experiments.distributed import check_scheduler

        check_scheduler(scheduler, n_workers)
    points = {(s, p): GridPoint(_point_key(s, p), _params(cfg, s, p))
              for s in cfg["seeds"] for p in cfg["n_trains"]}
    results, info = run_grid(cnn_probe_point, list(points.values()), store=_store(out, cfg),
                             scheduler=scheduler, n_workers=n_workers, progress=progress,
                             desc="CNN probe points")
    grid = [[results[points[(s, p)].key] for p in cfg["n_trains"]] for s in cfg["seeds"]]
    return _assemble(grid, cfg, info)


def _assemble(grid: list[list[xr.Dataset]], cfg: Mapping[str, Any], info: Mapping[str, Any]
              ) -> xr.Dataset:
    """Stack the point datasets ``grid[i_seed][i_n_train]`` into one Dataset with the leading
    dims ``(seed, n_train)``."""
    from hiergen.experiments.sweeps import _TIME_UNITS, TIME_MEANING

    first = grid[0][0]
    ds = xr.Dataset(coords={"seed": cfg["seeds"], "n_train": cfg["n_trains"],
                            "time": first["time"].values, "layer": first["layer"].values})
    for name, var in first.data_vars.items():
        data = np.stack([np.stack([pt[name].values for pt in row]) for row in grid])
        ds[name] = (("seed", "n_train", *var.dims), data)
        ds[name].attrs.update(var.attrs)
        ds[name].attrs.setdefault("units", "1")
        if name.endswith("_se"):
            ds[name].attrs["long_name"] = f"standard error of {name[:-3]} over probe samples"
    ds["seconds"] = (("seed", "n_train"),
                     np.array([[float(pt.attrs.get("seconds", np.nan)) for pt in row] for row in grid]))
    for name, (doc, units) in CNN_VARS.items():
        ds[name].attrs.update(long_name=doc, units=units)
    ds["time"].attrs.update(long_name=f"noise level: {TIME_MEANING[cfg['noise']]}",
                            units=_TIME_UNITS[cfg["noise"]])
    ds["seconds"].attrs.update(long_name="wall time spent computing the point", units="s")
    ds["cnn_acc_x0"].attrs["long_name"] = "CNN accuracy on the clean probe data x0"
    ds["seed"].attrs["long_name"] = "seed of the RHM rules, the CNN's data and initialisation (probe: seed + 1)"
    ds["n_train"].attrs.update(long_name="CNN training-set size P", units="1")
    ds["layer"].attrs.update(first["layer"].attrs, units="1")
    ds.attrs.update(_grid_attrs(grid, cfg, info))
    return ds


def _grid_attrs(grid: list[list[xr.Dataset]], cfg: Mapping[str, Any], info: Mapping[str, Any]
                ) -> dict[str, Any]:
    from hiergen import __version__

    attrs: dict[str, Any] = {"title": "CNN probe of forward-backward resampling on the RHM",
                             "Conventions": "CF-1.8", **cfg["rhm"]}
    for k in ("n_test", "width", "epochs", "batch_size", "lr", "n_samples", "noise", "device",
              "threads"):
        attrs[k] = cfg[k]
    attrs.update(whiten=int(cfg["whiten"]), probe_seed="seed + 1", bp_backend="numpy",
                 hiergen_version=__version__, torch_version=str(_torch().__version__),
                 points_computed=int(info["points_computed"]),
                 points_reused=int(info["points_reused"]),
                 seconds_computed=float(info["seconds_computed"]),
                 cnn_checkpoints_reused=sum(int(pt.attrs.get(FROM_CHECKPOINT, 0))
                                            for row in grid for pt in row))
    return attrs


def plot_grid(ds: xr.Dataset) -> Any:
    """Summary figure of a :func:`cnn_probe_grid` dataset, one line per training-set size
    (mean over seeds, band: standard error across seeds): (a) class-change rate of the CNN's
    prediction vs noise level (dashed: the true class, from BP), (b) whitened cosine
    similarity of the last layer, (c) test accuracy vs training-set size."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1, 1, 0.7])
    t = ds["time"].values
    n_seeds = ds.sizes["seed"]
    cmap = colormaps["viridis"]
    last = ds["cos_sim"].isel(layer=-1)
    for j, p in enumerate(ds["n_train"].values):
        c = cmap(0.9 * j / max(ds.sizes["n_train"] - 1, 1))
        acc = float(ds["test_acc"].sel(n_train=p).mean())
        for ax, var in ((ax1, ds["class_change"]), (ax2, last)):
            y = var.sel(n_train=p)
            mean = y.mean("seed").values
            ax.plot(t, mean, color=c, label=f"P = {p} (test acc {acc:.3f})")
            if n_seeds > 1:
                se = (y.std("seed", ddof=1) / math.sqrt(n_seeds)).values
                ax.fill_between(t, mean - se, mean + se, color=c, alpha=0.25, lw=0)
    ax1.plot(t, ds["class_change_bp"].mean(("seed", "n_train")).values, color="k", ls="--",
             label="true class (BP)")
    ax1.set_ylabel("class-change rate x0 -> x0_hat")
    ax2.set_ylabel(f"cosine similarity, layer {int(ds['layer'].values[-1])} (last)")
    xl = {"gaussian": "diffusion time t", "uniform": "corruption eps"}.get(ds.attrs.get("noise"), "noise level")
    for ax in (ax1, ax2):
        ax.set_xlabel(xl)
    ax1.legend(fontsize=8)
    P = ds["n_train"].values
    for i in range(n_seeds):
        ax3.plot(P, ds["test_acc"].isel(seed=i).values, "o", color="0.6", ms=4)
    ax3.plot(P, ds["test_acc"].mean("seed").values, "o-", color="k", label=f"mean over {n_seeds} seeds")
    if len(P) > 1 and P.min() > 0:
        ax3.set_xscale("log")
        ax3.minorticks_off()
    ax3.set_xticks(P, [str(p) for p in P])
    ax3.set_xlabel("training-set size P")
    ax3.set_ylabel("CNN test accuracy")
    ax3.legend(fontsize=8)
    fig.suptitle(f"CNN probe, RHM v={ds.attrs.get('v')} m={ds.attrs.get('m')} "
                 f"s={ds.attrs.get('s')} L={ds.attrs.get('L')}, {n_seeds} seed(s)", fontsize=10)
    return fig


__all__ = ["CNN_VARS", "DEFAULTS", "RHM_KEYS", "cnn_probe_grid", "cnn_probe_point", "plot_grid",
           "point_params"]
