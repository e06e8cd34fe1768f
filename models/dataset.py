"""A torch ``Dataset`` of grammar samples (torch is imported lazily, on first use).

``GrammarDataset(grammar, n, seed=0, one_hot=True, classes=None)`` draws ``n`` samples once
(``grammar.sample(n, seed, classes)``) and serves them as tensors:

- ``x``: float32 ``(v_L, d)`` one-hot, channel-first (the layout of a 1-d CNN input), or
  int64 ``(d,)`` leaf symbols when ``one_hot=False``;
- ``label``: int64 scalar, the class (root symbol).

The latent tree stays available: ``dataset.tree`` (a TreeSample), ``dataset.symbols``
(list over levels of ``(n, n_l)`` arrays) and ``dataset.rules``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from hiergen.models.grammar import Grammar


@lru_cache(maxsize=1)
def _dataset_class() -> type:
    """Build the Dataset subclass on first use, so importing this module needs no torch."""
    import torch
    from torch.utils.data import Dataset

    class _GrammarDataset(Dataset):
        """See :func:`GrammarDataset`."""

        def __init__(
            self,
            grammar: Grammar,
            n: int,
            seed: int | np.random.Generator | None = 0,
            one_hot: bool = True,
            classes: int | Sequence[int] | np.ndarray | None = None,
        ) -> None:
            self.grammar = grammar
            self.tree = grammar.sample(n, seed=seed, classes=classes)
            self.one_hot = bool(one_hot)
            self.n_symbols = grammar.vocab_sizes[-1]
            self._leaves = torch.from_numpy(np.ascontiguousarray(self.tree.leaves))
            self._labels = torch.from_numpy(np.ascontiguousarray(self.tree.labels))

        @property
        def leaves(self) -> np.ndarray:
            """(n, d) int64 leaf symbols."""
            return self.tree.leaves

        @property
        def labels(self) -> np.ndarray:
            """(n,) int64 classes."""
            return self.tree.labels

        @property
        def symbols(self) -> list[np.ndarray]:
            """Latent symbols per level, level l of shape (n, n_l)."""
            return self.tree.symbols

        @property
        def rules(self) -> list[np.ndarray]:
            """Rule choices per level, level l of shape (n, n_l)."""
            return self.tree.rules

        def __len__(self) -> int:
            return len(self.tree)

        def __getitem__(self, idx: int) -> tuple[Any, Any]:
            leaves = self._leaves[idx]
            if self.one_hot:
                x = torch.nn.functional.one_hot(leaves, self.n_symbols).to(torch.float32)
                x = x.transpose(-1, -2).contiguous()  # (v_L, d), channel first
            else:
                x = leaves
            return x, self._labels[idx]

        def __repr__(self) -> str:
            return f"GrammarDataset(n={len(self)}, d={self.grammar.d}, one_hot={self.one_hot})"

    return _GrammarDataset


def GrammarDataset(  # noqa: N802 — a class-like factory
    grammar: Grammar,
    n: int,
    seed: int | np.random.Generator | None = 0,
    one_hot: bool = True,
    classes: int | Sequence[int] | np.ndarray | None = None,
) -> Any:
    """A ``torch.utils.data.Dataset`` of ``n`` samples of ``grammar`` (see module doc).

    Items are ``(x, label)``: ``x`` float32 ``(v_L, d)`` (or int64 ``(d,)`` without one-hot),
    ``label`` int64. Same seed, same data.
    """
    return _dataset_class()(grammar, n, seed=seed, one_hot=one_hot, classes=classes)


def dataset_class() -> type:
    """The Dataset subclass itself (for ``isinstance`` checks); imports torch."""
    return _dataset_class()


__all__ = ["GrammarDataset", "dataset_class"]
