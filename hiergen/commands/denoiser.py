"""``hiergen denoiser``: train diffusion denoisers on RHM data and compare them with exact BP."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    from hiergen.experiments.denoisers import CPU_DEFAULT

    d = CPU_DEFAULT
    p = sub.add_parser(
        "denoiser",
        help="train learned diffusion denoisers on RHM data and compare them with exact BP",
        description="Learned denoisers against the exact Bayes-optimal denoiser (belief propagation).",
    )
    cmds = p.add_subparsers(dest="denoiser_command", metavar="ACTION")
    t = cmds.add_parser(
        "train", help="train one denoiser on P clean RHM data (resumable)",
        description="Train a denoiser (tree U-Net or transformer) with Gaussian or masking diffusion "
                    "on a fixed set of P clean RHM data, fresh noise every step. Checkpoints go to "
                    "OUT/denoiser.safetensors every --checkpoint-every steps; rerun to resume.",
    )
    t.add_argument("--out", type=Path, required=True, help="checkpoint folder; rerunning resumes")
    t.add_argument("--v", type=int, default=d["rhm"]["v"], help="RHM vocabulary size per level")
    t.add_argument("--n-classes", type=int, default=d["rhm"]["n_classes"], help="RHM number of classes")
    t.add_argument("--m", type=int, default=d["rhm"]["m"], help="RHM rules per symbol")
    t.add_argument("--s", type=int, default=d["rhm"]["s"], help="RHM branching factor")
    t.add_argument("--L", type=int, default=d["rhm"]["L"], help="RHM depth")
    t.add_argument("--rhm-seed", type=int, default=0, help="seed of the RHM rules")
    t.add_argument("--P", type=int, required=True, help="training-set size (clean data)")
    t.add_argument("--arch", default="cnn", choices=["cnn", "transformer"],
                   help="cnn: tree-matched U-Net; transformer: TransformerEncoder over the leaves")
    t.add_argument("--diffusion", default="gaussian", choices=["gaussian", "masking"],
                   help="gaussian: DDPM on one-hot leaves; masking: absorbing-state discrete diffusion")
    t.add_argument("--width", type=int, default=d["width"], help="channels / model dimension")
    t.add_argument("--layers", type=int, default=d["layers"], help="transformer layers")
    t.add_argument("--steps", type=int, default=d["steps"], help="optimiser steps in total")
    t.add_argument("--batch-size", type=int, default=d["batch_size"], help="minibatch size")
    t.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of the training set, initialisation, batches and noise")
    t.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    t.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    t.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (small models train fastest on one); a resumed run "
                        "matches an uninterrupted one with the same thread count")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar (on stderr)")
    t.set_defaults(func=run_train)

    c = cmds.add_parser(
        "compare", help="compare trained denoisers with exact BP at every noise level",
        description="KL(BP || model) of the leaf posteriors, per-level accuracy, one-shot "
                    "forward-backward class-change curves, change correlations and transition "
                    "times vs P, on held-out data. Writes OUT/denoiser_compare.nc and .png.",
    )
    c.add_argument("--checkpoints", type=Path, nargs="+", required=True,
                   help="checkpoint folders of 'hiergen denoiser train' (same RHM and diffusion)")
    c.add_argument("--out", type=Path, required=True, help="folder for denoiser_compare.nc and .png")
    c.add_argument("--times", default=None,
                   help="noise levels as start:stop:count or a comma list (default: 0:600:25 for "
                        "gaussian, 0:1:21 for masking)")
    c.add_argument("--n-samples", type=int, default=1000, help="held-out samples per noise level")
    c.add_argument("--seed", type=int, default=12345,
                   help="seed of the held-out data, noise and samples (keep it apart from training)")
    c.add_argument("--device", default="cpu", help="torch device of the models")
    c.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    c.add_argument("--no-plots", action="store_true", help="do not write the PNG figure")
    c.add_argument("--no-progress", action="store_true", help="hide the progress bar (on stderr)")
    c.set_defaults(func=run_compare)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args: argparse.Namespace) -> int:
    from hiergen.experiments.denoisers import train_denoiser
    from hiergen.models.rhm import RHM

    grammar = RHM(v=args.v, n_classes=args.n_classes, m=args.m, s=args.s, L=args.L, seed=args.rhm_seed)
    _, meta = train_denoiser(
        grammar, args.P, arch=args.arch, diffusion=args.diffusion, width=args.width, layers=args.layers,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, out=args.out,
        checkpoint_every=args.checkpoint_every, device=args.device, threads=args.threads, progress=not args.no_progress,
    )
    losses = meta["losses"]
    print(f"{args.arch} denoiser ({args.diffusion}) on {grammar!r}, P = {args.P}: {meta['step']} steps "
          f"(resumed from {meta['info'].get('resumed_from', 0)}), final training loss "
          f"{losses[-1] if losses else float('nan'):.4g}\ncheckpoint: {args.out}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    import torch

    from hiergen._files import atomic_write
    from hiergen.commands.forward_backward import parse_times
    from hiergen.experiments.denoiser_compare import compare_denoisers, plot_comparison
    from hiergen.experiments.denoisers import load_denoiser
    from hiergen.experiments.store import write_netcdf
    from hiergen.models.errors import ConfigError
    from hiergen.models.rhm import RHM

    torch.set_num_threads(max(1, int(args.threads)))
    models, P, grammars = {}, {}, set()
    for folder in args.checkpoints:
        model, meta = load_denoiser(folder, device=args.device)
        st = meta["settings"]
        name = f"{st['model']['arch']}_P{st['P']}_seed{st['seed']}"
        if name in models:
            name = f"{name}_{len(models)}"
        models[name], P[name] = model, int(st["P"])
        grammars.add(tuple(sorted(st["grammar"].items())) if isinstance(st["grammar"], dict) else st["grammar"])
    if len(grammars) != 1 or not isinstance(next(iter(grammars)), tuple):
        raise ConfigError(f"the checkpoints must all be trained on one RHM, got {sorted(map(str, grammars))}")
    grammar = RHM(**dict(next(iter(grammars))))
    diffusion = next(iter(models.values())).config["diffusion"]
    default = "0:600:25" if diffusion == "gaussian" else "0:1:21"
    times = parse_times(args.times or default)
    ds = compare_denoisers(models, grammar, times, n_samples=args.n_samples, seed=args.seed, P=P,
                           progress=not args.no_progress)
    path = write_netcdf(args.out / "denoiser_compare.nc", ds)
    print(format_summary(ds))
    print(f"data: {path}")
    if not args.no_plots:
        fig = plot_comparison(ds)
        png = atomic_write(args.out / "denoiser_compare.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        print(f"figure: {png}")
    return 0


def format_summary(ds: Any) -> str:
    """A few lines per model: mean KL to BP, transition time and width, vs BP's."""
    lines = [f"denoisers vs exact BP ({ds.attrs['diffusion']} diffusion, {ds.attrs['n_samples']} "
             f"held-out samples, one-shot sampling):",
             f"  BP exact: class transition t* = {ds.attrs['t_star_bp']:.4g}, width "
             f"{ds.attrs['width_bp']:.4g}; BP one-shot t* = {ds.attrs['t_star_bp_oneshot']:.4g}"]
    for name in ds["model"].values:
        row = ds.sel(model=name)
        lines.append(f"  {name}: mean KL(BP||model) {float(row['kl'].mean()):.4g} nats/leaf, "
                     f"t* = {float(row['t_star_model']):.4g}, width {float(row['width_model']):.4g}")
    return "\n".join(lines)
