"""``hiergen bench bp``: belief-propagation throughput and memory."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiergen.commands._options import add_rhm_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (bp: BP throughput and memory)")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    bp = what.add_parser("bp", help="time all-level BP marginals on the headline RHM")
    bp.add_argument("--backends", default="numpy,torch,jax",
                    help="comma list of BP backends to time (numpy, torch, jax)")
    bp.add_argument("--depths", default="6,8,10", help="comma list of tree depths L")
    bp.add_argument("--batch", type=int, default=1024, help="data per BP call")
    add_rhm_options(bp, v=32, n_classes=32, m=8, s=2)
    bp.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                    help="floating-point type of the messages")
    bp.add_argument("--device", default=None,
                    help="device of torch/jax, e.g. cuda, cuda:1 (torch) or gpu (jax); "
                         "default: the library's default device")
    bp.add_argument("--repeats", type=int, default=3,
                    help="timed runs per point (the best is reported), after one warm-up")
    bp.add_argument("--engines", default="kernel,array,plain",
                    help="numpy engines, comma list: kernel (numba), array (the array code shared "
                         "with JAX/torch), plain (a plain numpy BP, the baseline)")
    bp.add_argument("--no-sampling", action="store_true", help="skip the posterior-sampling rows")
    bp.add_argument("--json", type=Path, default=None, help="also write the JSON results to this file")
    bp.set_defaults(func=run_bp)


def run_bp(args: argparse.Namespace) -> int:
    from hiergen.bench import bench_bp, format_table, results_json
    from hiergen.models.errors import ConfigError

    try:
        depths = [int(x) for x in args.depths.split(",") if x]
    except ValueError as exc:
        raise ConfigError(f"--depths must be a comma list of integers, got {args.depths!r}") from exc
    backends = [b for b in args.backends.split(",") if b]
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - {"kernel", "array", "plain"})
    if unknown or not engines:
        raise ConfigError(f"--engines must be a comma list of kernel, array, plain; got {args.engines!r}")
    results = bench_bp(
        backends=backends, depths=depths, batch=args.batch, v=args.v, m=args.m, s=args.s,
        n_classes=args.n_classes, dtype=args.dtype, device=args.device, repeats=args.repeats,
        engines=engines, sampling=not args.no_sampling,
    )
    print(format_table(results))
    text = results_json(results)
    print(text)
    if args.json:
        from hiergen._files import atomic_write

        atomic_write(args.json, text)
    return 0
