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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("hiergen-out/benchmark_bp"))
    parser.add_argument("--backends", nargs="+", default=["numpy", "torch", "jax"])
    parser.add_argument("--depths", nargs="+", type=int, default=[6, 8, 10])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--engines", nargs="+", default=["kernel", "array", "plain"],
                        help="numpy engines: kernel (numba), array, plain (baseline)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hiergen.bench import bench_bp, format_table, results_json

    results = bench_bp(args.backends, args.depths, batch=args.batch, repeats=args.repeats,
                       device=args.device, engines=args.engines)
    print(format_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_bp.json").write_text(results_json(results))

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
    fig.savefig(args.out / "bench_bp.png", dpi=120)
    print(json.dumps({"figure": str(args.out / "bench_bp.png")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
