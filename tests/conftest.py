"""Shared fixtures: small random grammars of every kind for oracle tests, one torch thread,
loading the example scripts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from hiergen.models.grammar import Grammar

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def random_grammar(
    vocab_sizes: tuple[int, ...],
    branching: tuple[int, ...],
    max_rules: int,
    seed: int,
    ambiguous: bool = True,
    uniform: bool = False,
) -> Grammar:
    """A random general grammar: ragged rule counts, non-uniform probabilities, and (when
    ``ambiguous``) tuples shared between parents of the same level."""
    rng = np.random.default_rng(seed)
    rules, probs = [], []
    for lev, s in enumerate(branching):
        v_parent, v_child = vocab_sizes[lev], vocab_sizes[lev + 1]
        all_tuples = [tuple(int(c) for c in np.unravel_index(k, (v_child,) * s)) for k in range(v_child**s)]
        used: set[tuple[int, ...]] = set()
        lev_rules, lev_probs = [], []
        for _ in range(v_parent):
            k = int(rng.integers(1, max_rules + 1))
            pool = all_tuples if ambiguous else [t for t in all_tuples if t not in used]
            pick = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
            row = [pool[i] for i in pick]
            used.update(row)
            lev_rules.append(row)
            p = np.full(len(row), 1.0 / len(row)) if uniform else rng.dirichlet(np.ones(len(row)))
            lev_probs.append(p)
        rules.append(lev_rules)
        probs.append(lev_probs)
    prior = None if uniform else rng.dirichlet(np.ones(vocab_sizes[0]))
    return Grammar(vocab_sizes, branching, rules, probs, root_prior=prior, allow_unreachable=True)


def _rhm(**kw):
    from hiergen.models.rhm import RHM

    return RHM(**kw)


#: the grammar zoo of the BP oracle tests (both engines): RHMs and general grammars with
#: s = 2 and 3, mixed branching, s = 1, ambiguous, non-uniform and ragged rules
BP_GRAMMAR_ZOO = {
    "rhm-s2": lambda: _rhm(v=4, n_classes=2, m=2, s=2, L=3, seed=3),
    "rhm-s3": lambda: _rhm(v=3, n_classes=2, m=2, s=3, L=2, seed=1),
    "ambiguous-mixed-branching": lambda: random_grammar((2, 3, 3), (2, 3), 3, seed=5),
    "ambiguous-s3": lambda: random_grammar((3, 2, 3), (3, 2), 3, seed=7),
    "branching-one": lambda: random_grammar((2, 3, 3), (1, 2), 2, seed=4),
    "branching-one-uniform": lambda: random_grammar((2, 3, 2), (2, 1), 2, seed=4, uniform=True),
    "nonuniform-deep": lambda: random_grammar((2, 3, 2, 3), (2, 2, 2), 2, seed=11),
    "unambiguous-nonuniform": lambda: random_grammar((2, 3, 4), (2, 2), 3, seed=2, ambiguous=False),
}


@pytest.fixture
def make_grammar():
    return random_grammar


@pytest.fixture
def torch_one_thread():
    """Run the test with one torch thread (small CPU tensors; 2 shared cores), then restore.

    Use per module with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``.
    """
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the examples folder is no package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_generable(g: Grammar, tree, lik=None) -> None:
    """Every sampled/decoded tree is a derivation of ``g`` (valid rules of positive
    probability, children as the rules say) and, given ``lik`` ``(B, d, v)``, its leaves have
    positive likelihood."""
    for lev in range(g.L):
        parent, rule = tree.symbols[lev], tree.rules[lev]
        assert np.all(rule < g.n_rules[lev][parent])
        assert np.all(g.probs[lev][parent, rule] > 0)
        kids = g.children[lev][parent, rule].reshape(parent.shape[0], -1)
        np.testing.assert_array_equal(kids, tree.symbols[lev + 1])
    if lik is not None:
        support = np.take_along_axis(lik, tree.leaves[..., None], -1)[..., 0]
        assert np.all(support > 0)


def assert_sample_frequencies(g: Grammar, tree, marginals, n: int) -> None:
    """Symbol frequencies of ``n`` posterior samples of one item match its exact marginals
    (``marginals[l][0]`` ``(n_l, v_l)``) within 5 sigma per cell (+1e-3), fixed seed."""
    for lev in range(g.L + 1):
        v = g.vocab_sizes[lev]
        freq = np.stack([(tree.symbols[lev] == a).mean(0) for a in range(v)], -1)
        p = marginals[lev][0]
        tol = 5 * np.sqrt(p * (1 - p) / n) + 1e-3
        assert np.all(np.abs(freq - p) <= tol), (lev, np.abs(freq - p).max())


def save_test_classifier(folder, spec, seed: int = 0):
    """A randomly initialised timm model of ``spec`` saved as a hiergen classifier folder
    (8x8 grey inputs, 3 classes); returns the torch model."""
    import json

    import torch
    from safetensors.torch import save_file

    from hiergen.imagenet.probe import build_timm_model

    torch.manual_seed(seed)
    model = build_timm_model(spec)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "classifier.json").write_text(json.dumps({
        "model": spec, "input_size": 8, "in_chans": 1, "mean": [0.5], "std": [0.5],
        "num_classes": 3}))
    return model


@pytest.fixture(scope="session")
def dask_client():
    """A Dask ``LocalCluster`` of two single-threaded worker processes, shared by every test
    that runs sweep points as Dask tasks (started once per session; a test that kills a worker
    waits for its nanny to restart it)."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        c.wait_for_workers(2)
        yield c
