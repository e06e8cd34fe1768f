"""``hiergen compare``: run inference backends side by side on RHMs with uniform corruption.

One problem (a single ``--eps`` and ``--seed``) prints the table of today; comma lists of
corruption levels and seeds compare the backends on every problem of the grid (one table
with ``eps`` and ``seed`` columns), serially or as Dask tasks (``--scheduler``). With
``--out`` the folder is a resumable point store (``config.json``, ``points/``) that also
holds ``comparison.csv`` and ``comparison.json`` (one row per eps, seed and backend, with
``eps`` and ``seed`` columns even for one problem): a rerun reuses every finished point.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hiergen.commands._options import add_rhm_options, add_scheduler_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare inference backends (BP, pgmpy, NumPyro, MCMC, VI)")
    add_rhm_options(p, v=4, n_classes=2, m=2, s=2, L=3)
    p.add_argument("--n", type=int, default=8, help="number of noisy data (batch)")
    p.add_argument("--eps", default="0.5",
                   help="uniform corruption level, or a comma list of levels in [0, 1]")
    p.add_argument("--seed", default="0",
                   help="seed of the rules, data and noise, or a comma list of seeds")
    p.add_argument("--backends", default="bp,pgmpy,numpyro,mcmc,meanfield-vi",
                   help="comma list of backend names (see hiergen.inference.registry)")
    p.add_argument("--num-samples", type=int, default=500, help="draws for the sampling backends")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for comparison.csv, comparison.json and the resumable point "
                        "store (config.json, points/); default: print only")
    add_scheduler_options(p)
    p.set_defaults(func=run_compare)


def _comma_list(text: str, kind: type, option: str) -> list:
    from hiergen.models.errors import ConfigError

    try:
        values = [kind(x) for x in str(text).split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"{option} must be a comma list of {kind.__name__}s, got {text!r}") from exc
    if not values:
        raise ConfigError(f"{option} needs at least one value, got {text!r}")
    return values


def run_compare(args: argparse.Namespace) -> int:
    from hiergen.experiments.compare_sweep import format_sweep, sweep_compare
    from hiergen.inference.compare import save_comparison
    from hiergen.models.errors import ConfigError

    eps = _comma_list(args.eps, float, "--eps")
    bad = [e for e in eps if not 0.0 <= e <= 1.0]
    if bad:
        raise ConfigError(f"--eps must be in [0, 1], got {bad[0]}")
    seeds = _comma_list(args.seed, int, "--seed")
    if args.n < 1 or args.num_samples < 1:
        raise ConfigError("--n and --num-samples must be >= 1")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    opts = {"numpyro-sample": {"num_samples": args.num_samples},
            "mcmc": {"num_samples": args.num_samples}}  # and seed=<problem seed>, by the sweep
    rhm = {"v": args.v, "n_classes": args.n_classes, "m": args.m, "s": args.s, "L": args.L}
    df = sweep_compare(rhm, eps, seeds, backends, n=args.n, options=opts, out=args.out,
                       scheduler=args.scheduler, n_workers=args.workers, progress=True)
    what = (f"uniform corruption eps={eps[0]}" if len(eps) == 1
            else f"uniform corruption eps in {','.join(map(str, eps))}")
    what += "" if len(seeds) == 1 else f", seeds {','.join(map(str, seeds))}"
    print(f"RHM v={args.v} m={args.m} s={args.s} L={args.L} n_classes={args.n_classes}, "
          f"{args.n} items, {what}")
    print(format_sweep(df))
    if args.out is not None:
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
        meta.update(eps=eps[0] if len(eps) == 1 else eps, seed=seeds[0] if len(seeds) == 1 else seeds)
        paths = save_comparison(df, args.out, meta=meta)
        print(f"points: {df.attrs['points_computed']} computed, {df.attrs['points_reused']} "
              f"reused from {args.out}")
        print(f"wrote {paths['csv']} and {paths['json']}")
    return 0
