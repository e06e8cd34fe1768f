"""The compiled BP kernel (engine="kernel") against brute force and the array engine.

Same grammar zoo as tests/test_bp.py. float64 messages are exact to ~1e-12; float32 messages
(float64 log_z accumulation) to the tolerances stated below and in docs/performance.md.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from conftest import BP_GRAMMAR_ZOO, assert_generable, assert_sample_frequencies  # noqa: E402
from hiergen import RHM, BeliefPropagation  # noqa: E402
from hiergen.inference.bruteforce import brute_force_posterior  # noqa: E402
from hiergen.models.errors import BackendError, InconsistentEvidenceError  # noqa: E402
from hiergen.models.noise import GaussianDiffusion, UniformCorruption  # noqa: E402

GRAMMARS = BP_GRAMMAR_ZOO
# float32 messages: stated accuracy of marginals (absolute) and log-evidence (absolute)
F32_MARG, F32_LOGEV = 2e-5, 2e-4


def _likelihood(grammar, batch, seed):
    rng = np.random.default_rng(seed)
    lik = rng.random((batch, grammar.d, grammar.vocab_sizes[-1])) ** 3
    x = grammar.sample(batch, seed=seed + 1).leaves
    lik[rng.random(lik.shape) < 0.2] = 0.0  # zero likelihoods (ragged support)
    np.put_along_axis(lik, x[..., None], 1.0, axis=-1)  # keep a datum consistent
    return lik


def _brute_force(g, lik, prior=None, internal_evidence=None):
    """Brute force item by item (it takes one prior per call)."""
    if prior is None:
        return brute_force_posterior(g, lik)
    refs = [
        brute_force_posterior(g, lik[i:i + 1], prior=prior[i],
                              internal_evidence={k: e[i:i + 1] for k, e in internal_evidence.items()})
        for i in range(lik.shape[0])
    ]
    return {
        "log_evidence": np.concatenate([r["log_evidence"] for r in refs]),
        "marginals": [np.concatenate([r["marginals"][lev] for r in refs]) for lev in range(g.L + 1)],
    }


def _kernel(g, **kw):
    bp = BeliefPropagation(g, engine="kernel", **kw)
    assert bp.engine == "kernel"
    return bp


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_kernel_matches_brute_force_and_array_engine(name):
    g = GRAMMARS[name]()
    rng = np.random.default_rng(4)
    lik = _likelihood(g, 5, seed=1)
    prior = rng.dirichlet(np.ones(g.n_classes), size=5)  # per-item prior override
    internal = {lev: rng.random((5, g.n_nodes(lev), g.vocab_sizes[lev])) + 0.05 for lev in range(g.L + 1)}
    with np.errstate(divide="ignore"):
        log_lik = np.log(lik)
    for kw in ({}, {"prior": prior, "internal_evidence": internal}):
        ref = _brute_force(g, lik, **kw)
        arr = BeliefPropagation(g, engine="array").run(lik, **kw)
        for dtype, tol, tol_ev in (("float64", 1e-12, 1e-10), ("float32", F32_MARG, F32_LOGEV)):
            bp = _kernel(g, dtype=dtype)
            for ev, log in ((lik, False), (log_lik, True)):
                post = bp.run(ev, log=log, **kw)
                assert post.extra["engine"] == "kernel" and post.dtype == dtype
                np.testing.assert_allclose(post.log_evidence, ref["log_evidence"], rtol=0, atol=tol_ev)
                for lev in range(g.L + 1):
                    assert post.marginals[lev].shape == (5, g.n_nodes(lev), g.vocab_sizes[lev])
                    np.testing.assert_allclose(post.marginals[lev], ref["marginals"][lev], atol=tol)
                    if dtype == "float64":
                        np.testing.assert_allclose(post.marginals[lev], arr.marginals[lev], atol=1e-12)


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_kernel_map_matches_brute_force(name):
    g = GRAMMARS[name]()
    lik = _likelihood(g, 5, seed=3)
    ref = brute_force_posterior(g, lik)
    arr = BeliefPropagation(g, engine="array").map(lik)
    for dtype, tol in (("float64", 1e-10), ("float32", F32_LOGEV)):
        est = _kernel(g, dtype=dtype).map(lik)
        np.testing.assert_allclose(est.log_prob, ref["map_log_prob"], atol=tol)
        assert_generable(g, est.tree, lik)
        if dtype == "float64":  # same tie-breaking (first best rule) as the array engine
            for a, b in zip(est.tree.symbols, arr.tree.symbols):
                np.testing.assert_array_equal(a, b)




@pytest.mark.parametrize("name", ["ambiguous-mixed-branching", "rhm-s3", "nonuniform-deep", "branching-one"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kernel_samples_match_marginals(name, dtype):
    g = GRAMMARS[name]()
    n = 6000
    lik = np.repeat(_likelihood(g, 1, seed=8), n, axis=0)
    prior = np.random.default_rng(1).dirichlet(np.ones(g.n_classes))
    bp = _kernel(g, dtype=dtype)
    tree = bp.sample(lik, seed=123, prior=prior)
    assert_generable(g, tree, lik)
    marg = brute_force_posterior(g, lik[:1], prior=prior)["marginals"]
    assert_sample_frequencies(g, tree, marg, n)


def test_kernel_samples_seeded_thread_independent_and_run_and_sample_agrees():
    g = RHM(v=6, n_classes=3, m=3, s=2, L=4, seed=0)
    x = g.sample(61, seed=0)
    ev = UniformCorruption(6).evidence(x.leaves, 0.5)
    one = BeliefPropagation(g, threads=1).sample(ev, seed=3)
    three = BeliefPropagation(g, threads=3).sample(ev, seed=3)
    other = BeliefPropagation(g, threads=3).sample(ev, seed=4)
    post, both = BeliefPropagation(g, threads=2).run_and_sample(ev, seed=3)
    for a, b, c in zip(one.symbols, three.symbols, both.symbols):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert not all(np.array_equal(a, b) for a, b in zip(one.symbols, other.symbols))
    ref = BeliefPropagation(g).run(ev)
    for a, b in zip(post.marginals, ref.marginals):
        np.testing.assert_array_equal(a, b)


def test_kernel_deep_float32_against_float64_and_sharp_evidence():
    g = RHM(v=8, n_classes=4, m=3, s=2, L=7, seed=0)  # d = 128 leaves, long rows
    x = g.sample(40, seed=0)
    ev = GaussianDiffusion(8).evidence(x.leaves, 400, seed=1)
    f64 = BeliefPropagation(g, engine="array").run(ev)
    f32 = _kernel(g, dtype="float32").run(ev)
    assert f32.marginals[0].dtype == np.float32
    np.testing.assert_allclose(f32.log_evidence, f64.log_evidence, rtol=0, atol=F32_LOGEV)
    for a, b in zip(f32.marginals, f64.marginals):
        np.testing.assert_allclose(a, b, atol=F32_MARG)
    sharp = _kernel(g, dtype="float32").run(GaussianDiffusion(8).evidence(x.leaves, 1, seed=0))
    assert np.all(np.isfinite(sharp.log_evidence))
    for lev, p in enumerate(sharp.prob_of(x.symbols)):
        assert np.all(p > 0.999), lev


def test_fast_exp_matches_libm():
    from hiergen.inference.bp_kernel import _exp32

    t = np.concatenate([np.linspace(-87.0, 0.0, 200001), [-87.5, -1e4, -np.inf]]).astype(np.float32)
    ref = np.exp(t.astype(np.float64))
    out = t.copy()
    _exp32(out, np.empty(t.shape, np.int32))
    ok = ref > 1e-37
    assert np.max(np.abs(out[ok] - ref[ok]) / ref[ok]) < 3e-7
    assert np.all(out[-3:] == 0.0)


def test_kernel_inconsistent_and_bad_engine():
    g = RHM(v=4, n_classes=2, m=1, s=2, L=2, seed=0)
    zero = np.ones((3, g.d, 4))
    zero[1, 0] = 0.0
    with pytest.raises(InconsistentEvidenceError, match=r"\[1\]"):
        _kernel(g).run(zero)
    post = _kernel(g, on_inconsistent="flag").run(zero)
    assert post.inconsistent.tolist() == [False, True, False]
    assert np.isnan(post.marginals[2][1]).all() and post.log_evidence[1] == -np.inf
    assert np.isfinite(post.marginals[2][[0, 2]]).all()
    with pytest.raises(InconsistentEvidenceError):
        _kernel(g).sample(zero, seed=0)
    with pytest.raises(BackendError, match="engine"):
        BeliefPropagation(g, engine="fast")
    with pytest.raises(BackendError, match="numpy backend only"):
        BeliefPropagation(g, backend="torch", engine="kernel")
    assert BeliefPropagation(g).engine == "kernel"
    assert BeliefPropagation(g, engine="array").engine == "array"
