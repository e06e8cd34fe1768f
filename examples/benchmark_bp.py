"""Benchmark exact BP: samples/s and peak memory on the headline RHM, per backend.

    python examples/benchmark_bp.py                     # L = 6, 8, 10, batch 1024, all backends
    python examples/benchmark_bp.py --depths 6 --batch 64 --backends numpy

Writes ``bench_bp.json`` and a bar chart ``bench_bp.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script."""
    from hiergen.cli import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("hiergen-out/benchmark_bp"),
                        help="folder for bench_bp.json and bench_bp.png")
    parser.add_argument("--backends", nargs="+", default=["numpy", "torch", "jax"],
                        choices=["numpy", "torch", "jax"], help="BP array backends to time")
    parser.add_argument("--depths", nargs="+", type=int, default=[6, 8, 10],
                        help="tree depths L of the RHM (v = n_classes = 32, m = 8, s = 2)")
    parser.add_argument("--batch", type=int, default=1024, help="data per BP call")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per point (the best is reported), after one warm-up")
    parser.add_argument("--device", default=None,
                        help="device of torch/jax, e.g. cuda (torch) or gpu (jax); default: the "
                             "library's default device")
    parser.add_argument("--engines", nargs="+", default=["kernel", "array", "plain"],
                        choices=["kernel", "array", "plain"],
                        help="numpy engines: kernel (numba), array, plain (baseline)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hiergen._files import atomic_write
    from hiergen.bench import bench_bp, format_table, results_json

    results = bench_bp(args.backends, args.depths, batch=args.batch, repeats=args.repeats,
                       device=args.device, engines=args.engines)
    print(format_table(results))
    atomic_write(args.out / "bench_bp.json", results_json(results))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = list(dict.fromkeys(f"{r.backend}/{r.engine}/{r.task}" for r in results))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        rows = [r for r in results if f"{r.backend}/{r.engine}/{r.task}" == label]
        ax.bar([args.depths.index(r.L) + k * width for r in rows], [r.samples_per_s for r in rows], width,
               label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(args.depths))])
    ax.set_xticklabels([f"L={L}" for L in args.depths])
    ax.set_yscale("log")
    ax.set_ylabel("samples / s (all-level marginals)")
    ax.axhline(2500, color="k", ls="--", lw=0.8, label="target (L=10, 2 cores)")
    ax.legend(fontsize=6)
    ax.set_title(f"exact BP, RHM v=32 m=8 s=2, batch {args.batch}")
    fig.tight_layout()
    atomic_write(args.out / "bench_bp.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(json.dumps({"figure": str(args.out / "bench_bp.png")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
