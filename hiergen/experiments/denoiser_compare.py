"""Learned denoisers against the exact Bayes-optimal denoiser (belief propagation).

For every noise level ``t`` and held-out clean data ``x0`` (drawn as in
:func:`~hiergen.experiments.sweeps.forward_backward`, with the same seeds), the datum is
noised once (``x_t`` for Gaussian diffusion, a masked datum for masking diffusion) and the
*same* observation goes to BP (as its exact leaf likelihood) and to every model. Measured:

- ``kl``: ``KL(BP || model)`` of the leaf posteriors, ``sum_a p_BP(a) log(p_BP(a) / q(a))``
  averaged over leaves and samples (nats per leaf), with its standard error; ``ce_model`` /
  ``ce_bp``: the cross-entropy of each to the true leaves (``ce_model - ce_bp`` is the
  model's excess loss; on average it equals ``kl``).
- ``leaf_acc_model`` / ``leaf_acc_bp``: accuracy of the most probable leaf.
- ``acc_model`` ``(model, time, level)``: accuracy per tree level of the model's argmax leaves
  *parsed by the grammar*: BP max-product decoding with near-exact evidence on those leaves
  (uniform corruption ``eps = 1e-3``), which returns the unique derivation when the leaves
  are a datum of the grammar and otherwise the nearest datum in Hamming distance (all
  derivations of an RHM are equally probable a priori); ``valid_model`` is the fraction of
  argmax leaf strings that are data of the grammar. ``acc_bp`` ``(time, level)``: accuracy
  of BP's per-node most probable symbol (the Bayes-optimal per-node decision).
- the forward–backward class-change curve. The model is used *one-shot*: ``x0_hat`` draws
  every leaf independently from the model's leaf distribution at ``t`` (no reverse chain),
  parsed as above; ``class_change_model`` / ``p_change_model`` (per level; the leaf level is
  the sampled leaves themselves). For reference the same one-shot procedure on BP's exact
  leaf marginals (``class_change_bp_oneshot``: what a perfect denoiser would give with
  one-shot sampling) and BP's exact posterior sample of the whole tree (``class_change_bp``,
  ``p_change_bp``: the true forward–backward curve of the paper).
- the change correlations of :mod:`hiergen.experiments.correlations` (``change_corr``,
  ``chi``, ``xi``) for the model's one-shot samples and BP's exact samples
  (``chi_bp_oneshot``: one-shot samples of BP's leaf marginals, the fair reference for the
  models: independent leaf draws lose the correlations a whole-tree sample has).
- per model, the class transition time and width (logistic fits,
  :func:`~hiergen.experiments.analysis.transition`) of its one-shot class-change curve,
  and BP's.

Models are given as a dict ``{name: model}``; models that carry a training-set size (the
``P`` of their checkpoint) get it as a coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from hiergen.models.errors import ConfigError
from hiergen.models.grammar import Grammar

PARSE_EPS = 1e-3

_ATTRS = {
    "kl": ("KL(BP || model) of the leaf posteriors, mean over leaves and samples", "nats"),
    "ce_model": ("cross-entropy of the model's leaf distribution to the true leaves", "nats"),
    "ce_bp": ("cross-entropy of BP's leaf marginals to the true leaves", "nats"),
    "leaf_acc_model": ("accuracy of the model's most probable leaf", "1"),
    "leaf_acc_bp": ("accuracy of BP's most probable leaf", "1"),
    "acc_model": ("accuracy per level of the model's argmax leaves parsed by the grammar", "1"),
    "acc_bp": ("accuracy per level of BP's per-node most probable symbol", "1"),
    "valid_model": ("fraction of the model's argmax leaf strings that are data of the grammar", "1"),
    "class_change_model": ("class of the one-shot model sample (parsed) differs from x0's", "1"),
    "class_change_bp_oneshot": ("class of a one-shot sample of BP's leaf marginals differs from x0's", "1"),
    "class_change_bp": ("class of BP's exact posterior sample differs from x0's", "1"),
    "p_change_model": ("fraction of a level's nodes changed by the one-shot model sample", "1"),
    "p_change_bp": ("fraction of a level's nodes changed by BP's exact posterior sample", "1"),
    "chi_model": ("susceptibility of leaf changes, one-shot model samples", "1"),
    "chi_bp": ("susceptibility of leaf changes, BP exact samples", "1"),
    "chi_bp_oneshot": ("susceptibility of leaf changes, one-shot samples of BP's leaf marginals", "1"),
    "xi_model": ("correlation length of leaf changes, one-shot model samples", "leaves"),
    "xi_bp": ("correlation length of leaf changes, BP exact samples", "leaves"),
    "change_corr_model": ("connected correlation C(r) of leaf changes, one-shot model samples", "1"),
    "change_corr_bp": ("connected correlation C(r) of leaf changes, BP exact samples", "1"),
    "t_star_model": ("class transition time of the one-shot model curve", "time units"),
    "width_model": ("10-90% width of the class transition of the one-shot model curve", "time units"),
}


def kl_leaves(p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Per-sample mean over leaves of ``KL(p || q)``: ``p`` ``(n, d, v)`` probabilities,
    ``log_q`` ``(n, d, v)`` log-probabilities. ``0 log 0 = 0``; ``+inf`` where ``q = 0 < p``.
    Returns ``(n,)``."""
    p = np.asarray(p, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - log_q), 0.0)
    return terms.sum(-1).mean(-1)


