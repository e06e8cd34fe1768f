"""Figures of the image experiment (the paper's Fig. 2).

* :func:`plot_similarity` - mean cosine similarity of whitened activations vs reversal step k,
  one curve per hooked layer, coloured from the stem (dark) to the head (light);
* :func:`plot_class_change` - probability that the top-1 class changed vs k;
* :func:`plot_grid` - start image and generated images for several k (Fig. 2 left);
* :func:`plot_fig2` - the three panels in one PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hiergen._files import atomic_path
from hiergen.models.errors import ConfigError


def _new_axes(figsize: tuple[float, float], **kwargs):
    """Axes on a new :class:`matplotlib.figure.Figure` (no pyplot state, no backend switch:
    library code must not change the user's matplotlib backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize).subplots(**kwargs)


def plot_similarity(ds, ax=None, metric: str = "cosine"):
    """Per-layer mean (over images) of ``metric`` vs k. ``ds`` is a merged probe Dataset."""
    ax = ax or _new_axes((5, 3.5))
    layers = list(ds["layer"].values)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    k = ds["k"].values
    mean = ds[metric].mean("image")
    for i, layer in enumerate(layers):
        ax.plot(k, mean.sel(layer=layer).values, color=cmap(i / max(1, len(layers) - 1)), lw=1.2,
                label=layer if i in (0, len(layers) - 1) else None)
    ax.set_xlabel("reversal step k")
    ax.set_ylabel({"cosine": "cosine similarity", "l2": "L2 distance",
                   "nl2": "normalized L2"}.get(metric, metric))
    ax.set_title("hidden representations (stem dark -> head light)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return ax


def plot_class_change(ds, ax=None):
    """Fraction of images whose top-1 class changed, vs k, with a binomial standard error."""
    ax = ax or _new_axes((5, 3.5))
    p = ds["class_change"].mean("image").values
    n = ds.sizes["image"]
    err = np.sqrt(p * (1 - p) / max(n, 1))
    k = ds["k"].values
    ax.errorbar(k, p, yerr=err, marker="o", ms=3, lw=1.2, color="C3", capsize=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("reversal step k")
    ax.set_ylabel("P(top-1 class changed)")
    return ax


def plot_grid(run_dir: str | os.PathLike, image_ids: Sequence[str], ks: Sequence[int], ax=None):
    """Rows: images; columns: k (k = 0 is the start image). Reads ``run_dir/fb/k*/<id>.png``."""
    from PIL import Image

    ax = ax or _new_axes((1 + len(ks), 1 + len(image_ids)))
    rows = []
    for iid in image_ids:
        cells = []
        for k in ks:
            img = np.asarray(Image.open(Path(run_dir) / "fb" / f"k{int(k):04d}" /
                                        f"{iid.replace('/', '__')}.png").convert("RGB"))
            pad = np.full((img.shape[0] + 2, img.shape[1] + 2, 3), 255, dtype=np.uint8)
            pad[1:-1, 1:-1] = img
            cells.append(pad)
        rows.append(np.concatenate(cells, axis=1))
    ax.imshow(np.concatenate(rows, axis=0), interpolation="nearest")
    w = rows[0].shape[1] / len(ks)
    ax.set_xticks([w * (i + 0.5) for i in range(len(ks))], [str(k) for k in ks], fontsize=7)
    ax.set_yticks([])
    ax.set_xlabel("reversal step k")
    return ax


def plot_fig2(ds, run_dir: str | os.PathLike, out_png: str | os.PathLike,
              n_grid_images: int = 4, n_grid_k: int = 6) -> Path:
    """The three panels (grid, similarity, class change) into ``out_png`` (written atomically;
    the format follows its suffix)."""
    ks = [int(k) for k in ds["k"].values]
    pick_k = sorted({ks[int(round(i))] for i in np.linspace(0, len(ks) - 1, n_grid_k)})
    ids = [str(i) for i in ds["image"].values]
    pick_i = [ids[int(round(i))] for i in np.linspace(0, len(ids) - 1, min(n_grid_images,
                                                                            len(ids)))]
    axes = _new_axes((14, 4), nrows=1, ncols=3, gridspec_kw={"width_ratios": [1.1, 1, 1]})
    fig = axes[0].figure
    plot_grid(run_dir, pick_i, pick_k, axes[0])
    plot_similarity(ds, axes[1])
    plot_class_change(ds, axes[2])
    acc = ds.attrs.get("top1_accuracy", float("nan"))
    axes[2].set_title(f"top-1 acc. of start images {acc:.3f}"
                      f", N = {ds.attrs.get('n_steps', '?')}", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    fmt = out_png.suffix.lstrip(".").lower() or "png"
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=120, format=fmt)
    except ValueError as exc:  # matplotlib: unknown format
        raise ConfigError(f"{out_png}: cannot save a figure as {fmt!r} ({exc})") from exc
    return out_png
