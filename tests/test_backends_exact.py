"""Exact backends (BP, pgmpy, NumPyro enumeration) against brute-force enumeration."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from conftest import random_grammar
from hiergen import RHM
from hiergen.inference.registry import available_backends, run
from hiergen.models.errors import BackendError, EvidenceError, SizeLimitError
from hiergen.models.noise import Masking, UniformCorruption, exact_evidence

warnings.filterwarnings("ignore", category=FutureWarning)

# depth >= 4 with several alphabet sizes, ambiguous and non-uniform included
GRAMMARS = {
    "rhm-v3-L4": lambda: RHM(v=3, n_classes=2, m=2, s=2, L=4, seed=1),
    "ambiguous-nonuniform-L4": lambda: random_grammar((2, 3, 3, 2, 3), (2, 2, 2, 2), 2, seed=3),
    "unambiguous-nonuniform-L4": lambda: random_grammar((3, 4, 4, 3, 4), (2, 2, 2, 2), 2, seed=2,
                                                        ambiguous=False),
    "ambiguous-s3": lambda: random_grammar((2, 3, 2), (3, 2), 3, seed=7),
}
EXACT = [("pgmpy", {}), ("pgmpy", {"algorithm": "bp"}), ("numpyro", {}), ("bp", {})]


def _likelihood(g, batch, seed):
    rng = np.random.default_rng(seed)
    lik = rng.random((batch, g.d, g.vocab_sizes[-1])) ** 3
    lik[rng.random(lik.shape) < 0.2] = 0.0  # hard zeros ...
    x = g.sample(batch, seed=seed + 1).leaves
    np.put_along_axis(lik, x[..., None], 1.0, axis=-1)  # ... but a datum stays consistent
    return lik


def _assert_close(post, ref, g, atol=1e-8, log_evidence=True):
    for lev in range(g.L + 1):
        assert post.marginals[lev].shape == ref.marginals[lev].shape
        np.testing.assert_allclose(post.marginals[lev], ref.marginals[lev], rtol=0, atol=atol)
    if log_evidence:
        np.testing.assert_allclose(post.log_evidence, ref.log_evidence, rtol=0, atol=atol)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n == "ambiguous-nonuniform-L4" else n
     for n in sorted(GRAMMARS)],
)
def test_exact_backends_match_brute_force(name):
    g = GRAMMARS[name]()
    lik = _likelihood(g, 3, seed=5)
    ref = run(g, lik, "bruteforce")
    for backend, opts in EXACT:
        post = run(g, lik, backend, **opts)
        _assert_close(post, ref, g)
        assert post.seconds > 0 and post.extra["backend_name"] == backend


def test_pgmpy_normalising_algorithms_match_brute_force():
    """The virtual-evidence and factor-graph message-passing paths give exact marginals."""
    g = GRAMMARS["ambiguous-nonuniform-L4"]()
    lik = _likelihood(g, 1, seed=9)
    ref = run(g, lik, "bruteforce")
    for alg in ("ve-virtual", "messagepassing"):
        post = run(g, lik, "pgmpy", algorithm=alg)
        _assert_close(post, ref, g, log_evidence=False)
        assert np.isnan(post.log_evidence).all()


@pytest.mark.parametrize("backend", ["pgmpy", "numpyro"])
def test_log_evidence_objects_and_sharp_evidence(backend):
    """Evidence objects, -inf log-likelihoods (exact leaves, masking) and a prior change."""
    g = RHM(v=4, n_classes=3, m=2, s=2, L=4, seed=0)
    x = g.sample(3, seed=2).leaves
    for ev in (exact_evidence(x, 4), Masking(4).evidence(x, 0.5, seed=1),
               UniformCorruption(4).evidence(x, 0.3, seed=3)):
        ref = run(g, ev, "bp")
        _assert_close(run(g, ev, backend), ref, g)


def test_float64_log_likelihood_array_with_log_flag():
    g = GRAMMARS["ambiguous-s3"]()
    lik = _likelihood(g, 2, seed=1)
    with np.errstate(divide="ignore"):
        log_lik = np.log(lik) + 3.0
    ref = run(g, lik, "bruteforce")
    post = run(g, log_lik, "numpyro", log=True)
    _assert_close(post, ref, g, log_evidence=False)
    np.testing.assert_allclose(post.log_evidence, ref.log_evidence + 3.0 * g.d, atol=1e-8)


def test_inconsistent_evidence_is_flagged_not_nan():
    g = RHM(v=4, n_classes=2, m=1, s=2, L=2, seed=0)
    lik = np.ones((2, g.d, 4))
    lik[1] = 0.0
    lik[1, :, 0] = 1.0  # all-zero leaves symbol: no datum of this RHM (m=1) produces it
    ok = run(g, lik[:1], "bp").log_evidence
    for backend in ("pgmpy", "numpyro"):
        post = run(g, lik, backend)
        if run(g, lik[1:], "bruteforce").log_evidence[0] == -np.inf:
            assert post.inconsistent[1] and post.log_evidence[1] == -np.inf
        np.testing.assert_allclose(post.log_evidence[0], ok[0], atol=1e-8)


def test_size_guards_raise_before_allocating():
    big = RHM(v=32, n_classes=32, m=8, s=2, L=10, seed=0)
    t0 = time.perf_counter()
    with pytest.raises(SizeLimitError, match=r"table entries"):
        run(big, np.ones((1, big.d, 32)), "pgmpy")
    with pytest.raises(SizeLimitError, match=r"needs 32 tensor dims"):
        run(big, np.ones((1, big.d, 32)), "numpyro")
    wide = RHM(v=32, n_classes=32, m=8, s=2, L=6, seed=0)
    with pytest.raises(SizeLimitError, match=r"tensors of [\d,]+ elements"):
        run(wide, np.ones((1, wide.d, 32)), "numpyro", max_elements=10**5)
    with pytest.raises(SizeLimitError, match=r"trees"):
        run(big, np.ones((1, big.d, 32)), "bruteforce")
    assert time.perf_counter() - t0 < 5.0  # refused up front, nothing built
    small = RHM(v=4, n_classes=2, m=2, s=2, L=3, seed=0)
    with pytest.raises(SizeLimitError, match=r"\d[\d,]* table entries"):
        run(small, np.ones((1, small.d, 4)), "pgmpy", max_table_size=10)
    with pytest.raises(SizeLimitError, match=r"batch 50"):
        run(small, np.ones((50, small.d, 4)), "numpyro", max_elements=1000, batch_chunk=50)


def test_registry_errors():
    g = RHM(v=4, n_classes=2, m=2, s=2, L=2, seed=0)
    with pytest.raises(BackendError, match=r"unknown inference backend 'nope'.*pgmpy.*meanfield-vi"):
        run(g, np.ones((1, g.d, 4)), "nope")
    with pytest.raises(BackendError, match="algorithm"):
        run(g, np.ones((1, g.d, 4)), "pgmpy", algorithm="magic")
    with pytest.raises(EvidenceError, match=r"\(batch, 4, 4\)"):
        run(g, np.ones((1, 3, 4)), "pgmpy")
    with pytest.raises(EvidenceError, match="NaN"):
        run(g, np.full((1, g.d, 4), np.nan), "numpyro")
    assert {"bp", "bruteforce", "pgmpy", "numpyro", "numpyro-sample", "mcmc",
            "meanfield-vi"} <= set(available_backends())
