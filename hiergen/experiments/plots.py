"""Figures of forward–backward experiments (matplotlib, no pyplot: safe in scripts and servers).

Every function takes a dataset of :func:`~hiergen.experiments.sweeps.sweep_forward_backward`
(dims ``L, seed, time, level``; seeds are averaged) or of ``forward_backward`` (dims
``time, level``) and returns a :class:`matplotlib.figure.Figure`;
:func:`save_figures` writes the standard set as PNG files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hiergen.models.errors import ConfigError

_LABELS = {
    "p_correct": "P(correct value) under BP marginal",
    "argmax_correct": "BP argmax correct",
    "p_change": "P(latent changed) x0 -> x0_hat",
    "class_change": "P(class changed)",
    "p_correct_class": "P(correct class) under BP marginal",
}


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.8)) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _seed_mean(da: xr.DataArray, se: xr.DataArray | None = None) -> tuple[xr.DataArray, xr.DataArray | None]:
    if "seed" in da.dims:
        n = da.sizes["seed"]
        if se is not None:
            se = np.sqrt((se**2).sum("seed")) / n
        da = da.mean("seed")
    return da, se


def _as_sweep(ds: xr.Dataset) -> xr.Dataset:
    """Give a single-grammar dataset a length-1 ``L`` dim so that every plot works on both."""
    if "L" in ds.dims:
        return ds
    if "L" not in ds.attrs:
        raise ConfigError("dataset has neither an L dimension nor an 'L' attribute")
    return ds.expand_dims(L=[int(ds.attrs["L"])])


def _xlabel(ds: xr.Dataset) -> str:
    return {"gaussian": "diffusion time t", "uniform": "corruption eps", "masking": "masking probability"}.get(
        ds.attrs.get("noise", ""), "noise level"
    )


def _levels_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.9, max(n, 2))]


def plot_levels(ds: xr.Dataset, var: str = "p_correct", L: int | None = None, ax: Any = None) -> Any:
    """Curves of ``var`` (``p_correct``, ``p_change``, ``argmax_correct``) per tree level vs
    time, for depth ``L`` (default: the largest); the paper's Fig. 5 panel."""
    ds = _as_sweep(ds)
    if var not in ds:
        raise ConfigError(f"dataset has no variable {var!r}")
    L = int(ds["L"].max()) if L is None else int(L)
    if L not in ds["L"].values:
        raise ConfigError(f"depth L={L} not in the dataset (has {ds['L'].values.tolist()})")
    cur, se = _seed_mean(ds[var].sel(L=L), ds[var + "_se"].sel(L=L))
    fig = None
    if ax is None:
        fig, axes = _figure()
        ax = axes[0, 0]
    t = ds["time"].values
    colors = _levels_colors(L + 1)
    for lev in range(L + 1):
        y = cur.sel(level=lev).values
        e = se.sel(level=lev).values
        name = "class (l=0)" if lev == 0 else ("leaves" if lev == L else f"l={lev}")
        ax.plot(t, y, color=colors[lev], label=name, lw=1.6)
        ax.fill_between(t, y - e, y + e, color=colors[lev], alpha=0.25, lw=0)
    ax.set_xlabel(_xlabel(ds))
    ax.set_ylabel(_LABELS.get(var, var))
    ax.set_title(f"L = {L}")
    ax.legend(fontsize=7, ncol=2)
    return fig if fig is not None else ax.figure


def plot_class_vs_depth(ds: xr.Dataset, var: str = "class_change", ax: Any = None) -> Any:
    """The class curve for every depth (it sharpens with L), with each depth's estimated
    transition time marked."""
    from hiergen.experiments.analysis import transitions

    ds = _as_sweep(ds)
    cur, se = _seed_mean(ds[var], ds[var + "_se"])
    tr = transitions(ds, var)
    fig = None
    if ax is None:
        fig, axes = _figure()
        ax = axes[0, 0]
    t = ds["time"].values
    colors = _levels_colors(ds.sizes["L"])
    for i, L in enumerate(ds["L"].values):
        y, e = cur.sel(L=L).values, se.sel(L=L).values
        ax.plot(t, y, color=colors[i], label=f"L = {L}", lw=1.6)
        ax.fill_between(t, y - e, y + e, color=colors[i], alpha=0.25, lw=0)
        ts = float(tr["t_star"].sel(L=L))
        if np.isfinite(ts):
            ax.axvline(ts, color=colors[i], ls=":", lw=1)
    ax.axhline((tr.attrs["low"] + tr.attrs["high"]) / 2, color="grey", ls="--", lw=0.8)
    ax.set_xlabel(_xlabel(ds))
    ax.set_ylabel(_LABELS.get(var, var))
    ax.set_title("class curve sharpens with depth")
    ax.legend(fontsize=8)
    return fig if fig is not None else ax.figure


