"""Phase diagram of class recovery (the paper's Fig. 6): mean-field theory over (v, m)
overlaid with exact-BP simulations.

    python examples/phase_diagram.py                 # about 15 s on 2 CPU cores
    python examples/phase_diagram.py --vmax 64 --sim 8:2,3,4,5,6,7 16:2,4,6,8,10,12 32:4,8,16

Theory (s = 2 by default, v = 4..vmax, every feasible m): the regime of the class as the
depth grows — a transition at eps* (colour), "unrecoverable" (p = 1 unstable, about
s f > 1: the class is lost at any noise) or "always-recoverable" (p = 1/v unstable, m below
about s). Simulation: for each (v, m) of ``--sim``, exact BP root curves at two depths are
measured on an eps grid; where they cross is the simulated eps* (points coloured like the
theory), "x" marks grammars whose deeper curve is worse at every eps (class lost), "+"
those whose deeper curve is better at every eps. Panel (b): eps* against f = m / v^(s-1)
(finite-v theory, v -> inf limit, simulations). Writes ``phase_diagram.png`` and
``phase_diagram.nc``.

The simulation points (one per v, m, depth and RHM seed) are saved under ``OUT/simulation`` as
they finish: a rerun, or a larger ``--sim`` grid, reuses them. ``--scheduler local`` (or a
cluster's address) runs them as Dask tasks, with the same numbers.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hiergen.experiments.phase import SIM_KIND


def _sim_spec(items: Sequence[str]) -> list[tuple[int, int]]:
    """``["8:2,4", "16:4"]`` -> ``[(8, 2), (8, 4), (16, 4)]``."""
    pairs = []
    for item in items:
        v, ms = item.split(":")
        pairs.extend((int(v), int(m)) for m in ms.split(","))
    return pairs


def simulate(pairs: Sequence[tuple[int, int]], s: int, depths: tuple[int, int], eps: np.ndarray,
             n_samples: int, seeds: Sequence[int], tol: float = 0.003,
             progress: bool = True, **grid: Any) -> dict[str, np.ndarray]:
    """Exact-BP root curves at two depths and their crossing for every (v, m)
    (:func:`hiergen.experiments.phase.simulate_phase`; ``grid``: its ``out``, ``scheduler``
    and ``n_workers``)."""
    from hiergen.experiments.phase import simulate_phase

    return simulate_phase(pairs, s, depths, eps, n_samples, seeds, tol, progress=progress, **grid)


def run(args: argparse.Namespace) -> Any:
    import xarray as xr

    from hiergen.inference import meanfield as mf

    s = args.s
    vs = np.arange(4, args.vmax + 1)
    ms = np.arange(1, int(vs.max()) ** (s - 1) + 1) if s == 2 else np.arange(1, args.mmax + 1)
    if args.mmax:
        ms = ms[ms <= args.mmax]
    pd = mf.phase_diagram(vs, ms, s)
    pairs = _sim_spec(args.sim)
    eps = np.linspace(args.eps_min, args.eps_max, args.n_eps)
    sim = simulate(pairs, s, tuple(args.depths), eps, args.n_samples, args.seeds, args.tol,
                   not args.no_progress, out=args.out / "simulation", scheduler=args.scheduler,
                   n_workers=args.workers)
    theory_pairs = np.array([mf.critical_eps(v, m, s) for v, m in pairs])
    f_line = np.linspace(0.005, 1.0, 200)
    large_v = np.array([mf.critical_eps_large_v(f, s) for f in f_line])
    ds = xr.Dataset(
        {
            "regime": (("v", "m"), pd.code),
            "eps_star": (("v", "m"), pd.eps_star),
            "slope_one": (("v", "m"), pd.slope_one),
            "slope_uniform": (("v", "m"), pd.slope_uniform),
            "f": (("v", "m"), pd.f),
            "sim_v": (("grammar",), np.array([p[0] for p in pairs])),
            "sim_m": (("grammar",), np.array([p[1] for p in pairs])),
            "sim_root": (("grammar", "depth", "eps"), sim["root"]),
            "sim_root_sem": (("grammar", "depth", "eps"), sim["root_sem"]),
            "sim_eps_star": (("grammar",), sim["eps_sim"]),
            "sim_kind": (("grammar",), sim["kind"]),
            "theory_eps_star": (("grammar",), theory_pairs),
            "eps_star_large_v": (("f_line",), large_v),
        },
        coords={"v": vs, "m": ms, "depth": list(args.depths), "eps": eps, "f_line": f_line},
    )
    ds.attrs.update(s=s, regimes=", ".join(f"{i}={r}" for i, r in enumerate(mf.REGIMES)) + ", -1=infeasible",
                    sim_kinds=", ".join(f"{i}={k}" for i, k in enumerate(SIM_KIND)),
                    n_samples=args.n_samples, seeds=list(args.seeds), tol=args.tol,
                    points_computed=sim["info"]["points_computed"],
                    points_reused=sim["info"]["points_reused"])
    return ds


def plot(ds: Any, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    s = int(ds.attrs["s"])
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8))
    ax = axes[0]
    vs, ms = ds.v.values, ds.m.values
    extent = (vs[0] - 0.5, vs[-1] + 0.5, ms[0] - 0.5, ms[-1] + 0.5)
    code = ds.regime.values.T.astype(float)
    cat = np.where(code == 1, 0.0, np.where(code == 2, 1.0, np.where(code == 3, 2.0, np.nan)))
    ax.imshow(cat, origin="lower", extent=extent, aspect="auto", interpolation="nearest",
              cmap=ListedColormap(["0.75", "#bcd9f0", "#f0d9bc"]), vmin=0, vmax=2)
    im = ax.imshow(ds.eps_star.values.T, origin="lower", extent=extent, aspect="auto",
                   interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="eps* (theory colour map; simulation points)")
    v_line = np.linspace(vs[0], vs[-1], 200)
    if s == 2:
        ax.plot(v_line, (v_line + 1) / 2, "k-", lw=1, label="s m (v-1) = v^s - 1  (p=1 marginal)")
    ax.plot(v_line, s * (v_line - 1) * v_line ** (s - 1) / (v_line**s - 1), "k--", lw=1,
            label="m = s(v-1)v^(s-1)/(v^s-1)  (p=1/v marginal)")
    kind = ds.sim_kind.values
    sv, sm = ds.sim_v.values, ds.sim_m.values
    cross = kind == 0
    ax.scatter(sv[cross], sm[cross], c=ds.sim_eps_star.values[cross], cmap="viridis", vmin=0, vmax=1,
               edgecolors="w", s=70, zorder=3, label="BP: curves cross (colour: eps*)")
    ax.scatter(sv[kind == 1], sm[kind == 1], marker="x", color="r", s=60, zorder=3,
               label="BP: deeper worse at all eps")
    ax.scatter(sv[kind == 2], sm[kind == 2], marker="+", color="b", s=80, zorder=3,
               label="BP: deeper better at all eps")
    ax.set(xlabel="v", ylabel="m", xlim=extent[:2], ylim=extent[2:],
           title=f"(a) theory regimes, s={s}: grey lost, blue always, colour eps*")
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[1]
    f_sim = sm / sv.astype(float) ** (s - 1)
    for v in np.unique(sv):
        m_all = ms[ms * v <= v**s]
        fv = m_all / float(v) ** (s - 1)
        ax.plot(fv, ds.eps_star.sel(v=v).values[: m_all.size], "-", lw=1, label=f"theory v={v}")
    ax.plot(ds.f_line, ds.eps_star_large_v, "k--", lw=1, label="theory v -> inf")
    ok = np.isfinite(ds.sim_eps_star.values)
    ax.scatter(f_sim[ok], ds.sim_eps_star.values[ok], color="k", s=25, zorder=3,
               label="BP crossing of L=" + "/".join(str(int(d)) for d in ds.depth.values))
    ax.axvline(1 / s, color="0.5", ls=":", lw=1, label="s f = 1")
    ax.set(xlabel="f = m / v^(s-1)", ylabel="eps*", ylim=(0, 1.02), title="(b) critical noise")
    ax.legend(fontsize=7)
    fig.tight_layout()
    from hiergen._files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script."""
    from hiergen.cli import HelpFormatter
    from hiergen.commands._options import add_scheduler_options

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("hiergen-out/phase_diagram"),
                        help="folder for phase_diagram.png, phase_diagram.nc and the simulation points "
                             "(simulation/: a rerun reuses the finished points)")
    parser.add_argument("--s", type=int, default=2, help="RHM branching factor")
    parser.add_argument("--vmax", type=int, default=32, help="theory grid v = 4..vmax")
    parser.add_argument("--mmax", type=int, default=0,
                        help="theory grid m <= mmax; 0: all m, allowed for s = 2 only")
    parser.add_argument("--sim", nargs="+", default=["8:2,3,4,5,6,7", "16:2,4,6,8,10,12"],
                        help="grammars simulated with exact BP, as v:m1,m2,...")
    parser.add_argument("--depths", nargs=2, type=int, default=[3, 5],
                        help="the two depths whose root curves are compared")
    parser.add_argument("--eps-min", type=float, default=0.05,
                        help="smallest uniform corruption level of the simulations")
    parser.add_argument("--eps-max", type=float, default=0.975,
                        help="largest uniform corruption level of the simulations")
    parser.add_argument("--n-eps", type=int, default=38,
                        help="corruption levels from --eps-min to --eps-max")
    parser.add_argument("--n-samples", type=int, default=200, help="samples per RHM seed")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="RHM seeds")
    parser.add_argument("--tol", type=float, default=0.003,
                        help="least advantage (probability) of the deeper root curve that counts")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_scheduler_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.s != 2 and not args.mmax:
        parser.error("--mmax is required for s > 2")

    ds = run(args)
    from hiergen._files import atomic_write

    nc_path = args.out / "phase_diagram.nc"
    atomic_write(nc_path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    png = plot(ds, args.out / "phase_diagram.png")
    print(f"{'v':>4} {'m':>4} {'f':>6} {'regime':>19} {'eps* theory':>12} {'eps* BP':>8}  BP")
    from hiergen.inference import meanfield as mf

    for k in range(ds.sizes["grammar"]):
        v, m = int(ds.sim_v[k]), int(ds.sim_m[k])
        print(f"{v:>4} {m:>4} {m / v ** (args.s - 1):>6.3f} {mf.regime(v, m, args.s):>19} "
              f"{float(ds.theory_eps_star[k]):>12.4f} {float(ds.sim_eps_star[k]):>8.4f}  "
              f"{SIM_KIND[int(ds.sim_kind[k])]}")
    info = ds.attrs
    print(f"BP points: {info['points_computed']} computed, {info['points_reused']} reused")
    print(f"wrote {png}, {nc_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
