"""``hiergen compare``: run inference backends side by side on an RHM with uniform corruption."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiergen.commands._options import add_rhm_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare inference backends (BP, pgmpy, NumPyro, MCMC, VI)")
    add_rhm_options(p, v=4, n_classes=2, m=2, s=2, L=3)
    p.add_argument("--n", type=int, default=8, help="number of noisy data (batch)")
    p.add_argument("--eps", type=float, default=0.5, help="uniform corruption level")
    p.add_argument("--seed", type=int, default=0, help="seed of the rules, data and noise")
    p.add_argument("--backends", default="bp,pgmpy,numpyro,mcmc,meanfield-vi",
                   help="comma list of backend names (see hiergen.inference.registry)")
    p.add_argument("--num-samples", type=int, default=500, help="draws for the sampling backends")
    p.add_argument("--out", type=Path, default=None, help="folder for comparison.csv and comparison.json; default: print only")
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from hiergen.inference.compare import compare_backends, format_comparison, save_comparison
    from hiergen.inference.registry import available_backends
    from hiergen.models.errors import BackendError, ConfigError
    from hiergen.models.noise import UniformCorruption
    from hiergen.models.rhm import RHM

    if args.out is not None:  # a bad output folder fails before the comparison runs
        from hiergen._files import ensure_dir

        ensure_dir(args.out)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in available_backends()]
    if unknown:
        raise BackendError(f"unknown backend(s) {unknown}; available: {', '.join(available_backends())}")
    if not 0.0 <= args.eps <= 1.0:
        raise ConfigError(f"--eps must be in [0, 1], got {args.eps}")
    if args.n < 1 or args.num_samples < 1:
        raise ConfigError("--n and --num-samples must be >= 1")
    rhm = RHM(v=args.v, n_classes=args.n_classes, m=args.m, s=args.s, L=args.L, seed=args.seed)
    data = rhm.sample(args.n, seed=args.seed + 1)
    ev = UniformCorruption(args.v).evidence(data.leaves, args.eps, seed=args.seed + 2)
    opts = {
        "numpyro-sample": {"num_samples": args.num_samples, "seed": args.seed},
        "mcmc": {"num_samples": args.num_samples, "seed": args.seed},
        "meanfield-vi": {"seed": args.seed},
    }
    df = compare_backends(rhm, ev, backends, truth=data.labels, options=opts)
    print(f"RHM v={args.v} m={args.m} s={args.s} L={args.L} n_classes={args.n_classes}, "
          f"{args.n} items, uniform corruption eps={args.eps}")
    print(format_comparison(df))
    if args.out is not None:
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
        paths = save_comparison(df, args.out, meta=meta)
        print(f"wrote {paths['csv']} and {paths['json']}")
    return 0
