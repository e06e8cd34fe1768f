"""How Gibbs sampling mixes across the class transition of an RHM.

For each corruption level ``eps``, noisy data are explained by exact BP (probability of the
true class: the paper's class transition) and by several Gibbs chains over the latent tree
(:class:`hiergen.inference.numpyro_backend.GibbsSampler`). Mixing is measured on the class:
R-hat and bulk ESS of the class indicators (worst class, median over data), and the error
of the Gibbs class marginal against BP. Writes ``mcmc_mixing.nc`` (xarray, NetCDF) and
``mcmc_mixing.png``.

    python examples/mcmc_mixing.py --out out/mcmc_mixing
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script."""
    from hiergen.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--v", type=int, default=8, help="RHM vocabulary size per level")
    p.add_argument("--m", type=int, default=4, help="RHM rules per symbol")
    p.add_argument("--s", type=int, default=2, help="RHM branching factor")
    p.add_argument("--L", type=int, default=4, help="RHM depth")
    p.add_argument("--n-classes", type=int, default=4, help="RHM number of classes")
    p.add_argument("--n", type=int, default=8, help="noisy data per eps")
    p.add_argument("--eps", default="0.1,0.3,0.4,0.5,0.6,0.7,0.9",
                   help="comma list of uniform corruption levels in [0, 1]")
    p.add_argument("--chains", type=int, default=4, help="Gibbs chains per datum")
    p.add_argument("--samples", type=int, default=2000, help="Gibbs draws per chain after warm-up")
    p.add_argument("--warmup", type=int, default=500, help="Gibbs warm-up sweeps per chain")
    p.add_argument("--seed", type=int, default=0, help="seed of the rules, data, noise and chains")
    p.add_argument("--out", type=Path, default=Path("out/mcmc_mixing"),
                   help="folder for mcmc_mixing.nc and mcmc_mixing.png")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import xarray as xr

    from hiergen._progress import progress_bar
    from hiergen.inference.bp import BeliefPropagation
    from hiergen.inference.numpyro_backend import GibbsSampler
    from hiergen.models.noise import UniformCorruption
    from hiergen.models.rhm import RHM

    args = parse_args(argv)
    eps_grid = [float(e) for e in args.eps.split(",") if e]
    rhm = RHM(v=args.v, n_classes=args.n_classes, m=args.m, s=args.s, L=args.L, seed=args.seed)
    data = rhm.sample(args.n, seed=args.seed + 1)
    bp = BeliefPropagation(rhm)
    gibbs = GibbsSampler(rhm, num_samples=args.samples, num_warmup=args.warmup,
                         num_chains=args.chains, seed=args.seed)
    shape = (len(eps_grid), args.n)
    out = {k: np.full(shape, np.nan) for k in
           ("p_true_bp", "p_true_gibbs", "rhat_class", "ess_class", "rhat_log_joint", "dclass")}
    secs = np.zeros(len(eps_grid))
    for k, eps in enumerate(progress_bar(eps_grid, enabled=not args.no_progress, desc="eps")):
        ev = UniformCorruption(args.v).evidence(data.leaves, eps, seed=args.seed + 2 + k)
        ref = bp.run(ev)
        post = gibbs.run(ev)
        idx = np.arange(args.n)
        out["p_true_bp"][k] = ref.class_probs[idx, data.labels]
        out["p_true_gibbs"][k] = post.class_probs[idx, data.labels]
        out["rhat_class"][k] = post.extra["rhat_class"]
        out["ess_class"][k] = post.extra["ess_class"]
        out["rhat_log_joint"][k] = post.extra["rhat_log_joint"]
        out["dclass"][k] = np.abs(post.class_probs - ref.class_probs).max(-1)
        secs[k] = post.seconds
    ds = xr.Dataset(
        {k: (("eps", "item"), v) for k, v in out.items()} | {"gibbs_seconds": (("eps",), secs)},
        coords={"eps": eps_grid, "item": np.arange(args.n)},
        attrs={"v": args.v, "m": args.m, "s": args.s, "L": args.L, "n_classes": args.n_classes,
               "chains": args.chains, "samples": args.samples, "warmup": args.warmup,
               "seed": args.seed, "sf": args.s * rhm.f},
    )
    from hiergen._files import atomic_write

    atomic_write(args.out / "mcmc_mixing.nc", lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    med = ds.median("item", skipna=True)
    axes[0].plot(eps_grid, med["p_true_bp"], "o-", label="exact BP")
    axes[0].plot(eps_grid, med["p_true_gibbs"], "s--", label="Gibbs")
    axes[0].set_ylabel("P(true class) (median)")
    axes[0].legend()
    axes[1].semilogy(eps_grid, med["rhat_class"] - 1 + 1e-4, "o-", label="class indicators")
    axes[1].semilogy(eps_grid, med["rhat_log_joint"] - 1 + 1e-4, "s--", label="log joint")
    axes[1].set_ylabel("R-hat - 1 (median)")
    axes[1].legend()
    axes[2].plot(eps_grid, med["ess_class"], "o-")
    axes[2].set_ylabel(f"class ESS (of {args.chains * args.samples})")
    for ax in axes:
        ax.set_xlabel("corruption eps")
    fig.suptitle(f"Gibbs mixing, RHM v={args.v} m={args.m} s={args.s} L={args.L}", fontsize=10)
    fig.tight_layout()
    atomic_write(args.out / "mcmc_mixing.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    print(ds[["p_true_bp", "p_true_gibbs", "rhat_class", "ess_class"]].median("item").to_dataframe())
    print(f"wrote {args.out / 'mcmc_mixing.nc'} and {args.out / 'mcmc_mixing.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