def parse_leaves(bp: Any, leaves: np.ndarray, v: int) -> Any:
    """The grammar's parse of leaf strings ``(n, d)``: BP max-product decoding with evidence
    ``(1 - eps) delta + eps / v`` (``eps = PARSE_EPS``) — the exact derivation for data of
    the grammar, the nearest datum (Hamming distance) otherwise. Returns the MAP tree."""
    from hiergen.models.noise import UniformCorruption

    return bp.map(UniformCorruption(v).evidence(leaves, PARSE_EPS)).tree


class _Mean:
    """Per-sample values -> mean and standard error (arrays of any trailing shape)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def add(self, x: Any) -> None:
        self.parts.append(np.asarray(x, dtype=np.float64))

    def mean_se(self) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate(self.parts, 0)
        se = x.std(0, ddof=1) / math.sqrt(x.shape[0]) if x.shape[0] > 1 else np.full(x.shape[1:], np.nan)
        return x.mean(0), se


def _observe(diffusion: str, v: int, x0: np.ndarray, t: float, seed: int) -> tuple[Any, np.ndarray]:
    """``(evidence, model observation)`` of clean leaves at level ``t``."""
    from hiergen.models.noise import GaussianDiffusion, Masking

    if diffusion == "gaussian":
        ev = GaussianDiffusion(v).evidence(x0, t, seed=seed)
        obs = ev.observation if ev.observation is not None else np.eye(v)[x0]  # t = 0: exact
        return ev, obs.astype(np.float32)
    ev = Masking(v).evidence(x0, t, seed=seed)
    return ev, np.where(ev.observation, v, x0)


def _one_shot(log_q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One leaf string per sample, each leaf drawn independently: ``(n, d)``."""
    q = np.exp(log_q - log_q.max(-1, keepdims=True))
    cdf = np.cumsum(q / q.sum(-1, keepdims=True), -1)
    u = rng.random(cdf.shape[:-1] + (1,))
    return np.minimum((u > cdf).sum(-1), q.shape[-1] - 1)


def _changes(tree: Any, leaves: np.ndarray, x0: Any) -> list[np.ndarray]:
    """Per-level fraction of changed nodes ``(n, L+1)`` columns; the leaf level from ``leaves``."""
    per = [(tree.symbols[lev] != s).mean(1) for lev, s in enumerate(x0.symbols[:-1])]
    return per + [(leaves != x0.leaves).mean(1)]


class _ModelAcc:
    """Accumulators of one model at one time."""

    def __init__(self, d: int) -> None:
        from hiergen.experiments.correlations import ChangeCorrelation

        self.m = {k: _Mean() for k in ("kl", "ce_model", "leaf_acc_model", "acc_model", "valid_model",
                                       "class_change_model", "p_change_model")}
        self.corr = ChangeCorrelation(d)


