"""The grammar as a NumPyro model (lazy JAX / NumPyro imports).

Sites, for a batch of ``B`` items (plate ``"batch"``) and tree level ``l``:

- ``x_0`` — the class, ``Categorical(root_prior)``;
- ``r_{l}`` — the rule chosen by every node of level ``l < L``,
  ``Categorical(probs[l][x_l])`` (no site when every symbol of level ``l`` has one rule);
- ``x_{l+1}`` — the children, a *deterministic* categorical (all mass on
  ``children[l][x_l, r_l, j]``) so that every symbol is its own site and enumeration can
  eliminate the tree level by level;
- the leaves are observed through the evidence with
  ``numpyro.factor("evidence", log_lik[leaf symbol])``; an optional
  ``numpyro.factor("theta_{l}", theta_l[x_l])`` per level adds internal log-evidence (its
  gradient at zero is the posterior marginal of level ``l``).

Plates mirror the tree: node ``i`` of level ``l`` has the multi-index
``(j_0, ..., j_{l-1})`` (row-major, ``j_k < s_k``), and plate ``"p{k}"`` of size ``s_k`` sits
at dim ``-(L - k)``; the batch plate at dim ``-(L + 1)``. A site of level ``l`` lives in the
batch plate and plates ``p0..p{l-1}``, so children are nested inside their parent's plates —
the tree-structured plate layout that NumPyro's (funsor) enumeration contracts exactly.
Enumeration dims start at ``first_available_dim = -(L + 2)``.

Shapes: a level-``l`` site has batch shape ``(B, s_0, ..., s_{l-1}, 1, ..., 1)`` (``L + 1``
dims); :func:`flatten_level` turns it into ``(B, n_l)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hiergen.models.errors import EvidenceError, SizeLimitError
from hiergen.models.grammar import Grammar

# log of "impossible": finite so that gradients of log-sum-exp over impossible slices stay
# finite (exp(-1e30 - max) is exactly 0 in float32 and float64)
NEG = -1e30


def first_enum_dim(grammar: Grammar) -> int:
    """``first_available_dim`` for enumeration: ``-(L + 2)``."""
    return -(grammar.L + 2)


def enumeration_size(grammar: Grammar, batch: int) -> int:
    """Largest enumeration tensor (elements) that exact enumeration of ``grammar`` allocates.

    The child site of level ``l + 1`` has log-probabilities over
    ``(x_{l+1}, r_l, x_l) x batch x nodes``: ``v_{l+1} m_l v_l B n_{l+1}`` numbers.
    """
    g = grammar
    sizes = [g.vocab_sizes[-1] * batch * g.d]
    for lev in range(g.L):
        m = int(g.children[lev].shape[1])
        sizes.append(g.vocab_sizes[lev + 1] * m * g.vocab_sizes[lev] * batch * g.n_nodes(lev + 1))
    return int(max(sizes))


# NumPyro's enumeration handler allocates tensor dims -1 .. -24 (its MAX_DIM is -25)
MAX_TENSOR_DIMS = 24


def enumeration_dims(grammar: Grammar) -> int:
    """Tensor dims enumeration needs: ``L + 1`` plates plus one per enumerated site
    (the class, each level's children, each level's rule choice when it has several)."""
    g = grammar
    n_enum = 1 + g.L + sum(int(c.shape[1]) > 1 for c in g.children)
    return g.L + 1 + n_enum


def check_enumeration_size(grammar: Grammar, batch: int, max_elements: int) -> int:
    """Raise SizeLimitError (naming the size) when enumeration would be too large: too many
    elements in one tensor, or more tensor dims than NumPyro's enumeration can allocate."""
    dims = enumeration_dims(grammar)
    if dims > MAX_TENSOR_DIMS:
        raise SizeLimitError(
            f"exact enumeration of this depth-{grammar.L} tree needs {dims} tensor dims "
            f"({grammar.L + 1} plates + {dims - grammar.L - 1} enumerated sites) but NumPyro "
            f"allocates at most {MAX_TENSOR_DIMS} (depth <= 7 with several rules per symbol); "
            "use backend='bp'"
        )
    size = enumeration_size(grammar, batch)
    if size > max_elements:
        raise SizeLimitError(
            f"exact enumeration would allocate tensors of {size:,} elements "
            f"(~{size * 8 / 2**20:,.0f} MiB in float64) for batch {batch} "
            f"(> max_elements={max_elements:,}); use a smaller batch or grammar, or backend='bp'"
        )
    return size


