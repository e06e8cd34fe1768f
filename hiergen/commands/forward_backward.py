"""``hiergen forward-backward``: custom forward–backward sweeps on RHMs (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiergen.commands._options import add_rhm_options, add_scheduler_options

#: the array backends of belief propagation (see hiergen.inference.backends.BACKENDS)
BP_BACKENDS = ("numpy", "torch", "jax")


def _int_list(text: str, name: str) -> list[int]:
    from hiergen.models.errors import ConfigError

    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"{name} must be a comma list of integers, got {text!r}") from exc
    if not vals:
        raise ConfigError(f"{name} is empty")
    return vals


def parse_times(text: str) -> list[float]:
    """``"0:250:51"`` (start:stop:count, inclusive) or a comma list ``"0,50,100"``."""
    import numpy as np

    from hiergen.models.errors import ConfigError

    try:
        if ":" in text:
            a, b, n = text.split(":")
            return np.linspace(float(a), float(b), int(n)).tolist()
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(
            f"--times must be start:stop:count or a comma list of numbers, got {text!r}"
        ) from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forward-backward",
        help="forward-backward sweep on RHMs over depths, seeds and noise levels",
        description=(
            "Noise RHM data to each level t, resample from the exact BP posterior, and record per "
            "tree level the probability of the correct value and of a change. Every finished "
            "point is saved at once in OUT/points: rerun the same command to resume."
        ),
    )
    p.add_argument("--out", type=Path, required=True,
                   help="output folder; rerunning with the same folder resumes")
    add_rhm_options(p, v=32, n_classes=32, m=8, s=2)
    p.add_argument("--depths", default="2,4,6,8,10", help="comma list of tree depths L")
    p.add_argument("--seeds", default="0", help="comma list of RHM seeds")
    p.add_argument("--noise", default="gaussian", choices=["gaussian", "uniform", "masking"],
                   help="gaussian: DDPM diffusion at time t; uniform: corruption eps = t; "
                        "masking: mask probability t")
    p.add_argument(
        "--times", default=None,
        help="noise levels t as start:stop:count (inclusive) or a comma list; default "
             "0:1000:50 for gaussian (DDPM steps, T = 1000), 0:1:50 for uniform and masking",
    )
    p.add_argument("--n-samples", type=int, default=1000, help="samples per (depth, seed, time) point")
    p.add_argument("--backend", default="numpy", choices=BP_BACKENDS, help="BP array backend")
    p.add_argument("--device", default=None,
                   help="device of torch/jax, e.g. cuda, cuda:1 (torch) or gpu (jax); "
                        "default: the library's default device")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="floating-point type of the BP messages (float32: marginals within ~2e-5 "
                        "of float64, about twice as fast)")
    add_scheduler_options(p)
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG figures")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (on stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hiergen.experiments.analysis import summarize
    from hiergen.experiments.sweeps import (
        RESULT_FILE,
        default_times,
        sweep_forward_backward,
    )

    times = parse_times(args.times) if args.times else default_times(args.noise, n=50).tolist()
    ds = sweep_forward_backward(
        {"v": args.v, "n_classes": args.n_classes, "m": args.m, "s": args.s},
        depths=_int_list(args.depths, "--depths"),
        seeds=_int_list(args.seeds, "--seeds"),
        times=times,
        n_samples=args.n_samples,
        noise=args.noise,
        backend=args.backend,
        out=args.out,
        dtype=args.dtype,
        device=args.device,
        progress=not args.no_progress,
        scheduler=args.scheduler,
        n_workers=args.workers,
    )
    figures = None
    if not args.no_plots:
        from hiergen.experiments.plots import save_figures

        figures = save_figures(ds, args.out / "figures")
    print(summarize(ds, figures, args.out / RESULT_FILE))
    print(
        f"  points computed: {ds.attrs['points_computed']} "
        f"({ds.attrs['seconds_computed']:.1f} s), reused: {ds.attrs['points_reused']}"
    )
    return 0