def _model_block(model: Any, acc: _ModelAcc, bp: Any, x0: Any, obs: np.ndarray, t: float,
                 p_bp: np.ndarray, rng: np.random.Generator) -> None:
    from hiergen.experiments.denoisers import leaf_log_probs

    v = p_bp.shape[-1]
    log_q = leaf_log_probs(model, obs, t)
    acc.m["kl"].add(kl_leaves(p_bp, log_q))
    acc.m["ce_model"].add(-np.take_along_axis(log_q, x0.leaves[..., None], -1)[..., 0].mean(1))
    arg = log_q.argmax(-1)
    acc.m["leaf_acc_model"].add((arg == x0.leaves).mean(1))
    parsed = parse_leaves(bp, arg, v)
    acc.m["acc_model"].add(np.stack([(s == s0).mean(1) for s, s0 in zip(parsed.symbols, x0.symbols)], 1))
    acc.m["valid_model"].add((parsed.leaves == arg).all(1))
    sample = _one_shot(log_q, rng)
    tree = parse_leaves(bp, sample, v)
    acc.m["class_change_model"].add(tree.symbols[0][:, 0] != x0.labels)
    acc.m["p_change_model"].add(np.stack(_changes(tree, sample, x0), 1))
    acc.corr.add(x0.leaves, sample)


def _bp_block(bp: Any, acc: dict[str, Any], ev: Any, x0: Any, seed: int,
              rng: np.random.Generator) -> np.ndarray:
    post, x_hat = bp.run_and_sample(ev, seed=seed)
    p = post.marginals[-1].astype(np.float64)
    with np.errstate(divide="ignore"):
        acc["ce_bp"].add(-np.log(np.take_along_axis(p, x0.leaves[..., None], -1)[..., 0]).mean(1))
    acc["leaf_acc_bp"].add((p.argmax(-1) == x0.leaves).mean(1))
    acc["acc_bp"].add(np.stack([(a == s).mean(1) for a, s in zip(post.argmax(), x0.symbols)], 1))
    acc["class_change_bp"].add(x_hat.labels != x0.labels)
    acc["p_change_bp"].add(np.stack([(h != s).mean(1) for h, s in zip(x_hat.symbols, x0.symbols)], 1))
    acc["corr"].add(x0.leaves, x_hat.leaves)
    sample = _one_shot(np.log(np.maximum(p, 1e-300)), rng)
    acc["corr_oneshot"].add(x0.leaves, sample)
    acc["class_change_bp_oneshot"].add(parse_leaves(bp, sample, p.shape[-1]).symbols[0][:, 0] != x0.labels)
    return p


def _check_models(models: Mapping[str, Any], grammar: Grammar) -> str:
    if not isinstance(models, Mapping) or not models:
        raise ConfigError("give the models as a non-empty dict {name: model}")
    want = {"v": grammar.vocab_sizes[-1], "d": grammar.d, "L": grammar.L}
    kinds = set()
    for name, model in models.items():
        cfg = getattr(model, "config", None)
        if cfg is None or any(cfg.get(k) != x for k, x in want.items()):
            raise ConfigError(f"model {name!r} ({cfg}) does not match the grammar {want}")
        kinds.add(cfg["diffusion"])
    if len(kinds) != 1:
        raise ConfigError(f"all models must use the same diffusion, got {sorted(kinds)}")
    return kinds.pop()


