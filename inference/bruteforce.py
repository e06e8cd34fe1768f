"""Brute-force exact inference by enumerating every latent tree (tiny grammars only).

This is the independent oracle the tests check belief propagation against: it shares no
code with :mod:`hiergen.inference.bp`. Cost grows as the number of derivations.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

from hiergen.models.errors import SizeLimitError
from hiergen.models.grammar import Grammar


def enumerate_trees(grammar: Grammar, max_trees: int = 200_000) -> tuple[list[np.ndarray], np.ndarray]:
    """Every derivation with positive probability.

    Returns ``(symbols, prob)``: ``symbols[l]`` is ``(N, n_l)`` int64, ``prob`` ``(N,)`` is the
    prior probability of each whole tree (class prior times rule probabilities).
    """
    total = grammar.n_derivations()
    if total > max_trees:
        raise SizeLimitError(f"brute force would enumerate {total} trees (> max_trees={max_trees})")
    trees: list[tuple[list[tuple[int, ...]], float]] = [
        ([(c,)], float(p)) for c, p in enumerate(grammar.root_prior) if p > 0
    ]
    for lev in range(grammar.L):
        new = []
        for levels, p in trees:
            options = []
            for a in levels[-1]:
                opts = [
                    (tuple(int(x) for x in grammar.children[lev][a, r]), float(grammar.probs[lev][a, r]))
                    for r in range(int(grammar.n_rules[lev][a]))
                    if grammar.probs[lev][a, r] > 0
                ]
                options.append(opts)
            for combo in itertools.product(*options):
                child = tuple(c for t, _ in combo for c in t)
                new.append((levels + [child], p * float(np.prod([q for _, q in combo]))))
        trees = new
    symbols = [np.array([t[0][lev] for t in trees], dtype=np.int64) for lev in range(grammar.L + 1)]
    prob = np.array([t[1] for t in trees], dtype=np.float64)
    return symbols, prob


def brute_force_posterior(
    grammar: Grammar,
    likelihood: np.ndarray,
    prior: np.ndarray | None = None,
    internal_evidence: Mapping[int, np.ndarray] | None = None,
    trees: tuple[list[np.ndarray], np.ndarray] | None = None,
    log: bool = False,
) -> dict[str, Any]:
    """Exact marginals and log-evidence by summing over all trees (in the log domain, so
    likelihoods of any scale — 1e-300 or 1e308 — are handled exactly).

    Parameters
    ----------
    likelihood : (B, d, v_L) leaf likelihoods (log-likelihoods when ``log=True``).
    prior : optional class prior override (n_classes,) or (B, n_classes).
    internal_evidence : optional {level: (B, n_l, v_l)} likelihoods (never log).

    Returns ``{"marginals": [ (B, n_l, v_l) ], "log_evidence": (B,), "map_log_prob": (B,)}``
    (NaN marginals and ``-inf`` log-evidence for items no tree explains).
    """
    symbols, prob = trees if trees is not None else enumerate_trees(grammar)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_prob = np.log(prob)
        lik = np.asarray(likelihood, dtype=np.float64)
        log_lik = lik if log else np.log(lik)
        b = lik.shape[0]
        root = symbols[0][:, 0]
        # log_w[b, k] = log prob_k + sum_i log lik[b, i, leaves_k[i]]
        log_w = np.broadcast_to(log_prob, (b, len(prob))).copy()
        if prior is not None:
            pr = np.broadcast_to(np.asarray(prior, dtype=np.float64), (b, grammar.n_classes))
            log_w += np.log(pr[:, root]) - np.log(grammar.root_prior[root])[None, :]
        leaves = symbols[-1]
        for i in range(grammar.d):
            log_w += log_lik[:, i, leaves[:, i]]
        for lev, ev in (internal_evidence or {}).items():
            ev = np.log(np.asarray(ev, dtype=np.float64))
            for i in range(grammar.n_nodes(lev)):
                log_w += ev[:, i, symbols[lev][:, i]]
        map_lp = log_w.max(1)
        shift = np.where(np.isfinite(map_lp), map_lp, 0.0)
        w = np.exp(log_w - shift[:, None])
        z = w.sum(1)
        log_ev = np.log(z) + shift
    marginals = []
    for lev in range(grammar.L + 1):
        n, v = grammar.n_nodes(lev), grammar.vocab_sizes[lev]
        m = np.zeros((b, n, v))
        for i in range(n):
            for a in range(v):
                m[:, i, a] = w[:, symbols[lev][:, i] == a].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            marginals.append(m / z[:, None, None])
    return {"marginals": marginals, "log_evidence": log_ev, "map_log_prob": map_lp}
