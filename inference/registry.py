"""One call for every inference backend: ``run(grammar, evidence, backend="pgmpy")``.

Every backend answers the same question — the posterior of the latent tree given leaf
evidence — and returns the same :class:`~hiergen.inference.bp.Posterior` as
:meth:`BeliefPropagation.run <hiergen.inference.bp.BeliefPropagation.run>`: marginals per
level ``(batch, n_l, v_l)``, the log-evidence ``(batch,)`` (NaN where a method has none; the
ELBO, a lower bound, for mean-field VI), the wall time in ``seconds`` and method-specific
details in ``extra``.

Backends are registered by name with a *lazy* factory (``"module:attribute"``), so the heavy
libraries behind them (pgmpy, JAX/NumPyro) load only when a backend is used:

========================  ==============================================================
``"bp"``                  exact belief propagation (:class:`BeliefPropagation`, numpy)
``"bruteforce"``          enumeration of every latent tree (tiny grammars; the oracle)
``"pgmpy"``               pgmpy exact inference (variable elimination by default)
``"numpyro"``             NumPyro enumeration of the discrete sites (funsor), exact
``"numpyro-sample"``      exact posterior samples via NumPyro ``infer_discrete``
``"mcmc"``                Gibbs sampling over the latent tree (JAX), several chains
``"meanfield-vi"``        naive mean-field variational inference (approximate)
========================  ==============================================================
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hiergen.models.errors import BackendError, EvidenceError
from hiergen.models.grammar import Grammar
from hiergen.models.noise import Evidence

# name -> (factory "module:attribute", kind, one-line description)
_REGISTRY: dict[str, tuple[Any, str, str]] = {}


def register_backend(
    name: str,
    factory: str | Callable[..., Any],
    kind: str = "exact",
    description: str = "",
    overwrite: bool = False,
) -> None:
    """Register a backend under ``name``.

    ``factory`` is a callable ``factory(grammar, **options)`` returning an object with
    ``run(evidence, log=None) -> Posterior``, or a lazy ``"module:attribute"`` string naming
    such a callable. ``kind`` is ``"exact"``, ``"sampling"`` or ``"approximate"`` (used by
    the comparison table).
    """
    if not isinstance(name, str) or not name:
        raise BackendError(f"backend name must be a non-empty string, got {name!r}")
    if kind not in ("exact", "sampling", "approximate"):
        raise BackendError(f"backend kind must be exact, sampling or approximate, got {kind!r}")
    if name in _REGISTRY and not overwrite:
        raise BackendError(f"backend {name!r} is already registered (pass overwrite=True)")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise BackendError(f"factory of {name!r} must be callable or 'module:attribute'")
    _REGISTRY[name] = (factory, kind, description)


def available_backends() -> list[str]:
    """Names of the registered backends, in registration order."""
    return list(_REGISTRY)


def backend_kind(name: str) -> str:
    """``"exact"``, ``"sampling"`` or ``"approximate"``."""
    return _lookup(name)[1]


def describe_backends() -> dict[str, str]:
    """``{name: one-line description}``."""
    return {k: v[2] for k, v in _REGISTRY.items()}


def _lookup(name: str) -> tuple[Any, str, str]:
    if name not in _REGISTRY:
        raise BackendError(
            f"unknown inference backend {name!r}; available: {', '.join(available_backends())}"
        )
    return _REGISTRY[name]


def get_backend(name: str, grammar: Grammar, **options: Any) -> Any:
    """Instantiate backend ``name`` on ``grammar`` (an object with ``run(evidence, log=)``)."""
    factory = _lookup(name)[0]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise BackendError(
                f"backend {name!r} needs an optional dependency that is missing: {exc}"
            ) from exc
    return factory(grammar, **options)


def run(grammar: Grammar, evidence: Any, backend: str = "bp", *, log: bool | None = None,
        **options: Any) -> Any:
    """Posterior of the latent tree with the chosen backend.

    Parameters
    ----------
    grammar : the grammar.
    evidence : :class:`~hiergen.models.noise.Evidence` or leaf likelihoods ``(B, d, v_L)``
        (``(d, v_L)`` for one item); ``log=True`` when they are log-likelihoods.
    backend : a name from :func:`available_backends`.
    **options : passed to the backend's constructor (e.g. ``num_samples``, ``seed``,
        ``algorithm``, ``dtype``).

    Returns
    -------
    :class:`~hiergen.inference.bp.Posterior`; ``seconds`` is the wall time of this call
    (construction included), ``extra["backend_name"]`` the registry name.
    """
    if not isinstance(grammar, Grammar):
        raise BackendError(f"run() needs a Grammar, got {type(grammar).__name__}")
    t0 = time.perf_counter()
    impl = get_backend(backend, grammar, **options)
    post = impl.run(evidence, log=log)
    post.seconds = time.perf_counter() - t0
    post.extra["backend_name"] = backend
    return post


def as_log_likelihood(grammar: Grammar, evidence: Any, log: bool | None = None) -> np.ndarray:
    """Validate evidence and return leaf log-likelihoods ``(B, d, v_L)`` float64 (numpy).

    Accepts an :class:`Evidence`, or a likelihood (``log=False``/``None``) or log-likelihood
    (``log=True``) array ``(B, d, v_L)`` / ``(d, v_L)``. ``-inf`` marks impossible symbols.
    """
    is_log = bool(log)
    if isinstance(evidence, Evidence):
        if log is False:
            raise EvidenceError("an Evidence object holds log-likelihoods; do not pass log=False")
        evidence, is_log = evidence.log_lik, True
    if type(evidence).__module__.startswith(("torch", "jax")):
        evidence = np.asarray(evidence.tolist() if hasattr(evidence, "tolist") else evidence)
    arr = np.asarray(evidence)
    if arr.ndim == 2:
        arr = arr[None]
    want = (grammar.d, grammar.vocab_sizes[-1])
    if arr.ndim != 3 or arr.shape[1:] != want:
        raise EvidenceError(
            f"evidence must have shape (batch, d, v_L) = (batch, {want[0]}, {want[1]}), "
            f"got {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise EvidenceError(f"evidence must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        items = np.unique(np.nonzero(np.isnan(arr))[0]).tolist()
        raise EvidenceError(f"evidence contains NaN (batch items {items[:20]})")
    if is_log:
        if np.isposinf(arr).any():
            raise EvidenceError("log-evidence contains +inf")
        return arr
    if np.isinf(arr).any() or (arr < 0).any():
        raise EvidenceError(
            "likelihood evidence must be finite and >= 0 (pass log=True for log-likelihoods)"
        )
    with np.errstate(divide="ignore"):
        return np.log(arr)


def normalised_likelihood(log_lik: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leaf likelihoods scaled to a maximum of 1 per leaf, and the log of the scales.

    Returns ``(lik (B, d, v), log_scale (B,))`` with
    ``log_lik = log(lik) + log_scale_per_leaf`` summed into ``log_scale``; items whose leaf is
    impossible everywhere keep an all-zero row and ``log_scale = -inf``.
    """
    mx = log_lik.max(-1, keepdims=True)
    finite = np.isfinite(mx)
    safe = np.where(finite, mx, 0.0)
    lik = np.exp(log_lik - safe)
    lik = np.where(finite, lik, 0.0)
    log_scale = np.where(finite[..., 0], safe[..., 0], -np.inf).sum(-1)
    return lik, log_scale


