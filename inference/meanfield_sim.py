"""The exact-BP simulation that the mean-field theory of :mod:`hiergen.inference.meanfield` is
compared with: probabilities of the correct value per level on sampled RHM data, and where two
depths' root curves cross.

Separate from the theory (plain numpy) because it runs BP on sampled grammars; the names stay
importable from :mod:`hiergen.inference.meanfield` as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hiergen.inference.meanfield import _check_eps, check_params
from hiergen.models._validate import check_int
from hiergen.models.errors import ConfigError, GrammarError


@dataclass(frozen=True)
class Simulation:
    """Exact-BP probability of the correct value per level, averaged over rules and samples.

    ``marginal`` / ``up`` / ``down``: ``(len(noise), L + 1)`` means over all nodes of a level,
    all samples and all RHM seeds; ``*_sem``: standard errors across RHM seeds (NaN with one
    seed). ``up`` / ``down`` are NaN unless requested. ``noise`` holds the eps (or t) values.
    """

    noise: np.ndarray
    marginal: np.ndarray
    marginal_sem: np.ndarray
    up: np.ndarray
    up_sem: np.ndarray
    down: np.ndarray
    params: dict[str, Any]


def _subtree_grammar(rhm: Any, lev: int) -> Any:
    """The grammar of the subtree below a level-``lev`` node (uniform prior on its symbol)."""
    from hiergen.models.grammar import Grammar

    return Grammar(
        vocab_sizes=(rhm.vocab_sizes[lev],) + tuple(rhm.vocab_sizes[lev + 1:]),
        branching=rhm.s,
        rules=[rhm.children[k] for k in range(lev, rhm.L)],
        allow_unreachable=True,
    )


def _correct(probs: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    return np.take_along_axis(probs, symbols[..., None], -1)[..., 0]


def bp_reconstruction(
    noise_values: Sequence[float], v: int, m: int, s: int, L: int,
    n_classes: int | None = None, n_samples: int = 200, seeds: Sequence[int] = (0, 1, 2, 3),
    noise: str = "uniform", upward: bool = False, schedule: Any = None,
) -> Simulation:
    """Exact BP on sampled RHM data: mean probability of the correct value per level.

    For every RHM seed, ``n_samples`` data (sample seed ``1000 + seed``) are corrupted with
    ``noise="uniform"`` (``noise_values`` are eps) or ``"gaussian"`` (DDPM times t; noise
    seed ``2000 + seed``) and BP computes the marginals. With ``upward=True`` it also
    measures the normalised upward message of every level (BP on the subtree grammar below
    each node, uniform prior) and the downward message (marginal / upward, renormalised).
    """
    from hiergen.inference.bp import BeliefPropagation
    from hiergen.models.noise import GaussianDiffusion, UniformCorruption
    from hiergen.models.rhm import RHM

    v, m, s, n_classes = check_params(v, m, s, n_classes)
    L = check_int(L, "L", 1, error=GrammarError)
    if noise not in ("uniform", "gaussian"):
        raise ConfigError(f"noise must be 'uniform' or 'gaussian', got {noise!r}")
    values = np.asarray(noise_values, dtype=np.float64).ravel()
    if noise == "uniform":
        _check_eps(values)
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("bp_reconstruction needs at least one RHM seed")
    shape = (len(seeds), values.size, L + 1)
    marg, up, down = np.zeros(shape), np.full(shape, np.nan), np.full(shape, np.nan)
    for a, seed in enumerate(seeds):
        rhm = RHM(v, n_classes, m, s, L, seed=int(seed))
        x = rhm.sample(n_samples, seed=1000 + int(seed))
        bp = BeliefPropagation(rhm)
        sub = {lev: BeliefPropagation(_subtree_grammar(rhm, lev)) for lev in range(1, L)} if upward else {}
        proc = UniformCorruption(v) if noise == "uniform" else GaussianDiffusion(v, **(
            {"schedule": schedule} if schedule is not None else {}))
        for k, val in enumerate(values):
            ev = proc.evidence(x.leaves, float(val), seed=2000 + int(seed))
            post = bp.run(ev)
            for lev in range(L + 1):
                marg[a, k, lev] = _correct(post.marginals[lev], x.symbols[lev]).mean()
            if not upward:
                continue
            ups = [post.marginals[0]]
            lik = ev.likelihood()
            for lev in range(1, L):
                n_l, width = s**lev, s ** (L - lev)
                leaves = lik.reshape(n_samples * n_l, width, v)
                ups.append(sub[lev].run(leaves).marginals[0][:, 0, :].reshape(n_samples, n_l, v))
            ups.append(lik)
            for lev in range(L + 1):
                up[a, k, lev] = _correct(ups[lev], x.symbols[lev]).mean()
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(ups[lev] > 0, post.marginals[lev] / ups[lev], 0.0)
                ratio /= ratio.sum(-1, keepdims=True)
                down[a, k, lev] = _correct(ratio, x.symbols[lev]).mean()

    def sem(x: np.ndarray) -> np.ndarray:
        if len(seeds) < 2:
            return np.full(x.shape[1:], np.nan)
        return x.std(0, ddof=1) / np.sqrt(len(seeds))

    return Simulation(
        noise=values,
        marginal=marg.mean(0),
        marginal_sem=sem(marg),
        up=up.mean(0),
        up_sem=sem(up),
        down=down.mean(0),
        params={"v": v, "m": m, "s": s, "L": L, "n_classes": n_classes, "n_samples": n_samples,
                "seeds": seeds, "noise": noise},
    )


def crossing(x: Any, y_shallow: Any, y_deep: Any, tol: float = 0.0) -> float:
    """Where two root curves ``y(x)`` of different depths cross (linear interpolation).

    ``x`` ascending noise values. The crossing is the first point after the largest
    advantage of the deeper tree (``y_deep - y_shallow``, which must exceed ``tol``) where
    the advantage becomes <= 0. NaN when the deeper curve is never better by more than
    ``tol`` (class lost) or never falls back below the shallower one (class kept).
    """
    x = np.asarray(x, dtype=np.float64)
    diff = np.asarray(y_deep, dtype=np.float64) - np.asarray(y_shallow, dtype=np.float64)
    top = int(np.argmax(diff))
    if diff[top] <= tol:
        return float("nan")
    after = np.flatnonzero(diff[top:] <= 0)
    if after.size == 0:
        return float("nan")
    i = top + int(after[0]) - 1
    return float(x[i] + (x[i + 1] - x[i]) * diff[i] / (diff[i] - diff[i + 1]))


__all__ = ["Simulation", "bp_reconstruction", "crossing"]