def plot_sharpness(ds: xr.Dataset, var: str = "class_change") -> Any:
    """Transition time and 10–90% width of the class curve vs depth L."""
    from hiergen.experiments.analysis import transitions

    tr = transitions(_as_sweep(ds), var)
    fig, axes = _figure(2, 1, size=(4.0, 3.2))
    Ls = tr["L"].values
    axes[0, 0].plot(Ls, tr["t_star"].values, "o-")
    axes[0, 0].set_xlabel("depth L")
    axes[0, 0].set_ylabel(f"transition t* ({_xlabel(ds)})")
    axes[0, 1].plot(Ls, tr["width"].values, "o-", color="C1")
    axes[0, 1].set_xlabel("depth L")
    axes[0, 1].set_ylabel("10-90% width of the class curve")
    for ax in axes[0]:
        ax.set_xticks(Ls)
    return fig


def plot_vs_depth(ds: xr.Dataset, var: str = "class_change", n_times: int = 5) -> Any:
    """``var`` vs depth L at a few times around the transition."""
    ds = _as_sweep(ds)
    cur, se = _seed_mean(ds[var], ds[var + "_se"])
    t = ds["time"].values
    idx = np.unique(np.linspace(0, len(t) - 1, n_times + 2).round().astype(int)[1:-1])
    fig, axes = _figure()
    ax = axes[0, 0]
    colors = _levels_colors(len(idx))
    for c, i in zip(colors, idx):
        ax.errorbar(ds["L"].values, cur.isel(time=i).values, yerr=se.isel(time=i).values,
                    marker="o", color=c, label=f"t = {t[i]:g}", capsize=2)
    ax.set_xlabel("depth L")
    ax.set_ylabel(_LABELS.get(var, var))
    ax.set_xticks(ds["L"].values)
    ax.legend(fontsize=8)
    return fig


def plot_inversion(ds: xr.Dataset, L: int | None = None, var: str = "p_change") -> Any:
    """Change probability of the class, a middle level and the leaves at depth ``L``: the
    low-level curve is above the class curve before the transition and below after it."""
    from hiergen.experiments.analysis import inversion_time

    ds = _as_sweep(ds)
    L = int(ds["L"].max()) if L is None else int(L)
    cur, se = _seed_mean(ds[var].sel(L=L), ds[var + "_se"].sel(L=L))
    t = ds["time"].values
    fig, axes = _figure()
    ax = axes[0, 0]
    shown = sorted({0, L // 2, L})
    colors = _levels_colors(L + 1)
    for lev in shown:
        name = "class" if lev == 0 else ("leaves" if lev == L else f"level {lev}")
        y, e = cur.sel(level=lev).values, se.sel(level=lev).values
        ax.plot(t, y, color=colors[lev], label=name, lw=1.8)
        ax.fill_between(t, y - e, y + e, color=colors[lev], alpha=0.25, lw=0)
    t_inv = inversion_time(t, cur.sel(level=0).values, cur.sel(level=L).values)
    if np.isfinite(t_inv):
        ax.axvline(t_inv, color="k", ls=":", lw=1, label=f"inversion t = {t_inv:.0f}")
    ax.set_xlabel(_xlabel(ds))
    ax.set_ylabel(_LABELS.get(var, var))
    ax.set_title(f"low and high levels invert at the transition (L = {L})")
    ax.legend(fontsize=8)
    return fig


def plot_fig5(ds: xr.Dataset, L: int | None = None) -> Any:
    """The paper's Fig. 5 in one picture: per-level P(correct) and P(change) at depth L,
    and the class curve for every depth."""
    fig, axes = _figure(3, 1)
    plot_levels(ds, "p_correct", L=L, ax=axes[0, 0])
    plot_levels(ds, "p_change", L=L, ax=axes[0, 1])
    plot_class_vs_depth(ds, ax=axes[0, 2])
    return fig


def save_figures(ds: xr.Dataset, out: str | Path, prefix: str = "") -> dict[str, Path]:
    """Write the standard figures as PNG into ``out``; returns ``{name: path}``."""
    from hiergen._files import atomic_path, ensure_dir

    out = ensure_dir(out)
    figs = {
        "fig5_levels": plot_fig5(ds),
        "class_vs_depth": plot_class_vs_depth(ds),
        "sharpness_vs_depth": plot_sharpness(ds),
        "class_change_vs_L": plot_vs_depth(ds),
        "inversion": plot_inversion(ds),
    }
    paths = {}
    for name, fig in figs.items():
        path = out / f"{prefix}{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        paths[name] = path
    return paths