class GrammarModel:
    """A :class:`~hiergen.models.grammar.Grammar` as a NumPyro model.

    Call it as a model function: ``model(log_lik=None, batch=1, theta=None)``.

    Parameters (of the call)
    ------------------------
    log_lik : ``(B, d, v_L)`` leaf log-likelihoods or ``None`` (no observation: the prior).
    batch : number of items when ``log_lik`` is None.
    theta : optional list of ``L + 1`` arrays ``(B, n_l, v_l)``: internal log-evidence.

    Examples
    --------
    >>> from numpyro.infer import Predictive
    >>> model = GrammarModel(grammar)
    >>> draws = Predictive(model, num_samples=1000)(jax.random.PRNGKey(0), batch=1)
    >>> leaves = model.flatten_level(draws[f"x_{grammar.L}"], grammar.L)  # (1000, d)
    """

    def __init__(self, grammar: Grammar, dtype: str = "float64") -> None:
        import jax.numpy as jnp

        self.grammar = grammar
        self.dtype = dtype
        g = grammar
        fdt = jnp.float64 if dtype == "float64" else jnp.float32
        # log-probabilities with zeros (padding rules, excluded classes) as NEG, not -inf
        self.root_logits = jnp.asarray(_safe_log(g.root_prior), dtype=fdt)
        self.rule_logits = [jnp.asarray(_safe_log(p), dtype=fdt) for p in g.probs]
        # child logits (v_l, m_l, s_l, v_{l+1}): 0 on the produced symbol, NEG elsewhere
        self.child_logits = []
        for lev in range(g.L):
            ch = g.children[lev]
            onehot = np.eye(g.vocab_sizes[lev + 1], dtype=bool)[ch]
            self.child_logits.append(jnp.asarray(np.where(onehot, 0.0, NEG), dtype=fdt))

    @property
    def first_available_dim(self) -> int:
        return first_enum_dim(self.grammar)

    def __call__(self, log_lik: Any = None, batch: int = 1, theta: Any = None) -> None:
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        g = self.grammar
        L = g.L
        if log_lik is not None:
            batch = int(log_lik.shape[0])
        with numpyro.plate("batch", batch, dim=-(L + 1)):
            x = numpyro.sample("x_0", dist.Categorical(logits=self.root_logits))
            x = _expand_to(x, L + 1)
            if theta is not None:
                numpyro.factor("theta_0", _gather(theta[0], x, 0, g))
            plates = []
            for lev in range(L):
                plates.append(numpyro.plate(f"p{lev}", g.branching[lev], dim=-(L - lev)))
                if self.rule_logits[lev].shape[1] == 1:  # one rule per symbol: no choice to make
                    # (a size-1 enumerated site trips infer_discrete's funsor adjoint)
                    r = jnp.zeros_like(x)
                else:
                    with _nested(plates[:-1]):
                        r = numpyro.sample(f"r_{lev}", dist.Categorical(logits=self.rule_logits[lev][x]))
                with _nested(plates):
                    logits = self.child_logits[lev][x, r]  # (..., [l plates], 1.., s_l, v)
                    logits = jnp.moveaxis(logits, -2, -(L - lev) - 2)
                    logits = jnp.squeeze(logits, -2)
                    x = numpyro.sample(f"x_{lev + 1}", dist.Categorical(logits=logits))
                    x = _expand_to(x, L + 1)
                    if theta is not None:
                        numpyro.factor(f"theta_{lev + 1}", _gather(theta[lev + 1], x, lev + 1, g))
            if log_lik is not None:
                with _nested(plates):
                    numpyro.factor("evidence", _gather(log_lik, x, L, g))

    def flatten_level(self, values: Any, level: int) -> np.ndarray:
        """Site values ``(..., B, s_0.., 1..)`` -> ``(..., B, n_l)`` numpy int64."""
        arr = np.asarray(values)
        g = self.grammar
        lead = arr.shape[: arr.ndim - (g.L + 1)]
        b = arr.shape[arr.ndim - (g.L + 1)]
        return arr.reshape(lead + (b, g.n_nodes(level))).astype(np.int64)


def _safe_log(p: np.ndarray) -> np.ndarray:
    """``log p`` with :data:`NEG` for zeros."""
    p = np.asarray(p, dtype=np.float64)
    return np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), NEG)


def _expand_to(x: Any, ndim: int) -> Any:
    """Give a site value at least ``ndim`` dims (left-pad with 1s)."""
    while x.ndim < ndim:
        x = x[None]
    return x


def _nested(plates: list[Any]) -> Any:
    import contextlib

    stack = contextlib.ExitStack()
    for p in plates:
        stack.enter_context(p)
    return stack


def _gather(table: Any, x: Any, level: int, grammar: Grammar) -> Any:
    """``table[b, node, x]`` for a ``(B, n_l, v_l)`` table and a level-``l`` site value ``x``.

    ``x`` has shape ``(enum.., B|1, s_0|1, .., s_{l-1}|1, 1, .., 1)``; the table is reshaped
    to ``(B, s_0, .., s_{l-1}, 1, .., 1, v)`` and indexed along its last axis.
    """
    import jax.numpy as jnp

    g = grammar
    b = table.shape[0]
    shape = (b,) + tuple(g.branching[:level]) + (1,) * (g.L - level)
    t = jnp.reshape(table, shape + (table.shape[-1],))
    t = jnp.broadcast_to(t, jnp.broadcast_shapes(t.shape, x.shape + (1,)))
    idx = jnp.broadcast_to(x[..., None], t.shape[:-1] + (1,))
    return jnp.take_along_axis(t, idx, axis=-1)[..., 0]


def safe_log_lik(log_lik: np.ndarray) -> np.ndarray:
    """Replace ``-inf`` log-likelihoods by :data:`NEG` (finite gradients); check shape."""
    arr = np.asarray(log_lik, dtype=np.float64)
    if arr.ndim != 3:
        raise EvidenceError(f"log_lik must be (batch, d, v), got {arr.shape}")
    return np.where(np.isneginf(arr), NEG, arr)


__all__ = [
    "GrammarModel",
    "NEG",
    "enumeration_size",
    "check_enumeration_size",
    "enumeration_dims",
    "first_enum_dim",
    "safe_log_lik",
]
