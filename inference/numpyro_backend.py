"""NumPyro / JAX backends: exact enumeration, exact posterior samples, Gibbs MCMC.

All three use the NumPyro formulation of :mod:`hiergen.models.numpyro_model` (root ``x_0``,
one rule choice ``r_l`` per node, children ``x_{l+1}``, leaves observed through the
evidence) and return a :class:`~hiergen.inference.bp.Posterior`:

:class:`NumPyroEnumeration` (``"numpyro"``, exact)
    ``log p(evidence)`` by funsor enumeration of every discrete site
    (``numpyro.contrib.funsor.log_density`` of ``enum(config_enumerate(model))``); the
    marginals of level ``l`` are the gradient of ``log p(evidence)`` with respect to an
    internal log-evidence ``theta_l`` at zero (``d log Z / d theta_l[b, i, a] =
    p(x_{l,i} = a | evidence_b)``), one ``jax.grad`` for every level at once.
:class:`NumPyroDiscreteSampler` (``"numpyro-sample"``, sampling)
    exact posterior samples of the latent tree with ``numpyro.contrib.funsor.infer_discrete``
    (temperature 1); marginals are the empirical frequencies.
:class:`GibbsSampler` (``"mcmc"``, sampling)
    a JAX Gibbs sampler over the model's latent sites (class and rule choices): every sweep
    updates the class, then the rules of each level in turn — all nodes of a level in
    parallel, as they are conditionally independent — from their exact full conditionals.
    Several chains; an arviz ``InferenceData`` with R-hat and ESS in ``extra``.

The pure-numpy mean-field VI (``"meanfield-vi"``) lives in :mod:`hiergen.inference.meanfield_vi`;
:class:`MeanFieldVI` and ``LOG_FLOOR`` stay importable from here.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hiergen.inference.meanfield_vi import LOG_FLOOR, MeanFieldVI
from hiergen.inference.registry import as_log_likelihood
from hiergen.models._validate import check_int
from hiergen.models.errors import BackendError
from hiergen.models.grammar import Grammar
from hiergen.models.numpyro_model import (
    NEG,
    GrammarModel,
    check_enumeration_size,
    safe_log_lik,
)


def _enable_x64(dtype: str) -> None:
    if dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


def _check_dtype(dtype: str) -> str:
    if dtype not in ("float32", "float64"):
        raise BackendError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dtype


def _key(seed: Any) -> Any:
    import jax

    if isinstance(seed, (int, np.integer)):
        return jax.random.PRNGKey(int(seed))
    return seed


# ====================================================================== exact enumeration
class NumPyroEnumeration:
    """Exact marginals and log-evidence by NumPyro (funsor) enumeration.

    Parameters
    ----------
    grammar : the grammar.
    dtype : ``"float64"`` (default; enables JAX x64) or ``"float32"``.
    max_elements : refuse (SizeLimitError with the size) when an enumeration tensor would
        exceed this many elements, before allocating.
    batch_chunk : items per enumeration call (bounds memory; the batch is split).
    """

    def __init__(self, grammar: Grammar, dtype: str = "float64", max_elements: int = 20_000_000,
                 batch_chunk: int = 64) -> None:
        self.grammar = grammar
        self.dtype = _check_dtype(dtype)
        self.max_elements = check_int(max_elements, "max_elements", 1)
        self.batch_chunk = check_int(batch_chunk, "batch_chunk", 1)
        check_enumeration_size(grammar, 1, self.max_elements)
        _enable_x64(self.dtype)
        self.model = GrammarModel(grammar, dtype=self.dtype)
        self._fn: Any = None

    def _compiled(self) -> Any:
        if self._fn is None:
            import funsor
            import jax
            from numpyro.contrib.funsor import config_enumerate, enum
            from numpyro.contrib.funsor.infer_util import _enum_log_density

            model = self.model
            enum_model = enum(config_enumerate(model), first_available_dim=model.first_available_dim)

            def log_z(theta: list[Any], log_lik: Any) -> Any:
                # the lazy sum-product of numpyro.contrib.funsor.log_density, evaluated
                # eagerly in log space: its default optimizer contracts in probability
                # space (exp / einsum / log), where an all-zero slice becomes log(0) and
                # poisons the gradient (the marginals) with NaN
                lazy, _, _ = _enum_log_density(
                    enum_model, (log_lik,), {"theta": theta}, {},
                    funsor.ops.logaddexp, funsor.ops.add, apply_optimizer=False,
                )
                with funsor.interpretations.eager:
                    return funsor.reinterpret(lazy).data

            def per_item(theta: list[Any], log_lik: Any) -> Any:
                # one item: log Z and the gradient (marginals) of its internal evidence
                value, grads = jax.value_and_grad(log_z)(theta, log_lik)
                return value, grads

            def batched(theta: list[Any], log_lik: Any) -> Any:
                return jax.vmap(lambda t, e: per_item([x[None] for x in t], e[None]))(theta, log_lik)

            self._fn = jax.jit(batched)
        return self._fn

    def run(self, evidence: Any, log: bool | None = None) -> Any:
        """Exact posterior (float64 by default) as a :class:`Posterior`."""
        import jax.numpy as jnp

        from hiergen.inference.bp import Posterior

        t0 = time.perf_counter()
        g = self.grammar
        log_lik = as_log_likelihood(g, evidence, log)
        batch = log_lik.shape[0]
        chunk = max(1, min(self.batch_chunk, batch))
        check_enumeration_size(g, chunk, self.max_elements)
        fdt = jnp.float64 if self.dtype == "float64" else jnp.float32
        fn = self._compiled()
        out = [np.empty((batch, g.n_nodes(lev), g.vocab_sizes[lev])) for lev in range(g.L + 1)]
        log_ev = np.empty(batch)
        safe = safe_log_lik(log_lik)
        for start in range(0, batch, chunk):
            stop = min(batch, start + chunk)
            part = safe[start:stop]
            pad = chunk - (stop - start)
            if pad:  # one compiled shape for every chunk
                part = np.concatenate([part, np.repeat(part[:1], pad, 0)], 0)
            theta = [jnp.zeros((chunk, g.n_nodes(lev), g.vocab_sizes[lev]), fdt) for lev in range(g.L + 1)]
            value, grads = fn(theta, jnp.asarray(part, fdt))
            k = stop - start
            log_ev[start:stop] = np.asarray(value)[:k]
            for lev in range(g.L + 1):
                out[lev][start:stop] = np.asarray(grads[lev])[:k, 0]
        bad = ~(log_ev > 0.5 * NEG)  # only impossible configurations left
        log_ev[bad] = -np.inf
        for m in out:
            m[bad] = np.nan
        return Posterior(
            marginals=out, log_evidence=log_ev, inconsistent=bad, backend="numpyro-enum",
            dtype=self.dtype, device="cpu", seconds=time.perf_counter() - t0,
        )


# ====================================================================== infer_discrete samples
class NumPyroDiscreteSampler:
    """Exact posterior samples of the whole tree with NumPyro ``infer_discrete``.

    Marginals are the empirical symbol frequencies of ``num_samples`` draws per item (Monte
    Carlo error ~ ``sqrt(p (1 - p) / num_samples)``); ``extra["samples"]`` holds the drawn
    symbols per level ``(num_samples, B, n_l)``. No log-evidence (NaN).
    """

    def __init__(self, grammar: Grammar, num_samples: int = 1000, seed: int = 0,
                 dtype: str = "float64", max_elements: int = 20_000_000) -> None:
        self.grammar = grammar
        self.num_samples = check_int(num_samples, "num_samples", 1)
        self.seed = seed
        self.dtype = _check_dtype(dtype)
        self.max_elements = check_int(max_elements, "max_elements", 1)
        _enable_x64(self.dtype)
        self.model = GrammarModel(grammar, dtype=self.dtype)

    def sample(self, evidence: Any, log: bool | None = None) -> list[np.ndarray]:
        """Posterior draws per level: ``(num_samples, B, n_l)`` int64."""
        import jax
        import jax.numpy as jnp
        from numpyro import handlers
        from numpyro.contrib.funsor import config_enumerate, infer_discrete

        g = self.grammar
        log_lik = safe_log_lik(as_log_likelihood(g, evidence, log))
        check_enumeration_size(g, log_lik.shape[0], self.max_elements)
        fdt = jnp.float64 if self.dtype == "float64" else jnp.float32
        model = self.model
        names = [f"x_{lev}" for lev in range(g.L + 1)]

        def one(key: Any, ll: Any) -> list[Any]:
            k1, k2 = jax.random.split(key)
            sampler = infer_discrete(
                config_enumerate(model), first_available_dim=model.first_available_dim,
                temperature=1, rng_key=k1,
            )
            tr = handlers.trace(handlers.seed(sampler, k2)).get_trace(ll)
            return [tr[n]["value"] for n in names]

        draw = jax.jit(jax.vmap(one, in_axes=(0, None)))
        keys = jax.random.split(_key(self.seed), self.num_samples)
        values = draw(keys, jnp.asarray(log_lik, fdt))
        return [model.flatten_level(v, lev) for lev, v in enumerate(values)]

    def run(self, evidence: Any, log: bool | None = None) -> Any:
        from hiergen.inference.bp import Posterior

        t0 = time.perf_counter()
        draws = self.sample(evidence, log)
        g = self.grammar
        margs = [_frequencies(d, g.vocab_sizes[lev]) for lev, d in enumerate(draws)]
        batch = draws[0].shape[1]
        return Posterior(
            marginals=margs, log_evidence=np.full(batch, np.nan), inconsistent=np.zeros(batch, bool),
            backend="numpyro-infer_discrete", dtype=self.dtype, seconds=time.perf_counter() - t0,
            extra={"num_samples": self.num_samples, "samples": draws},
        )


def _frequencies(draws: np.ndarray, v: int) -> np.ndarray:
    """``(N, B, n)`` int draws -> ``(B, n, v)`` empirical frequencies."""
    counts = np.zeros(draws.shape[1:] + (v,))
    for a in range(v):
        counts[..., a] = (draws == a).sum(0)
    return counts / draws.shape[0]


# ====================================================================== Gibbs MCMC (JAX)
def _gibbs_tables(grammar: Grammar, dtype: Any) -> dict[str, Any]:
    import jax.numpy as jnp

    g = grammar
    with np.errstate(divide="ignore"):
        logp = [np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), NEG) for p in g.probs]
        prior = np.where(g.root_prior > 0, np.log(np.where(g.root_prior > 0, g.root_prior, 1.0)), NEG)
    return {
        "children": [jnp.asarray(c) for c in g.children],
        "logp": [jnp.asarray(x, dtype) for x in logp],
        "log_prior": jnp.asarray(prior, dtype),
    }


def _subtree_scores(grammar: Grammar, tables: dict[str, Any], level: int, sym: Any,
                    rules: list[Any], log_lik: Any) -> tuple[Any, list[Any]]:
    """Given the symbols ``sym`` (..., n_level) of one level and the rules of every level from
    ``level`` down, the log-weight of each node's subtree (its rule choices and its leaves'
    evidence), ``(..., n_level)``, and the symbols of the levels below (inclusive).

    ``rules[l]`` broadcast against ``(..., n_l)``; ``log_lik`` is ``(B, d, v_L)`` and the
    leading shape ends with the batch axis.
    """
    import jax.numpy as jnp

    g = grammar
    n_top = g.n_nodes(level)
    score = jnp.zeros(sym.shape, log_lik.dtype)
    syms = [sym]
    for lev in range(level, g.L):
        r = jnp.broadcast_to(rules[lev], sym.shape)
        lp = tables["logp"][lev][sym, r]  # (..., n_lev)
        score = score + lp.reshape(lp.shape[:-1] + (n_top, -1)).sum(-1)
        sym = tables["children"][lev][sym, r].reshape(sym.shape[:-1] + (-1,))
        syms.append(sym)
    ll = jnp.take_along_axis(jnp.broadcast_to(log_lik, sym.shape + log_lik.shape[-1:]),
                             sym[..., None], axis=-1)[..., 0]
    score = score + ll.reshape(ll.shape[:-1] + (n_top, -1)).sum(-1)
    return score, syms


def _gumbel_pick(key: Any, logits: Any) -> Any:
    """Categorical draw along axis 0 by Gumbel-max."""
    import jax

    return jax.numpy.argmax(logits + jax.random.gumbel(key, logits.shape, logits.dtype), axis=0)


class GibbsSampler:
    """Gibbs sampling over the NumPyro model's latent sites (class and rule choices), in JAX.

    One sweep draws the class from ``p(x_0 | rules, evidence)`` (the whole tree re-derived
    for each candidate class, keeping the rule indices), then for ``l = 0..L-1`` the rules of
    every node of level ``l`` from ``p(r_{l,i} | everything else)`` — all nodes of a level at
    once, since their subtrees are disjoint. Changing a high-level choice re-derives its whole
    subtree, so the chain is irreducible; with sharp evidence those moves are rarely accepted,
    which is the mixing problem the comparison shows.

    Parameters
    ----------
    num_samples, num_warmup : sweeps kept / discarded per chain.
    num_chains : independent chains, initialised from the prior (over-dispersed).
    seed : int or JAX key.
    dtype : ``"float64"`` (default) or ``"float32"``.

    ``run`` returns marginals (pooled symbol frequencies), NaN log-evidence, and in ``extra``:
    ``inference_data`` (arviz; posterior ``class`` and ``log_joint`` with dims chain, draw,
    item), ``rhat_class`` / ``ess_class`` (worst over items of R-hat / bulk ESS of the
    class indicators; NaN where every chain stayed on one class), ``rhat_log_joint`` /
    ``ess_log_joint`` per item.
    """

    def __init__(self, grammar: Grammar, num_samples: int = 500, num_warmup: int = 200,
                 num_chains: int = 4, seed: Any = 0, dtype: str = "float64") -> None:
        self.grammar = grammar
        self.num_samples = check_int(num_samples, "num_samples", 1)
        self.num_warmup = check_int(num_warmup, "num_warmup", 0)
        self.num_chains = check_int(num_chains, "num_chains", 1)
        self.seed = seed
        self.dtype = _check_dtype(dtype)
        _enable_x64(self.dtype)
        self._jitted: Any = None

    def _chain_fn(self) -> Any:
        """``jit(chain)(key, log_lik) -> (counts, classes, log_joint)``, compiled once per
        sampler (and per batch shape)."""
        if getattr(self, "_jitted", None) is not None:
            return self._jitted
        import jax
        import jax.numpy as jnp

        g = self.grammar
        L = g.L
        fdt = jnp.float64 if self.dtype == "float64" else jnp.float32
        tables = _gibbs_tables(g, fdt)
        ms = [int(c.shape[1]) for c in g.children]

        def sweep(state: tuple[Any, list[Any]], key: Any, log_lik: Any) -> tuple[Any, list[Any]]:
            root, rules = state  # root (C, B); rules[l] (C, B, n_l)
            keys = jax.random.split(key, L + 1)
            cand = jnp.arange(g.n_classes).reshape(-1, 1, 1, 1)  # (v0, 1, 1, 1)
            sc, _ = _subtree_scores(g, tables, 0, jnp.broadcast_to(cand, (g.n_classes,) + root.shape + (1,)),
                                    rules, log_lik)
            logits = sc[..., 0] + tables["log_prior"].reshape(-1, 1, 1)
            root = _gumbel_pick(keys[0], logits)
            sym = root[..., None]
            for lev in range(L):
                if ms[lev] > 1:
                    k = jnp.arange(ms[lev]).reshape(-1, 1, 1, 1)
                    rl = list(rules)
                    rl[lev] = k
                    symb = jnp.broadcast_to(sym, (ms[lev],) + sym.shape)
                    sc, _ = _subtree_scores(g, tables, lev, symb, rl, log_lik)
                    rules = list(rules)
                    rules[lev] = _gumbel_pick(keys[lev + 1], sc)
                sym = tables["children"][lev][sym, rules[lev]].reshape(sym.shape[:-1] + (-1,))
            return root, rules

        def observe(root: Any, rules: list[Any], log_lik: Any) -> tuple[Any, list[Any]]:
            sc, syms = _subtree_scores(g, tables, 0, root[..., None], rules, log_lik)
            return sc[..., 0] + tables["log_prior"][root], syms

        def init(key: Any, batch: int) -> tuple[Any, list[Any]]:
            c = self.num_chains
            keys = jax.random.split(key, L + 1)
            root = jax.random.categorical(keys[0], tables["log_prior"], shape=(c, batch))
            sym = root[..., None]
            rules = []
            for lev in range(L):
                r = jax.random.categorical(keys[lev + 1], tables["logp"][lev][sym])
                rules.append(r)
                sym = tables["children"][lev][sym, r].reshape(sym.shape[:-1] + (-1,))
            return root, rules

        def chain(key: Any, log_lik: Any) -> Any:
            batch = log_lik.shape[0]
            k0, k1, k2 = jax.random.split(key, 3)
            state = init(k0, batch)

            def warm(st: Any, k: Any) -> Any:
                return sweep(st, k, log_lik), None

            if self.num_warmup:
                state, _ = jax.lax.scan(warm, state, jax.random.split(k1, self.num_warmup))
            counts0 = [jnp.zeros((batch, g.n_nodes(lev), g.vocab_sizes[lev]), log_lik.dtype)
                       for lev in range(L + 1)]

            def step(carry: Any, k: Any) -> Any:
                st, counts = carry
                st = sweep(st, k, log_lik)
                lj, syms = observe(*st, log_lik)
                counts = [cn + jax.nn.one_hot(s, cn.shape[-1], dtype=cn.dtype).sum(0)
                          for cn, s in zip(counts, syms)]
                return (st, counts), (st[0], lj)

            (_, counts), (classes, log_joint) = jax.lax.scan(
                step, (state, counts0), jax.random.split(k2, self.num_samples))
            return counts, classes, log_joint

        self._jitted = jax.jit(chain)
        return self._jitted

    def run(self, evidence: Any, log: bool | None = None) -> Any:
        import warnings

        import jax.numpy as jnp

        from hiergen.inference.bp import Posterior

        t0 = time.perf_counter()
        g = self.grammar
        fdt = jnp.float64 if self.dtype == "float64" else jnp.float32
        log_lik = jnp.asarray(safe_log_lik(as_log_likelihood(g, evidence, log)), fdt)
        counts, classes, log_joint = self._chain_fn()(_key(self.seed), log_lik)
        total = self.num_chains * self.num_samples
        margs = [np.asarray(c, dtype=np.float64) / total for c in counts]
        classes = np.moveaxis(np.asarray(classes), 0, 1)  # (C, N, B)
        log_joint = np.moveaxis(np.asarray(log_joint), 0, 1)
        seconds = time.perf_counter() - t0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata, diag = _diagnostics(classes, log_joint, g.n_classes)
        batch = classes.shape[2]
        return Posterior(
            marginals=margs, log_evidence=np.full(batch, np.nan), inconsistent=np.zeros(batch, bool),
            backend="gibbs-jax", dtype=self.dtype, seconds=seconds,
            extra={"inference_data": idata, "num_chains": self.num_chains,
                   "num_samples": self.num_samples, "num_warmup": self.num_warmup, **diag},
        )


def _diagnostics(classes: np.ndarray, log_joint: np.ndarray, n_classes: int) -> tuple[Any, dict[str, Any]]:
    """arviz data (``InferenceData`` with arviz 0.x, ``xarray.DataTree`` with 1.x) of the class
    and log-joint traces ``(chain, draw, item)``, with
    R-hat and bulk ESS of the log-joint and of the class indicators (worst class per item)."""
    import arviz as az

    onehot = np.eye(n_classes)[classes]  # (C, N, B, K)
    posterior = {"class": classes, "log_joint": log_joint, "class_indicator": onehot}
    dims = {"class": ["item"], "log_joint": ["item"], "class_indicator": ["item", "class_value"]}
    if int(az.__version__.split(".")[0]) >= 1:
        # arviz 1.x: a dict of groups in, an xarray DataTree out (rhat/ess accept it)
        idata = az.from_dict({"posterior": posterior}, dims=dims)
    else:  # arviz 0.x: the posterior group as a keyword, an InferenceData out
        idata = az.from_dict(posterior=posterior, dims=dims)
    rhat = az.rhat(idata, var_names=["log_joint", "class_indicator"])
    ess = az.ess(idata, var_names=["log_joint", "class_indicator"], method="bulk")
    r_ind = np.asarray(rhat["class_indicator"])  # (B, K); NaN for constant indicators
    e_ind = np.asarray(ess["class_indicator"])
    with np.errstate(all="ignore"):
        rhat_class = np.array([np.nanmax(r) if np.isfinite(r).any() else np.nan for r in r_ind])
        ess_class = np.array([np.nanmin(e) if np.isfinite(e).any() else np.nan for e in e_ind])
    return idata, {
        "rhat_class": rhat_class,
        "ess_class": ess_class,
        "rhat_log_joint": np.asarray(rhat["log_joint"]),
        "ess_log_joint": np.asarray(ess["log_joint"]),
    }


# MeanFieldVI and LOG_FLOOR: re-exported from hiergen.inference.meanfield_vi (their old home)
__all__ = ["NumPyroEnumeration", "NumPyroDiscreteSampler", "GibbsSampler", "MeanFieldVI", "LOG_FLOOR"]
