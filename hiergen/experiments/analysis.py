"""Reading forward–backward curves: transition time, sharpness, inversion of levels.

The *transition time* ``t*`` of a curve going from ``low`` (no noise) to ``high`` (pure
noise) is where it crosses halfway; its *sharpness* is the slope there. Both come from a
weighted least-squares logistic fit ``low + (high - low) / (1 + exp(-(t - t*) / w))``:
the slope at ``t*`` is ``(high - low) / (4 w)`` and the 10%–90% width is
``2 ln(9) w``. When the fit fails the crossing is read off by linear interpolation and
the slope from the two points around it (``method = "interpolation"``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr

from hiergen.models.errors import ConfigError
from hiergen.models.grammar import Grammar, TreeSample

_LN9x2 = 2.0 * math.log(9.0)


@dataclass(frozen=True)
class Transition:
    """Where and how sharply a curve goes from ``low`` to ``high``.

    ``t_star``: halfway crossing (NaN if the curve never gets halfway); ``slope``: derivative
    of the curve at ``t_star`` (curve units per unit time; negative for a decreasing curve);
    ``width``: time the curve takes from 10% to 90% of the way; ``method``: ``"logistic"``
    or ``"interpolation"``.
    """

    t_star: float
    slope: float
    width: float
    low: float
    high: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interp_crossing(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """First upward crossing of 0.5 of the normalised curve ``y``; slope of ``y`` there."""
    above = np.nonzero(y >= 0.5)[0]
    if above.size == 0 or above[0] == 0:
        return (float(t[0]) if above.size else math.nan), math.nan
    i = int(above[0])
    dy = y[i] - y[i - 1]
    frac = (0.5 - y[i - 1]) / dy if dy > 0 else 0.5
    return float(t[i - 1] + frac * (t[i] - t[i - 1])), float(dy / (t[i] - t[i - 1]))


def transition(
    times: Any, curve: Any, low: float, high: float, se: Any | None = None
) -> Transition:
    """Transition time and sharpness of ``curve`` ``(n_t,)`` sampled at ``times`` ``(n_t,)``.

    ``low`` / ``high``: the curve's values without noise and at infinite noise (e.g. 0 and
    ``1 - 1/n_classes`` for the class-change probability; 1 and ``1/n_classes`` for the
    probability of the correct class). ``se``: optional standard errors (fit weights).
    """
    t = np.asarray(times, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    if t.ndim != 1 or c.shape != t.shape:
        raise ConfigError(f"times and curve must be 1-D of the same length, got {t.shape}, {c.shape}")
    if not math.isfinite(low) or not math.isfinite(high) or low == high:
        raise ConfigError(f"need finite low != high, got low={low}, high={high}")
    keep = np.isfinite(c)
    t, c = t[keep], c[keep]
    if t.size < 2:
        raise ConfigError("need at least two finite points of the curve")
    order = np.argsort(t)
    t, c = t[order], c[order]
    y = (c - low) / (high - low)
    t_int, dy_int = _interp_crossing(t, y)
    if math.isnan(t_int):
        return Transition(math.nan, math.nan, math.nan, low, high, "interpolation")
    sig = None
    if se is not None:
        s = np.asarray(se, dtype=np.float64)[keep][order] / abs(high - low)
        sig = np.sqrt(np.nan_to_num(s, nan=0.0) ** 2 + 0.01**2)  # floor: model error, SE = 0 ends
    span = float(t[-1] - t[0])
    try:
        from scipy.optimize import curve_fit

        def f(tt: np.ndarray, t0: float, log_w: float) -> np.ndarray:
            return 1.0 / (1.0 + np.exp(-np.clip((tt - t0) / np.exp(log_w), -60, 60)))

        p0 = [t_int, math.log(max(span / 20.0, 1e-12))]
        (t0, log_w), _ = curve_fit(f, t, y, p0=p0, sigma=sig, maxfev=5000)
        w = math.exp(log_w)
        if not (t[0] <= t0 <= t[-1]) or not math.isfinite(w) or w <= 0:
            raise RuntimeError("fit outside the sampled range")
        return Transition(float(t0), (high - low) / (4.0 * w), _LN9x2 * w, low, high, "logistic")
    except (RuntimeError, ValueError, OverflowError):
        slope = dy_int * (high - low)
        width = 0.8 / dy_int if dy_int and math.isfinite(dy_int) and dy_int > 0 else math.nan
        return Transition(t_int, slope, width, low, high, "interpolation")


def class_limits(n_classes: int, root_prior: Any | None = None) -> dict[str, tuple[float, float]]:
    """``(low, high)`` of the class curves: the class-change probability goes from 0 to
    ``1 - sum(prior**2)``, the probability of the correct class from 1 to ``sum(prior**2)``
    (``1/n_classes`` for a uniform prior)."""
    prior = np.full(n_classes, 1.0 / n_classes) if root_prior is None else np.asarray(root_prior)
    q = float(np.sum(prior**2))
    return {"class_change": (0.0, 1.0 - q), "p_correct_class": (1.0, q)}


def transitions(ds: xr.Dataset, var: str = "class_change") -> xr.Dataset:
    """Transition of ``ds[var]`` per depth (seeds averaged first) for a sweep dataset.

    ``ds``: output of :func:`~hiergen.experiments.sweeps.sweep_forward_backward`
    (dims ``L, seed, time``) or of ``forward_backward`` (dim ``time``).
    ``var``: ``"class_change"`` or ``"p_correct_class"``.
    Returns a Dataset over ``L`` with ``t_star``, ``slope``, ``width``.
    """
    if var not in ("class_change", "p_correct_class"):
        raise ConfigError(f"var must be 'class_change' or 'p_correct_class', got {var!r}")
    if var not in ds:
        raise ConfigError(f"dataset has no variable {var!r}")
    low, high = class_limits(int(ds.attrs["n_classes"]))[var]
    high = float(ds.attrs.get(f"{var}_limit", high))  # set for non-uniform class priors
    curve, se = ds[var], ds[var + "_se"]
    if "seed" in curve.dims:
        n = curve.sizes["seed"]
        se = np.sqrt((se**2).sum("seed")) / n
        curve = curve.mean("seed")
    if "L" not in curve.dims:
        curve, se = curve.expand_dims(L=[int(ds.attrs.get("L", -1))]), se.expand_dims(L=[0])
    rows = [transition(ds["time"].values, curve.isel(L=i).values, low, high, se.isel(L=i).values)
            for i in range(curve.sizes["L"])]
    return xr.Dataset(
        {
            "t_star": ("L", [r.t_star for r in rows]),
            "slope": ("L", [r.slope for r in rows]),
            "width": ("L", [r.width for r in rows]),
            "method": ("L", [r.method for r in rows]),
        },
        coords={"L": curve["L"].values},
        attrs={"var": var, "low": low, "high": high},
    )


def inversion_time(times: Any, high_level: Any, low_level: Any) -> float:
    """First time at which the change probability of a high level (e.g. the class) exceeds
    that of a low level (e.g. the leaves), by linear interpolation; NaN if it never does.

    Before the transition the class is the most stable part of the datum; after it the
    class has changed while low-level features are still partly kept: the curves invert.
    """
    t = np.asarray(times, dtype=np.float64)
    d = np.asarray(high_level, dtype=np.float64) - np.asarray(low_level, dtype=np.float64)
    # robust to sampling noise where both curves sit at 0 (small t) or saturate (large t):
    # the crossing searched is the one between the most negative and the most positive gap
    lo = int(np.nanargmin(d))
    if d[lo] >= 0:
        return float(t[0]) if d[0] > 0 else math.nan
    pos = np.nonzero(d[lo:] > 0)[0]
    if pos.size == 0:
        return math.nan
    i = lo + int(pos[0])
    return float(t[i - 1] + (0 - d[i - 1]) / (d[i] - d[i - 1]) * (t[i] - t[i - 1]))


def trees_generable(grammar: Grammar, tree: TreeSample) -> np.ndarray:
    """``(n,)`` bool: whether each tree of ``tree`` is a derivation of ``grammar``.

    Checks every node: its rule index exists for its symbol with positive probability, and
    the rule's right-hand side equals its children's symbols; the class has positive prior.
    """
    n = len(tree)
    ok = np.asarray(grammar.root_prior)[tree.symbols[0][:, 0]] > 0
    for lev in range(grammar.L):
        sym = tree.symbols[lev]  # (n, n_l)
        r = tree.rules[lev]
        valid_r = (r >= 0) & (r < grammar.n_rules[lev][sym])
        r_safe = np.where(valid_r, r, 0)
        p = grammar.probs[lev][sym, r_safe]
        kids = grammar.children[lev][sym, r_safe].reshape(n, -1)  # (n, n_{l+1})
        ok &= valid_r.all(1) & (p > 0).all(1) & (kids == tree.symbols[lev + 1]).all(1)
    ok &= (tree.leaves == tree.symbols[-1]).all(1)
    return ok


def _summary_header(ds: xr.Dataset, sweep: xr.Dataset, noise: str) -> list[str]:
    """What ran: the grammar, the depths, samples and seeds, the noise levels, the protocol."""
    from hiergen.experiments.sweeps import TIME_MEANING

    t = sweep["time"].values
    depths = [int(x) for x in sweep["L"].values]
    lines = ["Forward-backward experiment (exact belief propagation)"]
    if "rhm_v" in ds.attrs:
        v, nc, m, s = (int(ds.attrs[f"rhm_{k}"]) for k in ("v", "n_classes", "m", "s"))
        f = m / v ** (s - 1)
        regime = ("s*f < 1: the class should show a sharp transition"
                  if s * f < 1 else "s*f >= 1: no class transition expected at large depth")
        lines.append(
            f"  data: Random Hierarchy Model, v={v} symbols per level, {nc} classes, m={m} rules "
            f"per symbol, s={s} (f = m/v^(s-1) = {f:.3g}; {regime})"
        )
    else:
        lines.append(f"  data: {ds.attrs.get('grammar', 'a grammar')}")
    lines.append(
        f"  depths L = {', '.join(map(str, depths))}; {ds.attrs.get('n_samples')} samples x "
        f"{sweep.sizes.get('seed', 1)} seed(s) per point; {len(t)} noise levels in "
        f"[{t.min():g}, {t.max():g}] ({TIME_MEANING.get(noise, noise)})"
    )
    lines.append(
        "  protocol: noise a clean datum x0 to level t, draw x0_hat from the exact posterior "
        "p(x0 | noisy) with BP, count how often each level of the hidden tree changed."
    )
    return lines


def _transition_table(tr: xr.Dataset, depths: list[int]) -> list[str]:
    lines = ["", "  depth L | class transition t* | 10-90% width | slope at t*"]
    for L in depths:
        row = tr.sel(L=L)
        lines.append(
            f"  {L:7d} | {float(row.t_star):19.4g} | {float(row.width):12.4g} | "
            f"{float(row.slope):.3g} per unit t"
        )
    return lines + [""]


def _transition_story(sweep: xr.Dataset, tr: xr.Dataset, unit: str) -> list[str]:
    """The class transition in words: where, how sharp with depth, the leaves, the inversion."""
    ok = tr["t_star"].notnull()
    if not ok.any():
        return ["  The class curve never got halfway: extend the noise range."]
    ts = tr["t_star"].where(ok, drop=True)
    widths = tr["width"].where(ok, drop=True)
    lo, hi = tr.attrs["low"], tr.attrs["high"]
    lines = [
        f"  The class (root of the tree) is kept at small t and lost at large t: the "
        f"probability that it changed reaches half its maximum ({(lo + hi) / 2:.3g} of "
        f"{hi:.3g}) at t* = {float(ts[-1]):.4g}{(' ' + unit) if unit else ''} for "
        f"L = {int(ts['L'][-1])}."
    ]
    if len(widths) > 1:
        sharper = float(widths[-1]) < float(widths[0])
        lines.append(
            f"  The jump takes {float(widths[0]):.3g} at L = {int(widths['L'][0])} and "
            f"{float(widths[-1]):.3g} at L = {int(widths['L'][-1])}: "
            + ("it gets sharper with depth, the signature of a phase transition."
               if sharper else "it does NOT get sharper with depth here.")
        )
    t = sweep["time"].values
    Lmax = int(sweep["L"].values[-1])
    pc = sweep["p_change"].sel(L=Lmax)
    if "seed" in pc.dims:
        pc = pc.mean("seed")
    leaves = pc.sel(level=Lmax).values
    t_star = float(tr["t_star"].sel(L=Lmax))
    if np.isfinite(t_star):
        leaf_at = float(np.interp(t_star, t, leaves))
        lines.append(
            f"  Low levels change smoothly: at t* the leaves of the L = {Lmax} trees changed "
            f"in {100 * leaf_at:.0f}% of positions."
        )
    t_inv = inversion_time(t, pc.sel(level=0).values, leaves)
    if np.isfinite(t_inv):
        lines.append(
            f"  Inversion: below t = {t_inv:.4g} the leaves change more often than the class; "
            "above it the class has changed while low-level features are still partly kept."
        )
    return lines


def summarize(ds: xr.Dataset, figures: dict[str, Any] | None = None, data: Any = None) -> str:
    """A plain-language summary of a forward–backward sweep (what ran, the transition time
    and its sharpness per depth, the inversion of levels, where figures and data are)."""
    sweep = ds if "L" in ds.dims else ds.expand_dims(L=[int(ds.attrs["L"])])
    noise = str(ds.attrs.get("noise", "gaussian"))
    depths = [int(x) for x in sweep["L"].values]
    tr = transitions(ds, "class_change")
    lines = _summary_header(ds, sweep, noise) + _transition_table(tr, depths)
    lines += _transition_story(sweep, tr, "steps" if noise == "gaussian" else "")
    if figures:
        lines.append("")
        lines.append("  figures:")
        lines.extend(f"    {p}" for p in figures.values())
    if data is not None:
        lines.append(f"  data (NetCDF): {data}")
    return "\n".join(lines)
