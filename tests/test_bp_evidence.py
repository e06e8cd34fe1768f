"""BP input handling: validation for every array library, scale-free evidence, flag mode,
prior overrides and empty batches — checked against log-domain brute-force enumeration."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_grammar
from hiergen import RHM, BeliefPropagation
from hiergen.inference.bp import PosteriorSample
from hiergen.inference.bruteforce import brute_force_posterior, enumerate_trees
from hiergen.models.errors import EvidenceError, InconsistentEvidenceError
from hiergen.models.noise import Evidence

LIBS = ["numpy", "list", "torch", "jax"]


def _grammar():
    return random_grammar((2, 3, 3), (2, 2), 3, seed=5)


def _convert(x: np.ndarray, lib: str):
    """``x`` as an array of ``lib`` (float64 kept: JAX arrays are made with x64 on)."""
    if lib == "list":
        return x.tolist()
    if lib == "torch":
        torch = pytest.importorskip("torch")
        return torch.as_tensor(x)
    if lib == "jax":
        pytest.importorskip("jax")
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return jnp.asarray(x)
    return x


def _backend(lib: str) -> str:
    return lib if lib in ("torch", "jax") else "numpy"


def _valid_likelihood(g, batch, seed):
    rng = np.random.default_rng(seed)
    lik = rng.random((batch, g.d, g.vocab_sizes[-1])) + 0.05
    lik[rng.random(lik.shape) < 0.25] = 0.0
    np.put_along_axis(lik, g.sample(batch, seed=seed).leaves[..., None], 1.0, axis=-1)
    return lik


# ----------------------------------------------------------------------------- validation
BAD_VALUES = {  # (value, is_log, message)
    "nan": (np.nan, False, "NaN"),
    "nan-log": (np.nan, True, "NaN"),
    "posinf": (np.inf, False, ">= 0"),
    "posinf-log": (np.inf, True, r"\+inf"),
    "neginf": (-np.inf, False, ">= 0"),
    "negative": (-0.2, False, ">= 0"),
}


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_leaf_values_raise_for_every_library(lib, case):
    g = _grammar()
    value, is_log, msg = BAD_VALUES[case]
    ev = _valid_likelihood(g, 3, seed=1)
    if is_log:
        with np.errstate(divide="ignore"):
            ev = np.log(ev)
    ev[1, 2, 0] = value
    for backend in {_backend(lib), "numpy"}:
        bp = BeliefPropagation(g, backend=backend, dtype="float64", on_inconsistent="flag")
        with pytest.raises(EvidenceError, match=msg) as info:
            bp.run(_convert(ev, lib), log=is_log)
        assert "[1]" in str(info.value)  # the offending batch item is named
        for call in (bp.sample, bp.map):
            with pytest.raises(EvidenceError, match=msg):
                call(_convert(ev, lib), log=is_log)


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("case", ["nan", "posinf", "negative"])
def test_bad_internal_evidence_and_prior_raise_for_every_library(lib, case):
    g = _grammar()
    value = BAD_VALUES[case][0]
    lik = _valid_likelihood(g, 2, seed=2)
    bp = BeliefPropagation(g, backend=_backend(lib), dtype="float64")
    internal = np.ones((2, g.n_nodes(1), g.vocab_sizes[1]))
    internal[0, 1, 2] = value
    with pytest.raises(EvidenceError, match=r"internal_evidence\[1\]"):
        bp.run(lik, internal_evidence={1: _convert(internal, lib)})
    prior = np.full((2, g.n_classes), 1.0 / g.n_classes)
    prior[1, 0] = value
    with pytest.raises(EvidenceError, match="prior"):
        bp.run(lik, prior=_convert(prior, lib))


def _bad_dtype_arrays(lib: str, shape: tuple[int, ...]):
    if lib == "torch":
        torch = pytest.importorskip("torch")
        return [torch.ones(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.complex64)]
    if lib == "jax":
        pytest.importorskip("jax")
        import jax.numpy as jnp

        return [jnp.ones(shape, dtype=bool), jnp.ones(shape, dtype=jnp.complex64)]
    arrays = [np.ones(shape, bool), np.ones(shape, complex), np.full(shape, None), np.full(shape, "a")]
    return [a.tolist() for a in arrays] if lib == "list" else arrays


@pytest.mark.parametrize("lib", LIBS)
def test_non_real_dtypes_raise(lib):
    g = _grammar()
    bp = BeliefPropagation(g, backend=_backend(lib), dtype="float64")
    lik = np.ones((1, g.d, g.vocab_sizes[-1]))
    for bad in _bad_dtype_arrays(lib, (1, g.d, g.vocab_sizes[-1])):
        for log in (False, True):
            with pytest.raises(EvidenceError, match="dtype"):
                bp.run(bad, log=log)
    for bad in _bad_dtype_arrays(lib, (g.n_classes,)):
        with pytest.raises(EvidenceError, match="prior"):
            bp.run(lik, prior=bad)
    for bad in _bad_dtype_arrays(lib, (g.n_nodes(1), g.vocab_sizes[1])):
        with pytest.raises(EvidenceError, match="internal_evidence"):
            bp.run(lik, internal_evidence={1: bad})


def test_ragged_lists_and_wrong_shapes_raise():
    g = _grammar()
    bp = BeliefPropagation(g)
    with pytest.raises(EvidenceError, match="rectangular"):
        bp.run([[[1.0, 1.0, 1.0]] * g.d, [[1.0, 1.0]] * g.d])
    with pytest.raises(EvidenceError, match="shape"):
        bp.run(np.ones(3))
    with pytest.raises(EvidenceError, match="log"):
        bp.run(np.ones((1, g.d, 3)), log="yes")
    with pytest.raises(EvidenceError, match="level"):
        bp.run(np.ones((1, g.d, 3)), internal_evidence={True: np.ones((1, 2))})


@pytest.mark.parametrize("lib", LIBS)
def test_integer_and_list_evidence_accepted(lib):
    g = _grammar()
    lik = (_valid_likelihood(g, 4, seed=3) > 0).astype(np.int64) * 3
    post = BeliefPropagation(g, backend=_backend(lib), dtype="float64").run(_convert(lik, lib))
    ref = brute_force_posterior(g, lik.astype(float))
    np.testing.assert_allclose(post.log_evidence, ref["log_evidence"], atol=1e-10)


@pytest.mark.parametrize("lib", ["numpy", "torch", "jax"])
def test_narrow_float_and_unsigned_dtypes_accepted(lib):
    g = RHM(v=4, n_classes=2, m=2, s=2, L=2, seed=0)
    exact = np.eye(4)[g.sample(3, seed=0).leaves]  # 0/1: exact in every dtype
    ref = brute_force_posterior(g, exact)["log_evidence"]
    names = {"numpy": ["float16", "uint8", "int32"], "torch": ["bfloat16", "float16", "uint8"],
             "jax": ["bfloat16", "float16", "uint8"]}[lib]
    bp = BeliefPropagation(g, backend=_backend(lib), dtype="float64")
    for name in names:
        if lib == "numpy":
            ev = exact.astype(name)
        elif lib == "torch":
            torch = pytest.importorskip("torch")
            ev = torch.as_tensor(exact).to(getattr(torch, name))
        else:
            jnp = pytest.importorskip("jax.numpy")
            ev = jnp.asarray(exact, dtype=name)
        np.testing.assert_allclose(bp.run(ev).log_evidence, ref, atol=1e-10, err_msg=name)


# ----------------------------------------------------------------------------- scales
def _scaled_cases(g, seed):
    """Evidence with every leaf row multiplied by an extreme scale (zeros kept)."""
    lik = _valid_likelihood(g, 4, seed)
    rng = np.random.default_rng(seed)
    shape = lik.shape
    exps = {
        "huge-everywhere": np.full(shape[:2], 308.0),
        "tiny-everywhere": np.full(shape[:2], -300.0),
        "subnormal": np.full(shape[:2], -315.0),
        "mixed": rng.uniform(-300, 300, shape[:2]),
    }
    out = {}
    for name, e in exps.items():
        mant = lik / lik.max(-1, keepdims=True)  # row max 1, so 10**e * mant stays finite
        with np.errstate(divide="ignore"):
            out[name] = (mant * 10.0 ** e[..., None], np.log(mant) + e[..., None] * np.log(10.0))
    return out


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_extreme_scales_match_brute_force(backend, dtype):
    g = _grammar()
    trees = enumerate_trees(g)
    tol = 1e-9 if dtype == "float64" else 1e-4
    bp = BeliefPropagation(g, backend=backend, dtype=dtype, batch_chunk=3)
    for name, (lik, log_lik) in _scaled_cases(g, seed=4).items():
        ref = brute_force_posterior(g, log_lik, trees=trees, log=True)
        assert np.all(np.isfinite(ref["log_evidence"]))
        inputs = [(log_lik, True)] + ([(lik, False)] if name != "subnormal" else [])
        for ev, is_log in inputs:
            post = bp.run(_convert(ev, backend), log=is_log)
            np.testing.assert_allclose(post.log_evidence, ref["log_evidence"], rtol=tol, err_msg=name)
            for lev in range(g.L + 1):
                np.testing.assert_allclose(post.marginals[lev], ref["marginals"][lev], atol=tol, err_msg=name)
            est = bp.map(_convert(ev, backend), log=is_log)
            np.testing.assert_allclose(est.log_prob, ref["map_log_prob"], rtol=tol, err_msg=name)
            assert not est.inconsistent.any()


def test_reported_cases_likelihood_1e308_and_1e_300():
    g = RHM(v=4, n_classes=2, m=2, s=2, L=2, seed=0)
    x = g.sample(3, seed=0).leaves
    exact = np.eye(4)[x]
    # the scales are removed in float64, so even float32 keeps the absolute accuracy of the
    # scale-free remainder (here log p(datum) = log 1/16)
    for dtype, atol in (("float64", 1e-9), ("float32", 1e-5)):
        bp = BeliefPropagation(g, dtype=dtype)
        flat = bp.run(np.full((2, g.d, 4), 1e308)).log_evidence
        np.testing.assert_allclose(flat, g.d * np.log(1e308), rtol=0, atol=atol)
        sharp = bp.run(exact * 1e-300).log_evidence
        ref = g.d * np.log(1e-300) + np.log(1 / 16)
        np.testing.assert_allclose(sharp, ref, rtol=0, atol=atol)
    # subnormal likelihoods are still positive: exact zeros are the only hard constraints
    post = BeliefPropagation(g).run(exact * 5e-324)
    assert np.all(np.isfinite(post.log_evidence))


def test_internal_evidence_at_extreme_scale_matches_brute_force():
    g = _grammar()
    lik = _valid_likelihood(g, 3, seed=6)
    rng = np.random.default_rng(6)
    inner = (rng.random((3, g.n_nodes(1), g.vocab_sizes[1])) + 0.1) * 1e300
    for dtype, tol in (("float64", 1e-9), ("float32", 1e-4)):
        post = BeliefPropagation(g, dtype=dtype).run(lik, internal_evidence={1: inner})
        ref = brute_force_posterior(g, lik, internal_evidence={1: inner})
        np.testing.assert_allclose(post.log_evidence, ref["log_evidence"], rtol=tol)
        np.testing.assert_allclose(post.marginals[1], ref["marginals"][1], atol=tol)


# ----------------------------------------------------------------------------- flag mode
def _mixed_batch(g):
    """Exact evidence: items 1 and 3 are no datum of the grammar, item 4 has a zero row."""
    seen = {tuple(t) for t in enumerate_trees(g)[0][-1]}
    v = g.vocab_sizes[-1]
    impossible = next(np.array(t) for t in np.ndindex(*(v,) * g.d) if tuple(t) not in seen)
    good = g.sample(3, seed=2).leaves
    ev = np.eye(v)[np.stack([good[0], impossible, good[1], impossible, good[2], good[0]])]
    ev[4, 0] = 0.0
    return ev, np.array([False, True, False, True, True, False])


@pytest.mark.parametrize("backend", ["numpy", "torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_flag_mode_is_consistent_across_run_sample_map(backend):
    g = RHM(v=4, n_classes=2, m=1, s=2, L=2, seed=0)
    ev, bad = _mixed_batch(g)
    bp = BeliefPropagation(g, backend=backend, on_inconsistent="flag", batch_chunk=4)
    post = bp.run(ev)
    tree = bp.sample(ev, seed=1)
    est = bp.map(ev)
    assert isinstance(tree, PosteriorSample) and isinstance(est.tree, PosteriorSample)
    for flags in (post.inconsistent, tree.inconsistent, est.inconsistent, est.tree.inconsistent):
        np.testing.assert_array_equal(flags, bad)
    assert np.all(post.log_evidence[bad] == -np.inf) and np.all(est.log_prob[bad] == -np.inf)
    for t in (tree, est.tree):
        for x in t.symbols + t.rules:
            assert np.all(x[bad] == -1) and np.all(x[~bad] >= 0)
        np.testing.assert_array_equal(t.leaves[~bad], ev[~bad].argmax(-1))  # exact evidence
    ref = brute_force_posterior(g, ev)
    np.testing.assert_allclose(est.log_prob[~bad], ref["map_log_prob"][~bad], atol=1e-5)
    assert np.all(np.isfinite(post.log_evidence[~bad]))
    raising = BeliefPropagation(g, backend=backend)
    for call in (raising.run, raising.map, lambda e: raising.sample(e, seed=0)):
        with pytest.raises(InconsistentEvidenceError, match=r"\[1, 3, 4\]") as info:
            call(ev)
        assert info.value.items == [1, 3, 4]


# ----------------------------------------------------------------------------- prior
def test_prior_override_must_be_normalised():
    g = _grammar()
    lik = _valid_likelihood(g, 2, seed=7)
    bp = BeliefPropagation(g)
    with pytest.raises(EvidenceError, match="sum to 1"):
        bp.run(lik, prior=[2.0, 2.0])
    with pytest.raises(EvidenceError, match="all zero"):
        bp.run(lik, prior=[[0.5, 0.5], [0.0, 0.0]])
    with pytest.raises(EvidenceError, match="sum to 1"):
        bp.map(lik, prior=[0.5, 0.6])
    p32 = np.array([1 / 3, 2 / 3], dtype=np.float32)  # rounding within the tolerance
    post = bp.run(lik, prior=p32)
    ref = brute_force_posterior(g, lik, prior=p32.astype(float) / p32.astype(float).sum())
    np.testing.assert_allclose(post.log_evidence, ref["log_evidence"], atol=1e-12)
    per_item = np.array([[1.0, 0.0], [0.25, 0.75]])
    post = bp.run(lik, prior=per_item)
    for b in range(2):
        ref = brute_force_posterior(g, lik[b : b + 1], prior=per_item[b])
        np.testing.assert_allclose(post.log_evidence[b], ref["log_evidence"][0], atol=1e-12)


# ----------------------------------------------------------------------------- empty batch
@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_empty_batch_gives_empty_results(backend):
    g = _grammar()
    bp = BeliefPropagation(g, backend=backend)
    ev = np.ones((0, g.d, g.vocab_sizes[-1]))
    post = bp.run(ev)
    tree = bp.sample(ev, seed=0)
    est = bp.map(Evidence(np.zeros((0, g.d, g.vocab_sizes[-1]))))
    assert post.log_evidence.shape == (0,) and post.inconsistent.shape == (0,)
    for lev in range(g.L + 1):
        assert post.marginals[lev].shape == (0, g.n_nodes(lev), g.vocab_sizes[lev])
        assert tree.symbols[lev].shape == est.tree.symbols[lev].shape == (0, g.n_nodes(lev))
    for lev in range(g.L):
        assert tree.rules[lev].shape == (0, g.n_nodes(lev))
    assert tree.leaves.shape == (0, g.d) and len(tree) == 0
    assert est.log_prob.shape == (0,) and est.inconsistent.shape == (0,)


# ----------------------------------------------------------------------------- device arrays
def test_torch_evidence_is_checked_and_scaled_without_a_host_copy(monkeypatch):
    """Validation and scaling use torch ops: only per-item vectors come back to numpy."""
    torch = pytest.importorskip("torch")
    g = _grammar()
    copied: list[tuple[int, ...]] = []
    real_numpy, real_array = torch.Tensor.numpy, torch.Tensor.__array__

    def numpy_spy(self, *args, **kwargs):
        copied.append(tuple(self.shape))
        return real_numpy(self, *args, **kwargs)

    def array_spy(self, *args, **kwargs):
        copied.append(tuple(self.shape))
        return real_array(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "numpy", numpy_spy)
    monkeypatch.setattr(torch.Tensor, "__array__", array_spy)
    bp = BeliefPropagation(g, backend="torch", dtype="float64")
    lik = _valid_likelihood(g, 5, seed=8) * 1e300
    arr, is_log, prior, internal, batch = bp._prepare(torch.as_tensor(lik), None, None, None)
    offset = np.zeros(batch)
    chunks = list(bp._chunks(arr, prior, internal, batch, is_log, offset))
    assert isinstance(arr, torch.Tensor) and all(isinstance(c[2], torch.Tensor) for c in chunks)
    bad = torch.tensor(lik)  # a copy: lik stays valid
    bad[3, 1, 1] = float("nan")
    with pytest.raises(EvidenceError, match=r"NaN \(batch items \[3\]\)"):
        bp._prepare(bad, None, None, None)
    assert copied and all(len(s) <= 1 for s in copied), copied  # (batch,) vectors only
    np.testing.assert_allclose(offset, np.log(lik.max(-1)).sum(-1), rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_tensor_evidence(dtype):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = _grammar()
    lik = _valid_likelihood(g, 6, seed=9) * 1e-300
    ref = brute_force_posterior(g, lik)
    bp = BeliefPropagation(g, backend="torch", dtype=dtype, device="cuda")
    post = bp.run(torch.as_tensor(lik, device="cuda"))
    np.testing.assert_allclose(post.log_evidence, ref["log_evidence"], rtol=1e-6)
    bad = torch.as_tensor(lik, device="cuda")
    bad[2, 0, 0] = -1.0
    with pytest.raises(EvidenceError, match=r"\[2\]"):
        bp.run(bad)
