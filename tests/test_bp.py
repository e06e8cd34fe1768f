"""Belief propagation against the brute-force oracle (every latent tree enumerated)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import BP_GRAMMAR_ZOO, assert_generable, assert_sample_frequencies
from hiergen import RHM, BeliefPropagation
from hiergen.inference.bruteforce import brute_force_posterior, enumerate_trees
from hiergen.models.errors import BackendError, EvidenceError, InconsistentEvidenceError
from hiergen.models.noise import GaussianDiffusion, UniformCorruption

GRAMMARS = BP_GRAMMAR_ZOO


def _random_likelihood(grammar, batch, seed, zeros=True):
    rng = np.random.default_rng(seed)
    lik = rng.random((batch, grammar.d, grammar.vocab_sizes[-1])) ** 3
    if zeros:
        x = grammar.sample(batch, seed=seed + 1).leaves
        lik[rng.random(lik.shape) < 0.2] = 0.0
        np.put_along_axis(lik, x[..., None], 1.0, axis=-1)  # keep a datum consistent
    return lik


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_marginals_and_log_evidence_match_brute_force(name):
    g = GRAMMARS[name]()
    lik = _random_likelihood(g, 6, seed=1)
    post = BeliefPropagation(g).run(lik)
    ref = brute_force_posterior(g, lik)
    np.testing.assert_allclose(post.log_evidence, ref["log_evidence"], rtol=0, atol=1e-10)
    for lev in range(g.L + 1):
        np.testing.assert_allclose(post.marginals[lev], ref["marginals"][lev], rtol=0, atol=1e-10)
        assert post.marginals[lev].shape == (6, g.n_nodes(lev), g.vocab_sizes[lev])


@pytest.mark.parametrize("name", ["ambiguous-mixed-branching", "rhm-s2"])
def test_prior_override_and_internal_evidence(name):
    g = GRAMMARS[name]()
    rng = np.random.default_rng(4)
    lik = _random_likelihood(g, 4, seed=9)
    prior = rng.dirichlet(np.ones(g.n_classes))
    internal = {1: rng.random((4, g.n_nodes(1), g.vocab_sizes[1])) + 0.05}
    post = BeliefPropagation(g).run(lik, prior=prior, internal_evidence=internal)
    ref = brute_force_posterior(g, lik, prior=prior, internal_evidence=internal)
    np.testing.assert_allclose(post.log_evidence, ref["log_evidence"], atol=1e-10)
    for lev in range(g.L + 1):
        np.testing.assert_allclose(post.marginals[lev], ref["marginals"][lev], atol=1e-10)


def test_class_conditional_prior_clamps_root():
    g = GRAMMARS["rhm-s2"]()
    lik = _random_likelihood(g, 3, seed=2, zeros=False)
    post = BeliefPropagation(g).run(lik, prior=np.array([0.0, 1.0]))
    np.testing.assert_allclose(post.class_probs, [[0.0, 1.0]] * 3, atol=1e-12)


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_map_matches_brute_force(name):
    g = GRAMMARS[name]()
    lik = _random_likelihood(g, 5, seed=3)
    est = BeliefPropagation(g).map(lik)
    ref = brute_force_posterior(g, lik)
    # brute-force max of prior x likelihood over trees
    np.testing.assert_allclose(est.log_prob, ref["map_log_prob"], atol=1e-10)
    assert_generable(g, est.tree, lik)




@pytest.mark.parametrize("name", ["ambiguous-mixed-branching", "rhm-s2", "nonuniform-deep"])
def test_posterior_samples_match_marginals(name):
    g = GRAMMARS[name]()
    n = 6000
    lik = np.repeat(_random_likelihood(g, 1, seed=8), n, axis=0)
    bp = BeliefPropagation(g)
    tree = bp.sample(lik, seed=123)
    assert_generable(g, tree, lik)
    marg = bp.run(lik[:1]).marginals
    assert_sample_frequencies(g, tree, marg, n)


def test_sampling_is_seeded():
    g = GRAMMARS["rhm-s2"]()
    lik = _random_likelihood(g, 50, seed=4, zeros=False)
    bp = BeliefPropagation(g)
    a, b, c = bp.sample(lik, seed=1), bp.sample(lik, seed=1), bp.sample(lik, seed=2)
    np.testing.assert_array_equal(a.leaves, b.leaves)
    assert not np.array_equal(a.leaves, c.leaves)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backends_agree_with_numpy(backend):
    g = GRAMMARS["ambiguous-mixed-branching"]()
    lik = _random_likelihood(g, 7, seed=6)
    ref = BeliefPropagation(g).run(lik)
    for dtype, tol in (("float64", 1e-10), ("float32", 2e-5)):
        post = BeliefPropagation(g, backend=backend, dtype=dtype, batch_chunk=3).run(lik)
        assert post.backend == backend
        np.testing.assert_allclose(post.log_evidence, ref.log_evidence, rtol=tol, atol=tol)
        for lev in range(g.L + 1):
            np.testing.assert_allclose(post.marginals[lev], ref.marginals[lev], atol=tol)
    bp = BeliefPropagation(g, backend=backend, dtype="float64")
    est = bp.map(lik)
    np.testing.assert_allclose(est.log_prob, BeliefPropagation(g).map(lik).log_prob, atol=1e-10)
    assert_generable(g, bp.sample(lik, seed=0), lik)


def test_torch_tensor_evidence_accepted():
    torch = pytest.importorskip("torch")
    g = GRAMMARS["rhm-s2"]()
    lik = _random_likelihood(g, 4, seed=6)
    post = BeliefPropagation(g, backend="torch", dtype="float64").run(torch.as_tensor(lik))
    np.testing.assert_allclose(post.log_evidence, BeliefPropagation(g).log_evidence(lik), atol=1e-10)


def test_chunking_does_not_change_results():
    g = RHM(v=6, n_classes=3, m=3, s=2, L=3, seed=0)
    x = g.sample(37, seed=0)
    ev = UniformCorruption(6).evidence(x.leaves, 0.6)
    a = BeliefPropagation(g).run(ev)
    b = BeliefPropagation(g, batch_chunk=5).run(ev)
    np.testing.assert_allclose(a.log_evidence, b.log_evidence, atol=1e-12)
    for ma, mb in zip(a.marginals, b.marginals):
        np.testing.assert_allclose(ma, mb, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sharp_and_flat_evidence_stay_finite(dtype):
    g = RHM(v=8, n_classes=4, m=2, s=2, L=4, seed=0)
    x = g.sample(20, seed=0)
    bp = BeliefPropagation(g, dtype=dtype)
    sharp = GaussianDiffusion(8).evidence(x.leaves, 1, seed=0)  # abar = 1 - 1e-4
    post = bp.run(sharp)
    assert np.all(np.isfinite(post.log_evidence))
    for lev, p in enumerate(post.prob_of(x.symbols)):
        assert np.all(p > 0.999), lev
    eps0 = bp.run(UniformCorruption(8).evidence(x.leaves, 0.0))
    assert np.allclose(eps0.prob_of(x.symbols)[0], 1.0)
    flat = bp.run(np.ones((3, g.d, 8)))
    ref = brute_force_posterior(g, np.ones((1, g.d, 8))) if g.n_derivations() < 2e5 else None
    assert np.all(np.isfinite(flat.log_evidence))
    np.testing.assert_allclose(flat.log_evidence, 0.0, atol=1e-5)  # likelihood 1 everywhere
    np.testing.assert_allclose(flat.class_probs, 0.25, atol=1e-6)
    assert ref is None or np.allclose(flat.marginals[1][0], ref["marginals"][1][0], atol=1e-6)


def test_inconsistent_evidence_raises_with_items_and_keeps_results():
    g = RHM(v=4, n_classes=2, m=1, s=2, L=2, seed=0)
    trees = enumerate_trees(g)
    seen = {tuple(x) for x in trees[0][-1]}
    bad_leaves = next(
        np.array(t) for t in np.ndindex(*(4,) * g.d) if tuple(t) not in seen
    )
    good = g.sample(3, seed=0).leaves
    leaves = np.concatenate([good[:2], bad_leaves[None], good[2:]])
    ev = np.eye(4)[leaves]  # exact evidence: item 2 is no datum of the grammar
    with pytest.raises(InconsistentEvidenceError, match=r"\[2\]") as info:
        BeliefPropagation(g).run(ev)
    assert info.value.items == [2]
    kept = info.value.posterior
    assert np.isfinite(kept.log_evidence[[0, 1, 3]]).all()
    post = BeliefPropagation(g, on_inconsistent="flag").run(ev)
    assert post.inconsistent.tolist() == [False, False, True, False]
    assert np.isnan(post.marginals[0][2]).all() and post.log_evidence[2] == -np.inf
    assert np.isfinite(post.marginals[0][[0, 1, 3]]).all()
    with pytest.raises(InconsistentEvidenceError):
        BeliefPropagation(g).sample(ev, seed=0)
    zero = np.ones((2, g.d, 4))
    zero[1, 0] = 0.0
    with pytest.raises(InconsistentEvidenceError, match=r"\[1\]"):
        BeliefPropagation(g).run(zero)


def test_bad_input_errors():
    g = RHM(v=4, n_classes=2, m=2, s=2, L=2, seed=0)
    bp = BeliefPropagation(g)
    with pytest.raises(EvidenceError, match="shape"):
        bp.run(np.ones((2, 3, 4)))
    with pytest.raises(EvidenceError, match="NaN"):
        bp.run(np.full((1, 4, 4), np.nan))
    with pytest.raises(EvidenceError, match=">= 0"):
        bp.run(-np.ones((1, 4, 4)))
    with pytest.raises(EvidenceError, match="prior"):
        bp.run(np.ones((1, 4, 4)), prior=[1.0])
    with pytest.raises(EvidenceError, match="internal_evidence"):
        bp.run(np.ones((1, 4, 4)), internal_evidence={5: np.ones((1, 1, 2))})
    with pytest.raises(BackendError, match="unknown BP backend"):
        BeliefPropagation(g, backend="tensorflow")
    with pytest.raises(BackendError, match="dtype"):
        BeliefPropagation(g, dtype="float16")
    with pytest.raises(EvidenceError, match="batch_chunk"):
        BeliefPropagation(g, batch_chunk=0)
    with pytest.raises(ValueError):  # hiergen errors are ValueErrors
        bp.run(np.ones((4, 4, 4, 4)))


def test_numpy_sampling_does_not_depend_on_thread_count():
    g = RHM(v=6, n_classes=3, m=3, s=2, L=3, seed=0)
    x = g.sample(50, seed=0)
    ev = UniformCorruption(6).evidence(x.leaves, 0.5)
    a = BeliefPropagation(g, batch_chunk=7, threads=1).sample(ev, seed=3)
    b = BeliefPropagation(g, batch_chunk=7, threads=3).sample(ev, seed=3)
    for sa, sb in zip(a.symbols, b.symbols):
        np.testing.assert_array_equal(sa, sb)