def compare_denoisers(
    models: Mapping[str, Any],
    grammar: Grammar,
    times: Sequence[float] | np.ndarray,
    n_samples: int = 1000,
    seed: int = 1,
    P: Mapping[str, int] | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Compare denoisers with BP at every noise level ``times`` on ``n_samples`` held-out data.

    ``models``: ``{name: model}`` (all of one diffusion, matching ``grammar``); ``P``:
    optional ``{name: training-set size}`` (a coordinate). ``seed`` draws the held-out data,
    noise and samples (keep it different from the training seed).

    Returns a Dataset with dims ``model``, ``time``, ``level`` (``0..L``), ``r`` (``0..d-1``):
    the variables listed in the module doc (``*_se`` standard errors for the per-sample means),
    plus ``t_star_model``, ``width_model`` ``(model,)`` and attrs ``t_star_bp``,
    ``width_bp`` (exact samples), ``t_star_bp_oneshot``, ``width_bp_oneshot``.
    """
    from hiergen._progress import progress_bar
    from hiergen.experiments.correlations import ChangeCorrelation
    from hiergen.experiments.sweeps import (
        _NOISE,
        _SAMPLE,
        _check_int,
        _check_times,
        _seed_int,
        draw_data,
    )
    from hiergen.inference.bp import BeliefPropagation

    if not isinstance(grammar, Grammar):
        raise ConfigError(f"need a Grammar, got {type(grammar).__name__}")
    diffusion = _check_models(models, grammar)
    times = _check_times(times, diffusion)
    n_samples = _check_int(n_samples, "n_samples", 2)
    seed = _check_int(seed, "seed", 0)
    names = list(models)
    bp = BeliefPropagation(grammar)
    data = draw_data(grammar, n_samples, seed)
    v, L = grammar.vocab_sizes[-1], grammar.L
    rows_m: list[dict[str, _ModelAcc]] = []
    rows_bp: list[dict[str, Any]] = []
    for ti in progress_bar(range(len(times)), enabled=progress, desc="compare with BP", unit="t"):
        t = float(times[ti])
        accs = {n: _ModelAcc(grammar.d) for n in names}
        acc_bp: dict[str, Any] = {k: _Mean() for k in ("ce_bp", "leaf_acc_bp", "acc_bp", "class_change_bp",
                                                       "p_change_bp", "class_change_bp_oneshot")}
        acc_bp["corr"] = ChangeCorrelation(grammar.d)
        acc_bp["corr_oneshot"] = ChangeCorrelation(grammar.d)
        for b, x0 in enumerate(data):
            ev, obs = _observe(diffusion, v, x0.leaves, t, _seed_int(seed, L, ti, b, _NOISE))
            rng = np.random.default_rng(_seed_int(seed, L, ti, b, 3))
            p_bp = _bp_block(bp, acc_bp, ev, x0, _seed_int(seed, L, ti, b, _SAMPLE), rng)
            for k, name in enumerate(names):
                rng_k = np.random.default_rng(_seed_int(seed, L, ti, b, 4 + k))
                _model_block(models[name], accs[name], bp, x0, obs, t, p_bp, rng_k)
        rows_m.append(accs)
        rows_bp.append(acc_bp)
    ds = _assemble(names, times, L, grammar.d, rows_m, rows_bp, diffusion)
    if P is not None:
        ds = ds.assign_coords(P=("model", [int(P[n]) for n in names]))
        ds["P"].attrs.update({"long_name": "training-set size (clean data)", "units": "1"})
    _add_transitions(ds, grammar)
    ds.attrs.update({"diffusion": diffusion, "n_samples": n_samples, "seed": seed, "grammar": repr(grammar),
                     "n_classes": grammar.n_classes, "one_shot": 1,
                     "parse": f"BP max-product with uniform-corruption evidence eps={PARSE_EPS}"})
    return ds


def _assemble(names: list[str], times: np.ndarray, L: int, d: int, rows_m: list, rows_bp: list,
              diffusion: str) -> xr.Dataset:
    ds = xr.Dataset(coords={"model": names, "time": times, "level": np.arange(L + 1), "r": np.arange(d)})
    for key in rows_m[0][names[0]].m:
        stats = [[row[n].m[key].mean_se() for n in names] for row in rows_m]
        mean = np.stack([np.stack([m for m, _ in r]) for r in stats], 1)  # (model, time, ...)
        se = np.stack([np.stack([s for _, s in r]) for r in stats], 1)
        dims = ("model", "time", "level")[: mean.ndim]
        ds[key], ds[key + "_se"] = (dims, mean), (dims, se)
    corr = [[row[n].corr.result() for n in names] for row in rows_m]
    ds["change_corr_model"] = (("model", "time", "r"), np.stack([np.stack([c["C"] for c in r]) for r in corr], 1))
    ds["chi_model"] = (("model", "time"), np.array([[c["chi"] for c in r] for r in corr]).T)
    ds["xi_model"] = (("model", "time"), np.array([[c["xi"] for c in r] for r in corr]).T)
    for key in rows_bp[0]:
        if key.startswith("corr"):
            continue
        stats = [row[key].mean_se() for row in rows_bp]
        mean, se = np.stack([m for m, _ in stats]), np.stack([s for _, s in stats])
        dims = ("time", "level")[: mean.ndim]
        ds[key], ds[key + "_se"] = (dims, mean), (dims, se)
    cb = [row["corr"].result() for row in rows_bp]
    ds["change_corr_bp"] = (("time", "r"), np.stack([c["C"] for c in cb]))
    ds["chi_bp"] = ("time", [c["chi"] for c in cb])
    ds["xi_bp"] = ("time", [c["xi"] for c in cb])
    ds["chi_bp_oneshot"] = ("time", [row["corr_oneshot"].result()["chi"] for row in rows_bp])
    for k, (long_name, units) in _ATTRS.items():
        if k in ds:
            ds[k].attrs.update({"long_name": long_name, "units": units})
        if k + "_se" in ds:
            ds[k + "_se"].attrs.update({"long_name": f"standard error of {k} over samples", "units": units})
    unit = "DDPM steps" if diffusion == "gaussian" else "1"
    meaning = "DDPM diffusion time t" if diffusion == "gaussian" else "masking probability p"
    ds["time"].attrs.update({"long_name": f"noise level: {meaning}", "units": unit})
    ds["level"].attrs.update({"long_name": "tree level (0 = root/class, L = leaves)", "units": "1"})
    ds["r"].attrs.update({"long_name": "distance between leaves", "units": "leaves"})
    return ds


def _add_transitions(ds: xr.Dataset, grammar: Grammar) -> None:
    from hiergen.experiments.analysis import class_limits, transition

    low, high = class_limits(grammar.n_classes, grammar.root_prior)["class_change"]
    t = ds["time"].values
    fits = [transition(t, ds["class_change_model"].sel(model=n).values, low, high,
                       ds["class_change_model_se"].sel(model=n).values) for n in ds["model"].values]
    ds["t_star_model"] = ("model", [f.t_star for f in fits])
    ds["width_model"] = ("model", [f.width for f in fits])
    for k in ("t_star_model", "width_model"):
        ds[k].attrs.update({"long_name": _ATTRS[k][0], "units": ds["time"].attrs["units"]})
    for key, var in (("bp", "class_change_bp"), ("bp_oneshot", "class_change_bp_oneshot")):
        f = transition(t, ds[var].values, low, high, ds[var + "_se"].values)
        ds.attrs[f"t_star_{key}"], ds.attrs[f"width_{key}"] = f.t_star, f.width


def plot_comparison(ds: xr.Dataset) -> Any:
    """Four panels: KL(BP || model) vs t per model; class-change curves (models one-shot, BP
    one-shot, BP exact); susceptibility of leaf changes; transition time and width vs P."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8.5), layout="constrained")
    (a1, a2), (a3, a4) = fig.subplots(2, 2)
    t = ds["time"].values
    cmap = colormaps["viridis"]
    n = ds.sizes["model"]
    labels = [f"P={int(p)}" for p in ds["P"].values] if "P" in ds.coords else list(ds["model"].values)
    for k in range(n):
        c = cmap(0.85 * k / max(n - 1, 1))
        a1.plot(t, ds["kl"].isel(model=k), color=c, label=labels[k])
        a2.plot(t, ds["class_change_model"].isel(model=k), color=c, label=f"model {labels[k]} (one-shot)")
        a3.plot(t, ds["chi_model"].isel(model=k), color=c, label=f"model {labels[k]}")
    a1.set_yscale("log")
    a1.set_ylabel("KL(BP || model) per leaf [nats]")
    a2.plot(t, ds["class_change_bp_oneshot"], "k--", label="BP marginals (one-shot)")
    a2.plot(t, ds["class_change_bp"], "k-", lw=2, label="BP exact posterior sample")
    a2.set_ylabel("class-change probability")
    a3.plot(t, ds["chi_bp"], "k-", lw=2, label="BP exact")
    a3.plot(t, ds["chi_bp_oneshot"], "k--", label="BP marginals (one-shot)")
    a3.axvline(ds.attrs["t_star_bp"], color="grey", ls=":", label="BP class transition t*")
    a3.set_ylabel("susceptibility of leaf changes")
    xl = "diffusion time t" if ds.attrs.get("diffusion") == "gaussian" else "masking probability p"
    for ax in (a1, a2, a3):
        ax.set_xlabel(xl)
        ax.legend(fontsize=7)
    x = ds["P"].values if "P" in ds.coords else np.arange(n)
    a4.errorbar(x, ds["t_star_model"], yerr=ds["width_model"] / 2, fmt="o-", capsize=3,
                label="model t* (bars: width/2)")
    a4.axhline(ds.attrs["t_star_bp"], color="k", label="BP exact t*")
    a4.axhline(ds.attrs["t_star_bp_oneshot"], color="k", ls="--", label="BP one-shot t*")
    if "P" in ds.coords:
        a4.set_xscale("log")
    a4.set_xlabel("training-set size P" if "P" in ds.coords else "model")
    a4.set_ylabel("class transition time")
    a4.legend(fontsize=7)
    return fig
