"""Forward-backward experiment on the RHM (the paper's Fig. 5): which levels of the hidden
tree change when a datum is noised to time t and resampled from the exact BP posterior.

    python examples/forward_backward_rhm.py                   # ~1.5 min on 2 CPU cores
    python examples/forward_backward_rhm.py --depths 2 4 6 8 10 --times 0:1000:50   # full Fig. 5

Default: RHM v = n_classes = 32, m = 8, s = 2, depths 2, 4, 6, 8, 51 Gaussian-diffusion
times in [0, 250] (the transition is near t = 115), 1000 samples per point. Writes
``forward_backward.nc`` (NetCDF), PNG figures and ``summary.txt`` into ``--out``; every
finished point is kept in ``--out/points``, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script."""
    from hiergen.cli import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("hiergen-out/forward_backward_rhm"),
                        help="output folder (rerunning resumes)")
    parser.add_argument("--v", type=int, default=32, help="RHM vocabulary size per level")
    parser.add_argument("--n-classes", type=int, default=32, help="RHM number of classes")
    parser.add_argument("--m", type=int, default=8, help="RHM rules per symbol")
    parser.add_argument("--s", type=int, default=2, help="RHM branching factor")
    parser.add_argument("--depths", nargs="+", type=int, default=[2, 4, 6, 8],
                        help="tree depths L")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="RHM seeds")
    parser.add_argument("--noise", default="gaussian", choices=["gaussian", "uniform", "masking"],
                        help="gaussian: DDPM diffusion at time t; uniform: corruption eps = t; "
                             "masking: mask probability t")
    parser.add_argument("--times", default="0:250:51",
                        help="noise levels t as start:stop:count (inclusive) or a comma list")
    parser.add_argument("--n-samples", type=int, default=1000, help="samples per point")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "torch", "jax"],
                        help="BP array backend")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from hiergen.commands.forward_backward import parse_times
    from hiergen.experiments.analysis import summarize
    from hiergen.experiments.plots import save_figures
    from hiergen.experiments.sweeps import RESULT_FILE, sweep_forward_backward

    ds = sweep_forward_backward(
        {"v": args.v, "n_classes": args.n_classes, "m": args.m, "s": args.s},
        depths=args.depths,
        seeds=args.seeds,
        times=parse_times(args.times),
        n_samples=args.n_samples,
        noise=args.noise,
        backend=args.backend,
        out=args.out,
        progress=not args.no_progress,
    )
    figures = save_figures(ds, args.out)
    text = summarize(ds, figures, args.out / RESULT_FILE)
    from hiergen._files import atomic_write

    atomic_write(args.out / "summary.txt", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
