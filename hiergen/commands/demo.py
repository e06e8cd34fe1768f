"""``hiergen demo``: the forward–backward phase transition on a built-in RHM, on CPU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hiergen.commands.forward_backward import BP_BACKENDS

#: the default run: the paper's RHM (v = n_classes = 32, m = 8, s = 2) at five depths,
#: 51 Gaussian-diffusion times around the transition, 1000 samples per point
DEFAULT = {
    "rhm": {"v": 32, "n_classes": 32, "m": 8, "s": 2},
    "depths": [2, 4, 6, 8, 10],
    "t_max": 250.0,
    "n_times": 51,
    "n_samples": 1000,
}
#: --quick: a smaller RHM, two depths, 11 times, 200 samples (a few seconds)
QUICK = {
    "rhm": {"v": 16, "n_classes": 16, "m": 4, "s": 2},
    "depths": [2, 4],
    "t_max": 400.0,
    "n_times": 11,
    "n_samples": 200,
}


def register(sub: argparse._SubParsersAction) -> None:
    from hiergen.commands._options import add_scheduler_options

    p = sub.add_parser(
        "demo",
        help="forward-backward diffusion on the RHM: see the class phase transition (CPU, about 80 s on 2 cores)",
        description=(
            "Noise RHM data with Gaussian diffusion to time t, resample them from the exact "
            "posterior with belief propagation, and measure which levels of the hidden tree "
            "changed. Default: RHM v=32, 32 classes, m=8, s=2, depths 2,4,6,8,10, 51 times in "
            "[0, 250], 1000 samples per point (about 80 s on 2 CPU cores). --quick: RHM "
            "v=16, m=4, depths 2,4, 11 times, 200 samples (seconds). Writes PNG figures and "
            "NetCDF data to --out and prints a summary. Rerunning resumes an interrupted run."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("hiergen-out/demo"),
                   help="output folder (default: %(default)s); the results go to OUT/default, "
                        "or OUT/quick with --quick")
    p.add_argument("--quick", action="store_true", help="a tiny run for a smoke test (seconds)")
    p.add_argument("--seed", type=int, default=0, help="seed of the RHM rules and of the samples")
    p.add_argument("--backend", default="numpy", choices=BP_BACKENDS, help="BP array backend")
    add_scheduler_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (on stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from hiergen.experiments.analysis import summarize
    from hiergen.experiments.plots import save_figures
    from hiergen.experiments.sweeps import sweep_forward_backward

    cfg = QUICK if args.quick else DEFAULT
    out = Path(args.out) / ("quick" if args.quick else "default")
    t0 = time.perf_counter()
    ds = sweep_forward_backward(
        cfg["rhm"],
        depths=cfg["depths"],
        seeds=[args.seed],
        times=np.linspace(0.0, cfg["t_max"], cfg["n_times"]),
        n_samples=cfg["n_samples"],
        noise="gaussian",
        backend=args.backend,
        out=out,
        progress=not args.no_progress,
        scheduler=args.scheduler,
        n_workers=args.workers,
    )
    figures = save_figures(ds, out / "figures")
    elapsed = time.perf_counter() - t0
    print(summarize(ds, figures, out / "forward_backward.nc"))
    reused = ds.attrs.get("points_reused", 0)
    note = f" ({reused} points reused from an earlier run)" if reused else ""
    print(f"  done in {elapsed:.1f} s{note}")
    return 0
