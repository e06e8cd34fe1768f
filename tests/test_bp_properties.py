"""Property-based tests of belief propagation's evidence handling (hypothesis).

Random small grammars x random evidence (shapes, dtypes float32/float64/int, numpy / list /
torch / JAX, likelihood or log-likelihood, scales from 1e-300 to 1e308, hard zeros,
poisoned entries NaN / inf / negative). Every case must either

- raise a :class:`HiergenError` of the expected type (bad values or shapes:
  :class:`EvidenceError`; evidence no tree explains, in raise mode:
  :class:`InconsistentEvidenceError` naming exactly those items), or
- agree with log-domain brute-force enumeration: float64 to 1e-9, float32 to 1e-4
  (marginals absolute, log-evidence relative+absolute); flagged items exactly those with
  zero evidence, never a NaN elsewhere; MAP trees with the optimal joint probability,
  sampled trees generable and supported by the evidence, ``-1`` trees for flagged items.

Runs derandomized (fixed examples, reproducible CI) in well under a minute.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import random_grammar
from hiergen import BeliefPropagation
from hiergen.inference.bruteforce import brute_force_posterior, enumerate_trees
from hiergen.models.errors import EvidenceError, HiergenError, InconsistentEvidenceError

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TOL = {"float64": (1e-9, 1e-9), "float32": (1e-4, 1e-4)}  # (marginals atol, log-evidence rtol/atol)


# ----------------------------------------------------------------------------- grammars
@functools.cache
def _grammar(spec: tuple) -> tuple:
    vocab, branching, max_rules, seed = spec
    g = random_grammar(vocab, branching, max_rules, seed=seed)
    return g, enumerate_trees(g)


@st.composite
def grammar_specs(draw) -> tuple:
    depth = draw(st.integers(1, 2))
    vocab = tuple(draw(st.integers(2, 3)) for _ in range(depth + 1))
    branching = tuple(draw(st.integers(1, 2)) for _ in range(depth))
    return vocab, branching, draw(st.integers(1, 3)), draw(st.integers(0, 3))


# ----------------------------------------------------------------------------- evidence
def _to_lib(x: np.ndarray, lib: str):
    if lib == "list":
        return x.tolist()
    if lib == "torch":
        import torch

        return torch.as_tensor(x)
    if lib == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # keep float64 input float64
        import jax.numpy as jnp

        return jnp.asarray(x)
    return x


@st.composite
def evidence_cases(draw, g, libs: tuple[str, ...], compute: str) -> dict:
    """Evidence for grammar ``g``: the array as given, its exact float64 values and what
    should happen (``error``: an EvidenceError is expected)."""
    lib = draw(st.sampled_from(libs))
    dtype = draw(st.sampled_from(["float64", "float32", "int64"]))
    is_log = draw(st.booleans())
    batch = draw(st.integers(0, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from(["unit", "huge", "tiny", "mixed"]))
    zero_frac = draw(st.sampled_from([0.0, 0.2, 0.5]))
    poison = draw(st.sampled_from([None] * 9 + ["nan", "posinf", "neginf", "negative", "shape"]))
    shape = (batch, g.d, g.vocab_sizes[-1])
    narrow = compute == "float32" or dtype != "float64"
    k = 3.0 if narrow else 20.0  # within-row dynamic range 10**k (float32 cannot hold more)
    mant = 10.0 ** (-k * rng.random(shape))
    mant[rng.random(shape) < zero_frac] = 0.0
    top = 30.0 if dtype == "float32" and not is_log else 300.0
    low = -270.0 if lib == "jax" and not is_log else -top  # XLA flushes subnormals to zero
    e = {"unit": np.zeros(shape[:2]), "huge": np.full(shape[:2], top if is_log or dtype != "float64" else 307.0),
         "tiny": np.full(shape[:2], low), "mixed": rng.uniform(low, top, shape[:2])}[scale][..., None]
    with np.errstate(divide="ignore"):
        if dtype == "int64":
            ev = np.round(np.log(mant) * 3) if is_log else np.round(mant * 1000)
            ev = np.where(np.isfinite(ev), ev, -50).astype(np.int64)
        else:
            ev = (np.log(mant) + e * np.log(10.0)) if is_log else mant * 10.0**e
            ev = ev.astype(dtype)
    error = False
    if poison == "shape":
        ev = np.concatenate([ev, ev[:, :1]], axis=1)
        error = True
    elif poison and batch:
        if dtype == "int64":
            poison = "negative"
        idx = (rng.integers(batch), rng.integers(g.d), rng.integers(g.vocab_sizes[-1]))
        ev[idx] = {"nan": np.nan, "posinf": np.inf, "neginf": -np.inf, "negative": -1}[poison]
        error = poison in ("nan", "posinf") or not is_log  # -inf / negative are valid logs
    if lib == "list" and batch == 0:
        error = True  # [] has no shape to check: a shape error
    truth = ev.astype(np.float64)
    if not is_log:
        truth = np.where(truth < 0, 0.0, truth)  # (only used when no error is expected)
    use_prior = draw(st.booleans())
    prior = None
    if use_prior and not error:
        prior = rng.dirichlet(np.ones(g.n_classes))
        prior[rng.random(g.n_classes) < 0.3] = 0.0
        prior = prior / prior.sum() if prior.sum() > 0 else np.eye(g.n_classes)[0]
    return {"given": _to_lib(ev, lib), "truth": truth, "log": is_log, "error": error, "prior": prior}


# ----------------------------------------------------------------------------- checks
def _tree_log_prob(g, tree, b: int, truth: np.ndarray, is_log: bool, prior) -> float:
    """Independent ``log p(tree, evidence)`` of item ``b`` of a decoded tree."""
    root_prior = g.root_prior if prior is None else prior
    with np.errstate(divide="ignore"):
        lp = np.log(root_prior[tree.symbols[0][b, 0]])
        for lev in range(g.L):
            lp += np.log(g.probs[lev][tree.symbols[lev][b], tree.rules[lev][b]]).sum()
        leaf = truth[b, np.arange(g.d), tree.leaves[b]]
        return float(lp + (leaf.sum() if is_log else np.log(leaf).sum()))


def _generable(g, tree, ok: np.ndarray) -> None:
    for lev in range(g.L):
        parent, rule = tree.symbols[lev][ok], tree.rules[lev][ok]
        assert np.all(g.probs[lev][parent, rule] > 0)
        kids = g.children[lev][parent, rule].reshape(parent.shape[0], tree.symbols[lev + 1].shape[1])
        np.testing.assert_array_equal(kids, tree.symbols[lev + 1][ok])


def _check(bp: BeliefPropagation, g, trees, case: dict, seed: int, dtype: str) -> None:
    kw = {"log": case["log"], "prior": case["prior"]}
    calls = {"run": lambda: bp.run(case["given"], **kw), "map": lambda: bp.map(case["given"], **kw),
             "sample": lambda: bp.sample(case["given"], seed, **kw)}
    if case["error"]:
        event("bad input: EvidenceError")
        for call in calls.values():
            with pytest.raises(EvidenceError) as info:
                call()
            assert not isinstance(info.value, InconsistentEvidenceError)
        return
    ref = brute_force_posterior(g, case["truth"], prior=case["prior"], trees=trees, log=case["log"])
    bad = ~np.isfinite(ref["log_evidence"])
    event(f"{int(bad.sum())} of {len(bad)} items inconsistent, {bp.on_inconsistent}")
    if bp.on_inconsistent == "raise" and bad.any():
        for call in calls.values():
            with pytest.raises(InconsistentEvidenceError) as info:
                call()
            assert info.value.items == np.flatnonzero(bad).tolist()
        return
    ok = ~bad
    atol, ltol = TOL[dtype]
    post = calls["run"]()
    np.testing.assert_array_equal(post.inconsistent, bad)
    assert np.all(post.log_evidence[bad] == -np.inf)
    np.testing.assert_allclose(post.log_evidence[ok], ref["log_evidence"][ok], rtol=ltol, atol=ltol)
    for lev in range(g.L + 1):
        assert not np.isnan(post.marginals[lev][ok]).any()
        np.testing.assert_allclose(post.marginals[lev][ok], ref["marginals"][lev][ok], atol=atol)
    est = calls["map"]()
    np.testing.assert_array_equal(est.inconsistent, bad)
    np.testing.assert_allclose(est.log_prob[ok], ref["map_log_prob"][ok], rtol=ltol, atol=ltol)
    for b in np.flatnonzero(ok):
        lp = _tree_log_prob(g, est.tree, b, case["truth"], case["log"], case["prior"])
        np.testing.assert_allclose(lp, ref["map_log_prob"][b], rtol=ltol, atol=ltol)
    tree = calls["sample"]()
    np.testing.assert_array_equal(tree.inconsistent, bad)
    for t in (tree, est.tree):
        _generable(g, t, ok)
        for x in t.symbols + t.rules:
            assert np.all(x[bad] == -1) and np.all(x[ok] >= 0)
    support = np.take_along_axis(case["truth"][ok], tree.leaves[ok][..., None], -1)
    assert np.all(support > (-np.inf if case["log"] else 0))


@functools.cache
def _bp(spec: tuple, backend: str, dtype: str, mode: str) -> BeliefPropagation:
    """One instance per configuration (JAX compiles once per instance and shape)."""
    return BeliefPropagation(_grammar(spec)[0], backend=backend, dtype=dtype, on_inconsistent=mode,
                             batch_chunk=2)


def _run_case(spec: tuple, backend: str, dtype: str, mode: str, case: dict, seed: int) -> None:
    g, trees = _grammar(spec)
    bp = _bp(spec, backend, dtype, mode)
    try:
        _check(bp, g, trees, case, seed, dtype)
    except HiergenError as exc:  # an unexpected hiergen error is a failure too, with context
        raise AssertionError(f"unexpected {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- properties
@SETTINGS
@given(data=st.data(), spec=grammar_specs(), dtype=st.sampled_from(["float64", "float32"]),
       mode=st.sampled_from(["raise", "flag"]))
def test_numpy_and_list_evidence_property(data, spec, dtype, mode):
    g = _grammar(spec)[0]
    case = data.draw(evidence_cases(g, ("numpy", "list"), dtype))
    _run_case(spec, "numpy", dtype, mode, case, seed=data.draw(st.integers(0, 99)))


@SETTINGS
@given(data=st.data(), spec=grammar_specs(), dtype=st.sampled_from(["float64", "float32"]),
       mode=st.sampled_from(["raise", "flag"]))
def test_torch_evidence_property(data, spec, dtype, mode):
    pytest.importorskip("torch")
    g = _grammar(spec)[0]
    case = data.draw(evidence_cases(g, ("torch",), dtype))
    backend = data.draw(st.sampled_from(["torch", "torch", "numpy"]))
    _run_case(spec, backend, dtype, mode, case, seed=data.draw(st.integers(0, 99)))


@settings(SETTINGS, max_examples=40)
@given(data=st.data(), spec=grammar_specs(), dtype=st.sampled_from(["float64", "float32"]),
       mode=st.sampled_from(["raise", "flag"]))
def test_jax_evidence_property(data, spec, dtype, mode):
    """JAX arrays are validated with JAX ops; the numpy backend keeps this fast (no jit)."""
    pytest.importorskip("jax")
    g = _grammar(spec)[0]
    case = data.draw(evidence_cases(g, ("jax",), dtype))
    _run_case(spec, "numpy", dtype, mode, case, seed=data.draw(st.integers(0, 99)))


@pytest.mark.slow
@settings(SETTINGS, max_examples=12)
@given(data=st.data(), dtype=st.sampled_from(["float64", "float32"]))
def test_jax_backend_property(data, dtype):
    """The JAX backend itself (jit compiles per grammar and shape: one fixed grammar)."""
    pytest.importorskip("jax")
    spec = ((2, 3, 2), (2, 2), 2, 1)
    case = data.draw(evidence_cases(_grammar(spec)[0], ("jax", "numpy"), dtype))
    _run_case(spec, "jax", dtype, "flag", case, seed=0)
