"""Compare inference backends on a small RHM: one table and a plot of marginal errors.

Runs exact BP, pgmpy, NumPyro enumeration, NumPyro ``infer_discrete`` sampling, Gibbs MCMC
and naive mean-field VI on the same noisy data (uniform corruption ``eps``), and writes

- ``comparison.csv`` / ``comparison.json``: per backend wall time, max |Δ marginal| and
  |Δ log-evidence| against exact BP, class accuracy (against the true classes);
- ``marginal_errors.png``: max |Δ marginal| per tree level, one line per backend.

    python examples/compare_backends.py --out out/compare
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script."""
    from hiergen.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--v", type=int, default=4, help="RHM vocabulary size per level")
    p.add_argument("--m", type=int, default=2, help="RHM rules per symbol")
    p.add_argument("--s", type=int, default=2, help="RHM branching factor")
    p.add_argument("--L", type=int, default=3, help="RHM depth")
    p.add_argument("--n-classes", type=int, default=2, help="RHM number of classes")
    p.add_argument("--n", type=int, default=16, help="noisy data (batch)")
    p.add_argument("--eps", type=float, default=0.5, help="uniform corruption level in [0, 1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the rules, data and noise")
    p.add_argument("--backends", default="bp,pgmpy,numpyro,numpyro-sample,mcmc,meanfield-vi",
                   help="comma list of backend names (see hiergen.inference.registry)")
    p.add_argument("--num-samples", type=int, default=1000, help="draws of the sampling backends")
    p.add_argument("--out", type=Path, default=Path("out/compare_backends"),
                   help="folder for the comparison table and figure")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def plot_errors(df, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = sorted((c for c in df.columns if c.startswith("dmarginal_level_")),
                  key=lambda c: int(c.rsplit("_", 1)[1]))
    levels = [int(c.rsplit("_", 1)[1]) for c in cols]
    fig, ax = plt.subplots(figsize=(6, 4))
    floor = 1e-17
    for row in df.itertuples():
        if row.error:
            continue
        vals = np.array([getattr(row, c) for c in cols], dtype=float)
        ax.semilogy(levels, np.maximum(vals, floor), "o-", label=f"{row.backend} ({row.kind})")
    ax.set_xlabel("tree level l (0 = class)")
    ax.set_ylabel("max |Δ marginal| vs exact BP")
    ax.set_xticks(levels)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    from hiergen._files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    from hiergen.inference.compare import compare_backends, format_comparison, save_comparison
    from hiergen.models.noise import UniformCorruption
    from hiergen.models.rhm import RHM

    args = parse_args(argv)
    rhm = RHM(v=args.v, n_classes=args.n_classes, m=args.m, s=args.s, L=args.L, seed=args.seed)
    data = rhm.sample(args.n, seed=args.seed + 1)
    ev = UniformCorruption(args.v).evidence(data.leaves, args.eps, seed=args.seed + 2)
    backends = [b for b in args.backends.split(",") if b]
    opts = {"numpyro-sample": {"num_samples": args.num_samples, "seed": args.seed},
            "mcmc": {"num_samples": args.num_samples, "seed": args.seed}}
    df = compare_backends(rhm, ev, backends, truth=data.labels, options=opts)
    title = (f"RHM v={args.v} m={args.m} s={args.s} L={args.L} classes={args.n_classes}, "
             f"n={args.n}, eps={args.eps}")
    print(title)
    print(format_comparison(df))
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    paths = save_comparison(df, args.out, meta=meta)
    plot_errors(df, args.out / "marginal_errors.png", title)
    print(f"wrote {paths['csv']}, {paths['json']} and {args.out / 'marginal_errors.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
