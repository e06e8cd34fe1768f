"""CNN probe of forward-backward resampling on the RHM (the paper's Fig. 7b).

    python examples/cnn_probe_rhm.py                 # CPU default, ~40 s on 2 cores
    python examples/cnn_probe_rhm.py --gpu-preset --device cuda

Trains a CNN matching the tree (L convolutions, filter size = stride = s, ReLU, linear
readout) on RHM data until it interpolates (CPU default: RHM v = n_classes = 16, m = 4,
s = 2, L = 4, 48,000 training data, width 256), saves it (``cnn/model.safetensors`` +
``cnn/config.json``), then for each noise level t resamples held-out data from the exact BP
posterior and records the cosine similarity of every layer's (whitened) post-activations
between x0 and x0_hat, the logits' similarity and the class-change rate. Writes
``cnn_probe.nc`` and ``cnn_probe.png`` into ``--out``. A saved checkpoint is reused.

A grid: several ``--seeds`` and/or ``--n-train`` values train and probe one CNN per (seed,
training-set size) point (:func:`hiergen.experiments.cnn_probe_grid.cnn_probe_grid`)::

    python examples/cnn_probe_rhm.py --seeds 0 1 2 --n-train 4000 12000 48000 --scheduler local

The points and their CNNs are saved under ``OUT/grid`` as they finish (a rerun or a larger
grid reuses them; a point killed after training reuses its CNN); writes
``cnn_probe_grid.nc`` and ``cnn_probe_grid.png`` (class-change rate and last-layer similarity
vs noise level, one line per training-set size, mean over seeds; test accuracy vs size).
``--scheduler local`` (or a cluster's address) runs the points as Dask tasks, with the same
numbers: torch runs each point with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script (defaults: the CPU preset)."""
    from hiergen.cli import HelpFormatter
    from hiergen.commands._options import add_scheduler_options
    from hiergen.experiments.cnn_probe import CPU_DEFAULT, GPU_PRESET

    d = CPU_DEFAULT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("hiergen-out/cnn_probe_rhm"),
                        help="folder for cnn/, cnn_probe.nc and cnn_probe.png (one point) or "
                             "grid/, cnn_probe_grid.nc and cnn_probe_grid.png (a grid)")
    parser.add_argument("--gpu-preset", action="store_true",
                        help=f"larger sizes for a GPU, overriding the size options (all but --n-train): "
                             f"{GPU_PRESET}")
    parser.add_argument("--v", type=int, default=d["rhm"]["v"], help="RHM vocabulary size per level")
    parser.add_argument("--n-classes", type=int, default=d["rhm"]["n_classes"],
                        help="RHM number of classes")
    parser.add_argument("--m", type=int, default=d["rhm"]["m"], help="RHM rules per symbol")
    parser.add_argument("--s", type=int, default=d["rhm"]["s"], help="RHM branching factor")
    parser.add_argument("--L", type=int, default=d["rhm"]["L"], help="RHM depth")
    parser.add_argument("--n-train", type=int, nargs="+", default=None,
                        help=f"CNN training-set sizes P, one point per size (default: "
                             f"{d['n_train']}, {GPU_PRESET['n_train']} with --gpu-preset)")
    parser.add_argument("--n-test", type=int, default=d["n_test"],
                        help="CNN test data (those not in the training set are used)")
    parser.add_argument("--width", type=int, default=d["width"], help="CNN channels per layer")
    parser.add_argument("--epochs", type=int, default=d["epochs"],
                        help="most CNN training epochs (stops when it interpolates)")
    parser.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate")
    parser.add_argument("--noise", default="gaussian", choices=["gaussian", "uniform", "masking"],
                        help="gaussian: DDPM diffusion at time t; uniform: corruption eps = t; "
                             "masking: mask probability t")
    parser.add_argument("--times", default=None,
                        help="noise levels t as start:stop:count or a comma list (default: "
                             "0:400:41 for gaussian, 0:1:41 otherwise)")
    parser.add_argument("--n-samples", type=int, default=1000, help="probe samples per time")
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0],
                        help="seeds of the RHM, the data and the CNN, one point per seed (the "
                             "probe uses seed + 1)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per point, for training and probe (part of the "
                             "settings: CPU numbers can depend on it)")
    add_scheduler_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _apply_preset(args: argparse.Namespace) -> None:
    """Fill in the sizes of ``--gpu-preset`` (or the CPU default's training-set size)."""
    from hiergen.experiments.cnn_probe import CPU_DEFAULT, GPU_PRESET

    args.batch_size = CPU_DEFAULT["batch_size"]
    if args.gpu_preset:
        g = GPU_PRESET
        args.v, args.n_classes, args.m, args.s, args.L = (
            g["rhm"][k] for k in ("v", "n_classes", "m", "s", "L"))
        args.n_test, args.width, args.epochs, args.batch_size = (
            g["n_test"], g["width"], g["epochs"], g["batch_size"])
    if args.n_train is None:
        args.n_train = [(GPU_PRESET if args.gpu_preset else CPU_DEFAULT)["n_train"]]


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"n_test": args.n_test, "width": args.width, "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "n_samples": args.n_samples, "noise": args.noise,
            "device": args.device, "threads": args.threads}


