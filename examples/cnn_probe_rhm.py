"""CNN probe of forward-backward resampling on the RHM (the paper's Fig. 7b).

    python examples/cnn_probe_rhm.py                 # CPU default, ~2-3 min on 2 cores
    python examples/cnn_probe_rhm.py --gpu-preset --device cuda

Trains a CNN matching the tree (L convolutions, filter size = stride = s, ReLU, linear
readout) on RHM data until it interpolates (CPU default: RHM v = n_classes = 16, m = 4,
s = 2, L = 4, 48,000 training data, width 256), saves it (``cnn/model.safetensors`` +
``cnn/config.json``), then for each noise level t resamples held-out data from the exact BP
posterior and records the cosine similarity of every layer's (whitened) post-activations
between x0 and x0_hat, the logits' similarity and the class-change rate. Writes
``cnn_probe.nc`` and ``cnn_probe.png`` into ``--out``. A saved checkpoint is reused.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script (defaults: the CPU preset)."""
    from hiergen.cli import HelpFormatter
    from hiergen.experiments.cnn_probe import CPU_DEFAULT, GPU_PRESET

    d = CPU_DEFAULT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("hiergen-out/cnn_probe_rhm"),
                        help="folder for cnn/, cnn_probe.nc and cnn_probe.png")
    parser.add_argument("--gpu-preset", action="store_true",
                        help=f"larger sizes for a GPU, overriding the size options: {GPU_PRESET}")
    parser.add_argument("--v", type=int, default=d["rhm"]["v"], help="RHM vocabulary size per level")
    parser.add_argument("--n-classes", type=int, default=d["rhm"]["n_classes"],
                        help="RHM number of classes")
    parser.add_argument("--m", type=int, default=d["rhm"]["m"], help="RHM rules per symbol")
    parser.add_argument("--s", type=int, default=d["rhm"]["s"], help="RHM branching factor")
    parser.add_argument("--L", type=int, default=d["rhm"]["L"], help="RHM depth")
    parser.add_argument("--n-train", type=int, default=d["n_train"], help="CNN training data")
    parser.add_argument("--n-test", type=int, default=d["n_test"],
                        help="CNN test data (those not in the training set are used)")
    parser.add_argument("--width", type=int, default=d["width"], help="CNN channels per layer")
    parser.add_argument("--epochs", type=int, default=d["epochs"],
                        help="most CNN training epochs (stops when it interpolates)")
    parser.add_argument("--noise", default="gaussian", choices=["gaussian", "uniform", "masking"],
                        help="gaussian: DDPM diffusion at time t; uniform: corruption eps = t; "
                             "masking: mask probability t")
    parser.add_argument("--times", default=None,
                        help="noise levels t as start:stop:count or a comma list (default: "
                             "0:400:41 for gaussian, 0:1:41 otherwise)")
    parser.add_argument("--n-samples", type=int, default=1000, help="probe samples per time")
    parser.add_argument("--seed", type=int, default=0, help="seed of the RHM, the data and the CNN")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from hiergen.experiments.cnn_probe import CPU_DEFAULT, GPU_PRESET

    d = CPU_DEFAULT
    args = build_parser().parse_args(argv)
    if args.gpu_preset:
        g = GPU_PRESET
        args.v, args.n_classes, args.m, args.s, args.L = (
            g["rhm"][k] for k in ("v", "n_classes", "m", "s", "L"))
        args.n_train, args.n_test, args.width, args.epochs = (
            g["n_train"], g["n_test"], g["width"], g["epochs"])

    from hiergen import RHM
    from hiergen.commands.forward_backward import parse_times
    from hiergen.experiments.cnn_probe import (
        cnn_probe,
        load_checkpoint,
        plot_probe,
        save_checkpoint,
        train_cnn,
    )

    times = parse_times(args.times or ("0:400:41" if args.noise == "gaussian" else "0:1:41"))
    grammar = RHM(v=args.v, n_classes=args.n_classes, m=args.m, s=args.s, L=args.L, seed=args.seed)
    ckpt = args.out / "cnn"
    wanted = {"n_train": args.n_train, "width": args.width, "seed": args.seed,
              "grammar": grammar.params}
    info = None
    if (ckpt / "config.json").exists():
        model, info = load_checkpoint(ckpt, device=args.device)
        if any(info.get(k) != v for k, v in wanted.items()):
            info = None  # a checkpoint of other settings: train anew
    if info is None:
        model, info = train_cnn(
            grammar, n_train=args.n_train, n_test=args.n_test, width=args.width,
            epochs=args.epochs, batch_size=GPU_PRESET["batch_size"] if args.gpu_preset else d["batch_size"],
            seed=args.seed, device=args.device, progress=not args.no_progress,
        )
        save_checkpoint(model, ckpt, info)
    print(f"CNN on {grammar!r}: train accuracy {info['train_acc']:.4f}, test accuracy "
          f"{info['test_acc']:.4f} on {info['n_test_unseen']} unseen data "
          f"({info['epochs']} epochs, {info['seconds']:.0f} s)")
    ds = cnn_probe(model, grammar, times, n_samples=args.n_samples, noise=args.noise,
                   seed=args.seed + 1, device=args.device, progress=not args.no_progress)
    ds.attrs["cnn_info"] = json.dumps(info)
    from hiergen._files import atomic_write

    atomic_write(args.out / "cnn_probe.nc", lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    fig = plot_probe(ds)
    atomic_write(args.out / "cnn_probe.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(f"figure: {args.out / 'cnn_probe.png'}\ndata: {args.out / 'cnn_probe.nc'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
