"""``hiergen meanfield``: the annealed mean-field theory of BP denoising on the RHM.

Prints the regime, the fixed points of the upward map and their stability, the critical
noise ``eps*`` (and the DDPM time ``t*`` it corresponds to), and the predicted probability
of the correct value at every level (upward, downward, marginal) for a list of noises.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "meanfield",
        help="mean-field theory of BP denoising: eps*, stability, per-level predictions",
        description="Annealed mean-field theory of belief-propagation denoising on the Random "
        "Hierarchy Model (v, m, s): fixed points of the upward map and their stability, the "
        "critical corruption eps* (and DDPM time t*), and the predicted probability of the "
        "correct value per level for uniform corruption eps (--eps) or diffusion time t (--t).",
    )
    p.add_argument("--v", type=int, required=True, help="RHM vocabulary size per level")
    p.add_argument("--m", type=int, required=True, help="RHM rules per symbol")
    p.add_argument("--s", type=int, required=True, help="RHM branching factor")
    p.add_argument("--L", type=int, default=None,
                   help="depth L: also print the predictions per level; default: only the "
                        "L -> inf facts")
    p.add_argument("--n-classes", type=int, default=None, help="number of classes (default: v)")
    p.add_argument("--eps", type=float, nargs="+", default=None,
                   help="uniform corruption levels in [0, 1], with --L (default: 0.1, 0.2, .., "
                        "0.9 and eps*)")
    p.add_argument("--t", type=float, nargs="+", default=None,
                   help="DDPM diffusion times instead of --eps, with --L (linear schedule, T = 1000)")
    p.add_argument("--statistic", choices=["geometric", "mean"], default="geometric",
                   help="leaf statistic matched by the t -> eps(t) mapping (default: geometric)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run_meanfield)


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def summary(v: int, m: int, s: int, n_classes: int | None = None,
            statistic: str = "geometric") -> dict[str, Any]:
    """The theory's L -> inf facts for ``(v, m, s)`` as a JSON-able dict."""
    from hiergen.inference import meanfield as mf

    v, m, s, n_classes = mf.check_params(v, m, s, n_classes)
    return {
        "v": v, "m": m, "s": s, "n_classes": n_classes,
        "f": m / v ** (s - 1),
        "s_f": s * m / v ** (s - 1),
        "regime": mf.regime(v, m, s),
        "transition": mf.transition_exists(v, m, s),
        "slope_at_1": mf.slope_at_one(v, m, s),
        "slope_at_1_over_v": mf.slope_at_uniform(v, m, s),
        "fixed_points": [
            {"p": fp.p, "eps": fp.eps, "slope": fp.slope, "stable": fp.stable}
            for fp in mf.fixed_points(v, m, s)
        ],
        "eps_star": _num(mf.critical_eps(v, m, s)),
        "t_star": _num(mf.critical_time(v, m, s, statistic=statistic)),
    }


def run_meanfield(args: argparse.Namespace) -> int:
    import numpy as np

    from hiergen.inference import meanfield as mf
    from hiergen.models.errors import ConfigError

    info = summary(args.v, args.m, args.s, args.n_classes, args.statistic)
    if args.eps is not None and args.t is not None:
        raise ConfigError("give either --eps or --t, not both")
    pred = None
    if args.L is not None:
        if args.t is not None:
            pred = mf.predict_time(np.asarray(args.t), args.v, args.m, args.s, args.L,
                                   args.n_classes, statistic=args.statistic)
        else:
            eps = args.eps
            if eps is None:
                eps = [round(0.1 * k, 1) for k in range(1, 10)]
                if info["eps_star"] is not None:
                    eps = sorted(set(eps) | {round(info["eps_star"], 4)})
            pred = mf.predict(np.asarray(eps, dtype=float), args.v, args.m, args.s, args.L,
                              args.n_classes)
    if args.json:
        if pred is not None:
            info["L"] = args.L
            info["predictions"] = {
                "eps": pred.eps.tolist(),
                "t": None if pred.time is None else pred.time.tolist(),
                "up": pred.up.tolist(), "down": pred.down.tolist(),
                "marginal": pred.marginal.tolist(),
            }
        print(json.dumps(info))
        return 0
    _print_summary(info)
    if pred is not None:
        _print_predictions(pred)
    return 0


def _print_summary(info: dict[str, Any]) -> None:
    print(f"RHM v={info['v']} m={info['m']} s={info['s']} n_classes={info['n_classes']}: "
          f"f = m/v^(s-1) = {info['f']:.4g}, s*f = {info['s_f']:.4g}")
    print(f"regime: {info['regime']}")
    print(f"slope of the upward map at p=1:   {info['slope_at_1']:.4f} "
          f"({'stable' if info['slope_at_1'] < 1 else 'unstable'})")
    print(f"slope of the upward map at p=1/v: {info['slope_at_1_over_v']:.4f} "
          f"({'stable' if info['slope_at_1_over_v'] < 1 else 'unstable'})")
    print("fixed points (p, eps, slope, stability):")
    for fp in info["fixed_points"]:
        print(f"  p = {fp['p']:.6f}  eps = {fp['eps']:.6f}  slope = {fp['slope']:.4f}  "
              f"{'stable' if fp['stable'] else 'unstable'}")
    if info["eps_star"] is None:
        print("eps* = none (no phase transition of the class)")
    else:
        t_star = "none" if info["t_star"] is None else f"{info['t_star']:.1f}"
        print(f"eps* = {info['eps_star']:.6f}   (DDPM time t* = {t_star})")


def _print_predictions(pred: Any) -> None:
    L = pred.L
    head = "  ".join(f"l={lev:<4d}" for lev in range(L + 1))
    for name, arr in (("marginal (up x down)", pred.marginal), ("upward", pred.up),
                      ("downward", pred.down)):
        print(f"\nprobability of the correct value, {name} (level 0 = class, {L} = leaves)")
        col = "t" if pred.time is not None else "eps"
        print(f"{col:>8}  {'eps' if pred.time is not None else '':>8}  {head}")
        for k in range(pred.eps.shape[0]):
            x = pred.time[k] if pred.time is not None else pred.eps[k]
            e = f"{pred.eps[k]:8.4f}" if pred.time is not None else " " * 8
            row = "  ".join(f"{val:.4f}" for val in arr[k])
            print(f"{x:8.4g}  {e}  {row}")