def run_one(args: argparse.Namespace, rhm: dict[str, int], times: Any) -> None:
    """One point (today's files): ``OUT/cnn/``, ``cnn_probe.nc``, ``cnn_probe.png``."""
    from hiergen import RHM
    from hiergen._files import atomic_write
    from hiergen.experiments.cnn_probe import plot_probe
    from hiergen.experiments.cnn_probe_grid import cnn_probe_point, point_params

    seed = args.seeds[0]
    params = point_params(rhm, seed, args.n_train[0], times, **_settings(args))
    if args.scheduler is not None:
        print("one point: computed in this process (--scheduler is for grids)")
    ds = cnn_probe_point(params, args.out / "cnn", progress=not args.no_progress)
    fresh = "" if ds.attrs["cnn_from_checkpoint"] else f", {float(ds.train_seconds):.0f} s"
    print(f"CNN on {RHM(**rhm, seed=seed)!r}: train accuracy {float(ds.train_acc):.4f}, test "
          f"accuracy {float(ds.test_acc):.4f} on {int(ds.n_test_unseen)} unseen data "
          f"({int(ds.epochs_run)} epochs{fresh}"
          f"{', saved checkpoint reused' if ds.attrs['cnn_from_checkpoint'] else ''})")
    atomic_write(args.out / "cnn_probe.nc", lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    fig = plot_probe(ds)
    atomic_write(args.out / "cnn_probe.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(f"figure: {args.out / 'cnn_probe.png'}\ndata: {args.out / 'cnn_probe.nc'}")


def run_many(args: argparse.Namespace, rhm: dict[str, int], times: Any) -> None:
    """A grid of points: ``OUT/grid/`` (the point store), ``cnn_probe_grid.nc`` / ``.png``."""
    from hiergen._files import atomic_write
    from hiergen.experiments.cnn_probe_grid import cnn_probe_grid, plot_grid

    ds = cnn_probe_grid(rhm, args.seeds, args.n_train, times, **_settings(args),
                        out=args.out / "grid", scheduler=args.scheduler, n_workers=args.workers,
                        progress=not args.no_progress)
    print(f"CNN probe grid on RHM {rhm}: {ds.sizes['seed']} seeds x {ds.sizes['n_train']} "
          "training-set sizes")
    t_mid = float(ds["time"].values[len(ds["time"]) // 2])
    print(f"{'n_train':>9} {'seed':>5} {'train acc':>9} {'test acc':>9} {'epochs':>6} "
          f"{'class change at t=' + format(t_mid, 'g'):>24}")
    for p in ds["n_train"].values:
        for s in ds["seed"].values:
            pt = ds.sel(n_train=p, seed=s)
            print(f"{p:>9} {s:>5} {float(pt.train_acc):>9.4f} {float(pt.test_acc):>9.4f} "
                  f"{int(pt.epochs_run):>6} {float(pt.class_change.sel(time=t_mid)):>24.3f}")
    a = ds.attrs
    print(f"points: {a['points_computed']} computed ({a['seconds_computed']:.0f} s), "
          f"{a['points_reused']} reused; {a['cnn_checkpoints_reused']} CNN checkpoints reused")
    atomic_write(args.out / "cnn_probe_grid.nc", lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    fig = plot_grid(ds)
    atomic_write(args.out / "cnn_probe_grid.png",
                 lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(f"figure: {args.out / 'cnn_probe_grid.png'}\ndata: {args.out / 'cnn_probe_grid.nc'}")


def main(argv: Sequence[str] | None = None) -> int:
    from hiergen.commands.forward_backward import parse_times

    args = build_parser().parse_args(argv)
    _apply_preset(args)
    times = parse_times(args.times or ("0:400:41" if args.noise == "gaussian" else "0:1:41"))
    rhm = {"v": args.v, "n_classes": args.n_classes, "m": args.m, "s": args.s, "L": args.L}
    if len(args.seeds) * len(args.n_train) == 1:
        run_one(args, rhm, times)
    else:
        run_many(args, rhm, times)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
