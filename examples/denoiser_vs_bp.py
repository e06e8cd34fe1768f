"""Learned diffusion denoisers against the exact Bayes-optimal denoiser (belief propagation).

    python examples/denoiser_vs_bp.py                    # CPU default, a few minutes on 2 cores
    python examples/denoiser_vs_bp.py --arch transformer --diffusion masking

Trains one denoiser per training-set size P (default 16, 128, 1024 clean data of an RHM with
v = n_classes = 8, m = 2, s = 2, L = 3), each predicting the leaves' posterior p(x0_i | x_t)
with a cross-entropy loss, then compares them with exact BP on held-out data at every noise
level: KL(BP || model) of the leaf posteriors, the one-shot forward-backward class-change
curve against BP's, the susceptibility of leaf changes, and the class transition time and
width as a function of P. Writes ``denoiser_vs_bp.nc`` and ``denoiser_vs_bp.png`` into
``--out``; the checkpoints (``P<P>/``) are reused (and resumed) on a rerun.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script (defaults: the CPU preset)."""
    from hiergen.cli import HelpFormatter
    from hiergen.experiments.denoisers import CPU_DEFAULT

    d = CPU_DEFAULT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("hiergen-out/denoiser_vs_bp"),
                        help="folder for the checkpoints, denoiser_vs_bp.nc and denoiser_vs_bp.png")
    parser.add_argument("--v", type=int, default=d["rhm"]["v"], help="RHM vocabulary size per level")
    parser.add_argument("--n-classes", type=int, default=d["rhm"]["n_classes"], help="RHM number of classes")
    parser.add_argument("--m", type=int, default=d["rhm"]["m"], help="RHM rules per symbol")
    parser.add_argument("--s", type=int, default=d["rhm"]["s"], help="RHM branching factor")
    parser.add_argument("--L", type=int, default=d["rhm"]["L"], help="RHM depth")
    parser.add_argument("--P", default="16,128,1024", help="comma list of training-set sizes")
    parser.add_argument("--arch", default="cnn", choices=["cnn", "transformer"],
                        help="cnn: tree-matched U-Net; transformer: TransformerEncoder")
    parser.add_argument("--diffusion", default="gaussian", choices=["gaussian", "masking"],
                        help="gaussian: DDPM on one-hot leaves; masking: absorbing-state diffusion")
    parser.add_argument("--width", type=int, default=d["width"], help="channels / model dimension")
    parser.add_argument("--steps", type=int, default=d["steps"], help="optimiser steps per model")
    parser.add_argument("--times", default=None,
                        help="noise levels as start:stop:count or a comma list (default: 0:600:25 "
                             "for gaussian, 0:1:21 for masking)")
    parser.add_argument("--n-samples", type=int, default=1000, help="held-out samples per noise level")
    parser.add_argument("--seed", type=int, default=0, help="seed of the RHM and the training")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (these small models run fastest on one)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hiergen import RHM
    from hiergen._files import atomic_write
    from hiergen.commands.denoiser import format_summary
    from hiergen.commands.forward_backward import _int_list, parse_times
    from hiergen.experiments.denoiser_compare import compare_denoisers, plot_comparison
    from hiergen.experiments.denoisers import train_denoiser
    from hiergen.experiments.store import write_netcdf

    grammar = RHM(v=args.v, n_classes=args.n_classes, m=args.m, s=args.s, L=args.L, seed=args.seed)
    sizes = _int_list(args.P, "--P")
    models = {}
    for P in sizes:
        models[f"P{P}"], _ = train_denoiser(
            grammar, P, arch=args.arch, diffusion=args.diffusion, width=args.width, steps=args.steps,
            seed=args.seed, out=args.out / f"P{P}", threads=args.threads, progress=not args.no_progress,
        )
    default = "0:600:25" if args.diffusion == "gaussian" else "0:1:21"
    times = parse_times(args.times or default)
    ds = compare_denoisers(models, grammar, times, n_samples=args.n_samples, seed=args.seed + 12345,
                           P={f"P{P}": P for P in sizes}, progress=not args.no_progress)
    ds.attrs["arch"] = args.arch
    data = write_netcdf(args.out / "denoiser_vs_bp.nc", ds)
    fig = plot_comparison(ds)
    png = atomic_write(args.out / "denoiser_vs_bp.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    print(format_summary(ds))
    print(f"figure: {png}\ndata: {data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