class BruteForce:
    """Registry adapter of :func:`~hiergen.inference.bruteforce.brute_force_posterior`."""

    def __init__(self, grammar: Grammar, max_trees: int = 200_000) -> None:
        from hiergen.inference.bruteforce import enumerate_trees

        self.grammar = grammar
        self.trees = enumerate_trees(grammar, max_trees=max_trees)  # SizeLimitError if too many

    def run(self, evidence: Any, log: bool | None = None) -> Any:
        from hiergen.inference.bp import Posterior
        from hiergen.inference.bruteforce import brute_force_posterior

        t0 = time.perf_counter()
        lik, log_scale = normalised_likelihood(as_log_likelihood(self.grammar, evidence, log))
        ref = brute_force_posterior(self.grammar, lik, trees=self.trees)
        log_ev = ref["log_evidence"] + log_scale
        bad = ~np.isfinite(log_ev)
        return Posterior(
            marginals=ref["marginals"], log_evidence=log_ev, inconsistent=bad,
            backend="bruteforce", seconds=time.perf_counter() - t0,
            extra={"n_trees": int(len(self.trees[1]))},
        )


register_backend("bp", "hiergen.inference.bp:BeliefPropagation", "exact",
                 "exact belief propagation (numpy/JAX/torch array backends)")
register_backend("bruteforce", BruteForce, "exact",
                 "enumeration of every latent tree (tiny grammars only)")
register_backend("pgmpy", "hiergen.inference.pgmpy_backend:PgmpyInference", "exact",
                 "pgmpy exact inference (variable elimination by default)")
register_backend("numpyro", "hiergen.inference.numpyro_backend:NumPyroEnumeration", "exact",
                 "NumPyro/funsor enumeration of the discrete sites")
register_backend("numpyro-sample", "hiergen.inference.numpyro_backend:NumPyroDiscreteSampler",
                 "sampling", "exact posterior samples with NumPyro infer_discrete")
register_backend("mcmc", "hiergen.inference.numpyro_backend:GibbsSampler", "sampling",
                 "Gibbs sampling over the root and rule choices (JAX, several chains)")
register_backend("meanfield-vi", "hiergen.inference.meanfield_vi:MeanFieldVI", "approximate",
                 "naive mean-field VI (coordinate ascent), approximate")

__all__ = [
    "run",
    "BruteForce",
    "register_backend",
    "available_backends",
    "backend_kind",
    "describe_backends",
    "get_backend",
    "as_log_likelihood",
    "normalised_likelihood",
]
