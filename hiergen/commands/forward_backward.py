"""``hiergen forward-backward``: custom forward–backward sweeps on RHMs (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path


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


def add_scheduler_options(p: argparse.ArgumentParser) -> None:
    """``--scheduler`` and ``--workers`` (points as Dask tasks; see docs/scale_out.md)."""
    p.add_argument(
        "--scheduler", default=None,
        help="run the points as Dask tasks: 'local' (a cluster of worker processes on this "
             "machine), a scheduler address tcp://host:8786, or a scheduler file *.json "
             "(default: serial, in this process)",
    )
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of --scheduler local (default: one per core)")


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
    p.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    p.add_argument("--v", type=int, default=32)
    p.add_argument("--n-classes", type=int, default=32)
    p.add_argument("--m", type=int, default=8)
    p.add_argument("--s", type=int, default=2)
    p.add_argument("--depths", default="2,4,6,8,10", help="comma list of L (default 2,4,6,8,10)")
    p.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    p.add_argument("--noise", default="gaussian", choices=["gaussian", "uniform", "masking"])
    p.add_argument(
        "--times", default=None,
        help="start:stop:count or comma list (default 0:1000:50 for gaussian, 0:1:50 otherwise)",
    )
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--backend", default="numpy", help="numpy, torch or jax")
    p.add_argument("--device", default=None, help="e.g. cuda (torch) or gpu (jax)")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"])
    add_scheduler_options(p)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
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
