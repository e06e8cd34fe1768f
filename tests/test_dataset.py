"""torch Dataset adapter: shapes, dtypes, agreement with grammar.sample, lazy torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hiergen.models.dataset import GrammarDataset, dataset_class
from hiergen.models.errors import GrammarError
from hiergen.models.rhm import RHM

torch = pytest.importorskip("torch")


def test_items_match_samples():
    g = RHM(v=6, n_classes=3, m=2, s=2, L=3, seed=0)
    ds = GrammarDataset(g, 40, seed=5)
    ref = g.sample(40, seed=5)
    assert len(ds) == 40
    assert isinstance(ds, torch.utils.data.Dataset) and isinstance(ds, dataset_class())
    x, y = ds[7]
    assert x.shape == (6, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0
    np.testing.assert_array_equal(x.argmax(0).numpy(), ref.leaves[7])
    np.testing.assert_array_equal(x.sum(0).numpy(), 1.0)
    assert int(y) == ref.labels[7]
    np.testing.assert_array_equal(x.numpy(), g.one_hot(ref.leaves[7]).T)
    for a, b in zip(ds.symbols, ref.symbols):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ds.rules, ref.rules):
        np.testing.assert_array_equal(a, b)


@pytest.mark.usefixtures("torch_one_thread")
def test_dataloader_batches_and_int_mode():
    g = RHM(v=4, n_classes=2, m=2, s=2, L=2, seed=1)
    ds = GrammarDataset(g, 10, seed=0, one_hot=False, classes=1)
    x, y = ds[0]
    assert x.shape == (4,) and x.dtype == torch.int64
    loader = torch.utils.data.DataLoader(GrammarDataset(g, 10, seed=0), batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 4, 4) and yb.shape == (4,)
    assert np.all(ds.labels == 1)


def test_bad_classes():
    g = RHM(v=4, n_classes=2, m=2, s=2, L=2, seed=1)
    with pytest.raises(GrammarError, match="classes out of range"):
        GrammarDataset(g, 3, classes=5)


def test_import_models_does_not_import_torch():
    code = (
        "import sys, hiergen.models, hiergen.models.dataset, hiergen.models.text, "
        "hiergen.models.serialize, hiergen.models.graphs, hiergen.models.pgmpy_view;"
        "bad = [m for m in ('torch', 'pgmpy', 'matplotlib') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
