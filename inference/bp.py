"""Exact sum-product (and max-product) belief propagation on a grammar's tree.

One algorithm, written once against :class:`hiergen.inference.backends.ArrayOps`; the numpy,
JAX and torch backends differ only in the array library.

Messages
--------
For every node at level ``l`` the *upward* message ``up[l]`` ``(B, n_l, v_l)`` is the
likelihood of the evidence in its subtree (its own clamped evidence included) given its
symbol, normalised to sum to one; the normalisers are accumulated in ``log_z`` so that the
log-evidence stays exact. With ``w_r = p_r * prod_j up_child_j[c_{r,j}]`` the weight of rule
``r = (a -> c_1..c_s)`` of a node, ``up_parent[a] = sum_{r of a} w_r`` (``max`` for max-product).

The *downward* message ``down[l]`` is the probability of the evidence outside the subtree.
For child ``j``: ``down_j[c] = sum_{r: c_{r,j} = c} down_parent[a_r] p_r prod_{k != j} up_k[c_{r,k}]``
— a gather over the rules followed by a scatter-add, written as a matrix product with a fixed
``(R, v_child)`` one-hot matrix. Marginals are ``up * down`` normalised.

Memory is linear in batch x leaves: the largest temporaries are ``(chunk, n_l, R_l)`` rule
weights, and the batch is processed in chunks (``batch_chunk``) to bound them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hiergen.inference import inputs
from hiergen.inference.backends import ArrayOps, get_ops
from hiergen.models.errors import BackendError, EvidenceError, InconsistentEvidenceError
from hiergen.models.grammar import Grammar, TreeSample
from hiergen.models.noise import Evidence

# Default chunk sizes: rule-weight temporaries of at most this many elements per chunk.
# Small for numpy (cache-resident chunks are fastest on a CPU), large on accelerators.
_CHUNK_ELEMENTS = {"numpy": 1 << 20, "cpu": 1 << 22, "accelerator": 1 << 26}


@dataclass
class Posterior:
    """Exact posterior of the latent tree given evidence, for a batch.

    Attributes
    ----------
    marginals : list of L+1 arrays, level l of shape (batch, n_l, v_l)
        ``p(x_{l,i} = a | evidence)``. Empty when ``run(..., marginals=False)``.
    log_evidence : (batch,) float
        ``log p(evidence)`` (``-inf`` for items no datum can explain).
    inconsistent : (batch,) bool
        True for items whose evidence no datum of the grammar can explain (their marginals
        are NaN, their log-evidence ``-inf``). Only populated with
        ``on_inconsistent="flag"``; otherwise such items raise. ``sample`` and ``map``
        report the same items the same way (``-1`` trees, see :class:`PosteriorSample`).
    backend, dtype, device : where it was computed. seconds : wall time of ``run``.
    """

    marginals: list[np.ndarray]
    log_evidence: np.ndarray
    inconsistent: np.ndarray
    backend: str = "numpy"
    dtype: str = "float64"
    device: str = "cpu"
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.log_evidence.shape[0])

    @property
    def depth(self) -> int:
        return len(self.marginals) - 1

    def prob_of(self, symbols: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Marginal probability of given symbols per level: list of ``(batch, n_l)``.

        ``symbols`` is e.g. ``TreeSample.symbols`` of the clean data (probability of the
        correct value, the paper's Fig. 5 observable).
        """
        return [
            np.take_along_axis(m, np.asarray(s)[..., None], axis=-1)[..., 0]
            for m, s in zip(self.marginals, symbols)
        ]

    def argmax(self) -> list[np.ndarray]:
        """Most probable symbol of every node (marginal decoding), per level ``(batch, n_l)``."""
        return [m.argmax(-1) for m in self.marginals]

    @property
    def class_probs(self) -> np.ndarray:
        """``(batch, n_classes)`` posterior of the class."""
        return self.marginals[0][:, 0, :]


@dataclass(frozen=True)
class PosteriorSample(TreeSample):
    """Trees drawn from (or decoded by) belief propagation: a
    :class:`~hiergen.models.grammar.TreeSample` plus

    inconsistent : (batch,) bool
        Items no datum of the grammar can explain (``on_inconsistent="flag"``). Their
        symbols, rules and leaves are the sentinel ``-1``: no tree was drawn for them.
    """

    inconsistent: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


@dataclass
class MapEstimate:
    """Max-product decoding: the single most probable latent tree per item.

    Attributes
    ----------
    tree : :class:`PosteriorSample`, symbols ``(batch, n_l)`` per level (``-1`` for
        inconsistent items).
    log_prob : (batch,) ``log p(tree, evidence)`` (``-inf`` for inconsistent items).
    inconsistent : (batch,) bool, items no datum can explain (``on_inconsistent="flag"``).
    """

    tree: TreeSample
    log_prob: np.ndarray
    inconsistent: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.inconsistent is None:
            self.inconsistent = np.zeros(len(self.log_prob), dtype=bool)


@dataclass
class _Level:
    """Backend arrays describing the rules of one level (parent level l)."""

    v_parent: int
    v_child: int
    s: int
    m: int
    child_idx: list[Any]  # s index arrays (R,); flat rule r = k * v_parent + a (rule k of a)
    probs: Any | None  # (R, 1, 1) or None when uniform with m rules per symbol
    ones_m: Any  # (m, 1, 1, 1) ones
    log_uniform: float  # log(1/m) when probs is None, else 0
    scatter: list[Any]  # s one-hot (v_child, R) matrices
    children_flat: Any  # (R, s) index array


class BeliefPropagation:
    """Exact belief propagation on the tree of a :class:`~hiergen.models.grammar.Grammar`.

    Parameters
    ----------
    grammar : the grammar (any branching, alphabets, rule probabilities, ambiguity).
    backend : ``"numpy"`` (reference), ``"jax"`` (jit; CPU/GPU) or ``"torch"`` (CPU/CUDA).
    dtype : ``"float32"`` or ``"float64"`` (default float64 for numpy, float32 otherwise).
        float64 with JAX switches on ``jax_enable_x64`` for the whole process.
    device : backend device, e.g. ``"cuda"`` / ``"cuda:1"`` for torch, ``"gpu"`` for JAX.
    batch_chunk : samples per chunk (bounds temporary memory); default: automatic.
    on_inconsistent : ``"raise"`` (default) raises :class:`InconsistentEvidenceError` naming
        the batch items no datum can explain (the exception's ``posterior`` attribute keeps
        everything computed); ``"flag"`` returns them with NaN marginals, ``-inf``
        log-evidence and ``Posterior.inconsistent`` set (``sample``/``map``: ``-1``
        symbols and rules, ``inconsistent`` set on the returned trees / estimate).
    threads : worker threads over batch chunks for the numpy backend (default: CPU count,
        at most 4).
    engine : ``"auto"`` (default: the compiled kernel for the numpy backend, the array code
        otherwise), ``"kernel"`` (numba kernel of :mod:`hiergen.inference.bp_kernel`, numpy
        backend only) or ``"array"`` (this module's array-at-a-time code, the reference).

    Examples
    --------
    >>> from hiergen import RHM, BeliefPropagation
    >>> from hiergen.models.noise import UniformCorruption
    >>> rhm = RHM(v=8, n_classes=4, m=2, s=2, L=3, seed=0)
    >>> x = rhm.sample(16, seed=1)
    >>> post = BeliefPropagation(rhm).run(UniformCorruption(8).evidence(x.leaves, 0.3))
    >>> post.marginals[0].shape
    (16, 1, 4)
    """

    def __init__(
        self,
        grammar: Grammar,
        backend: str = "numpy",
        dtype: str | None = None,
        device: str | None = None,
        batch_chunk: int | None = None,
        on_inconsistent: str = "raise",
        threads: int | None = None,
        engine: str = "auto",
    ) -> None:
        if not isinstance(grammar, Grammar):
            raise EvidenceError(f"BeliefPropagation needs a Grammar, got {type(grammar).__name__}")
        if on_inconsistent not in ("raise", "flag"):
            raise EvidenceError(f"on_inconsistent must be 'raise' or 'flag', got {on_inconsistent!r}")
        self.grammar = grammar
        self.ops: ArrayOps = get_ops(backend, dtype, device)
        self.on_inconsistent = on_inconsistent
        self.levels = [self._level_tables(lev) for lev in range(grammar.L)]
        g = grammar
        widest = max(g.n_nodes(lev) * t.v_parent * t.m for lev, t in enumerate(self.levels))
        widest = max(widest, g.d * g.vocab_sizes[-1])
        if batch_chunk is None:
            kind = "numpy" if backend == "numpy" else (
                "cpu" if self.ops.device_name.lower().startswith(("cpu", "tfrt_cpu")) else "accelerator"
            )
            batch_chunk = max(1, min(8192, _CHUNK_ELEMENTS[kind] // widest))
        if isinstance(batch_chunk, bool) or not isinstance(batch_chunk, int) or batch_chunk < 1:
            raise EvidenceError(f"batch_chunk must be a positive int, got {batch_chunk!r}")
        self.batch_chunk = batch_chunk
        if threads is None:
            threads = min(4, os.cpu_count() or 1)
        self.threads = int(threads)
        self._compiled: dict[str, Any] = {}
        self.engine = _choose_engine(engine, backend)
        self._kernel: Any = None

    # ------------------------------------------------------------------ set-up
    @property
    def backend(self) -> str:
        return self.ops.name

    def _level_tables(self, lev: int) -> _Level:
        g, ops = self.grammar, self.ops
        ch, pr, nr = g.children[lev], g.probs[lev], g.n_rules[lev]
        v_parent, m, s = ch.shape
        v_child = g.vocab_sizes[lev + 1]
        # flat rules are ordered rule-index-major, r = k * v_parent + a, so that sums over the
        # rules of a symbol reduce over a leading axis of (..., m, v_parent) (fast, vectorised)
        flat = ch.transpose(1, 0, 2).reshape(-1, s)
        flat_p = pr.T.reshape(-1)
        uniform = bool(np.all(nr == m)) and np.allclose(pr, 1.0 / m, rtol=0, atol=1e-15)
        scatter = []
        for j in range(s):  # (v_child, R) incidence of child symbols at position j
            one_hot = np.zeros((v_child, v_parent * m))
            one_hot[flat[:, j], np.arange(v_parent * m)] = 1.0
            one_hot[:, flat_p <= 0] = 0.0  # padding rules contribute nothing
            scatter.append(ops.asarray(one_hot))
        return _Level(
            v_parent=v_parent,
            v_child=v_child,
            s=s,
            m=m,
            child_idx=[ops.index_array(flat[:, j]) for j in range(s)],
            probs=None if uniform else ops.asarray(flat_p.reshape(-1, 1, 1)),
            ones_m=ops.asarray(np.ones((m, 1, 1, 1))),
            log_uniform=-math.log(m) if uniform else 0.0,
            scatter=scatter,
            children_flat=ops.index_array(flat),
        )

    # ------------------------------------------------------------------ the algorithm
    # Inside the algorithm every message is stored symbol-major, ``(v_l, B, n_l)``: gathering
    # the rules' children is then a copy of whole rows (``x[idx]`` on axis 0) and every sum
    # over symbols or rules adds whole rows — the fast path of every array library.
    def _normalise(self, msg: Any) -> tuple[Any, Any, Any]:
        """Normalise ``(v, B, n)`` messages; return ``(msg, log_z (B,), zero (B,) bool)``."""
        ops = self.ops
        z = ops.sum(msg, 0)
        zero = ~(z > 0)  # NaN counts as zero: never a silent NaN
        z_safe = ops.where(zero, 1.0, z)
        return msg / z_safe, ops.sum(ops.log(z_safe), 1), ops.any(zero, 1)

    def _rescale(self, msg: Any) -> Any:
        """Normalise ``(v, B, n)`` messages to sum to one (all-zero messages stay zero)."""
        ops = self.ops
        z = ops.sum(msg, 0)
        return msg / ops.where(z <= 0, 1.0, z)

    def _gather_children(self, t: _Level, child_msg: Any) -> list[Any]:
        """Per child position j, ``(R, B, n_l)`` messages ``up_child_j[c_{r,j}]`` of every rule."""
        ops = self.ops
        v, b, n_child = child_msg.shape
        c = child_msg.reshape(v, b, n_child // t.s, t.s)
        if t.s == 1:
            return [ops.take_first(c[..., 0], t.child_idx[0])]
        return [ops.take_first(ops.contiguous(c[..., j]), t.child_idx[j]) for j in range(t.s)]

    def _rule_weights(self, t: _Level, gathered: list[Any]) -> Any:
        """``(m, v_l, B, n_l)`` weights ``p_r prod_j up_child_j[c_{r,j}]`` (rule k of symbol a)."""
        w = gathered[0]
        for g in gathered[1:]:
            w = w * g
        if t.probs is not None:
            w = w * t.probs
        return w.reshape((t.m, t.v_parent) + tuple(w.shape[1:]))

    def _leaf_messages(self, leaf: Any, is_log: bool) -> tuple[Any, Any, Any]:
        """Turn ``(v, B, d)`` evidence into normalised leaf messages, ``log_z`` and ``bad``."""
        ops = self.ops
        if is_log:
            mx = ops.max(leaf, 0)
            mx_safe = ops.where(ops.isfinite(mx), mx, 0.0)
            msg, log_z, bad = self._normalise(ops.exp(leaf - mx_safe))
            return msg, log_z + ops.sum(mx_safe, 1), bad
        return self._normalise(leaf)

    def _upward(self, leaf: Any, internal: list[Any], semiring: str, is_log: bool, keep: bool = False):
        """Upward pass. Returns ``(up, best, log_z, bad, gathered)``; ``gathered[l]`` (kept for
        the downward pass when ``keep``) holds the per-position child gathers of level l."""
        ops, L = self.ops, self.grammar.L
        up: list[Any] = [None] * (L + 1)
        best: list[Any] = [None] * L
        gathered: list[Any] = [None] * L
        up[L], log_z, bad = self._leaf_messages(leaf, is_log)
        if internal[L] is not None:
            up[L], lz, bz = self._normalise(up[L] * internal[L])
            log_z, bad = log_z + lz, bad | bz
        for lev in reversed(range(L)):
            t = self.levels[lev]
            gath = self._gather_children(t, up[lev + 1])
            if keep:
                gathered[lev] = gath
            w4 = self._rule_weights(t, gath)
            if semiring == "sum":
                msg = ops.sum(w4, 0)
            else:
                msg = ops.max(w4, 0)
                best[lev] = ops.argmax(w4, 0)
            if internal[lev] is not None:
                msg = msg * internal[lev]
            up[lev], lz, bz = self._normalise(msg)
            log_z = log_z + lz + t.log_uniform * msg.shape[2]
            bad = bad | bz
        return up, best, log_z, bad, gathered

    def _root(self, up0: Any, prior: Any, semiring: str) -> tuple[Any, Any]:
        """Unnormalised root scores ``(v0, B)`` and their total (sum or max) ``(B,)``."""
        ops = self.ops
        score = prior * up0[:, :, 0]
        total = ops.sum(score, 0) if semiring == "sum" else ops.max(score, 0)
        return score, total

    def _forward(self, leaf: Any, prior: Any, internal: list[Any], is_log: bool, want_marg: bool):
        """Up and down passes for one chunk: marginals ``(v_l, B, n_l)``, log-evidence, bad mask."""
        ops, L = self.ops, self.grammar.L
        up, _, log_z, bad, gathered = self._upward(leaf, internal, "sum", is_log, keep=want_marg)
        score, total = self._root(up[0], prior, "sum")
        zero = total <= 0
        bad = bad | zero
        log_ev = log_z + ops.log(ops.where(zero, 1.0, total))
        if not want_marg:
            return [], log_ev, bad
        b = score.shape[1]
        marg: list[Any] = [None] * (L + 1)
        marg[0] = self._rescale(score.reshape(-1, b, 1))
        down = prior.reshape(-1, b, 1)
        for lev in range(L):
            t = self.levels[lev]
            g = down if internal[lev] is None else down * internal[lev]  # (v_l, B, n)
            n = g.shape[2]
            gath = gathered[lev]
            gathered[lev] = None
            msgs = []
            for j in range(t.s):
                w = None
                for k in range(t.s):
                    if k != j:
                        w = gath[k] if w is None else w * gath[k]
                if t.probs is not None:
                    w = t.probs if w is None else w * t.probs
                # the parent factor of rule r = (k, a) is g[a], broadcast over the m rules
                gp = g.reshape(1, t.v_parent, b, n)
                if w is None:  # s = 1, uniform rules
                    w = gp * t.ones_m
                elif tuple(w.shape[1:]) == (1, 1):  # s = 1: the rule probabilities alone
                    w = gp * w.reshape(t.m, t.v_parent, 1, 1)
                else:
                    w = gp * w.reshape(t.m, t.v_parent, b, n)
                # scatter-add of rule weights into child symbols: (v_c, R) @ (R, B*n)
                msgs.append(ops.matmul(t.scatter[j], w.reshape(t.m * t.v_parent, b * n)))
            down = ops.stack(msgs, 2).reshape(t.v_child, b, n * t.s)
            down = self._rescale(down)
            marg[lev + 1] = self._rescale(down * up[lev + 1])
        return marg, log_ev, bad

    def _sample_chunk(self, leaf: Any, prior: Any, internal: list[Any], is_log: bool, rng: Any):
        """Exact posterior sample of the whole tree for one chunk (Gumbel-max per node)."""
        ops, L = self.ops, self.grammar.L
        up, _, _, bad, _ = self._upward(leaf, internal, "sum", is_log)
        score, total = self._root(up[0], prior, "sum")
        bad = bad | (total <= 0)
        sym, rng = self._gumbel_argmax(score, rng)  # (B,)
        b = sym.shape[0]
        symbols = [sym.reshape(b, 1)]
        rules = []
        for lev in range(L):
            t = self.levels[lev]
            w4 = self._rule_weights(t, self._gather_children(t, up[lev + 1]))  # (m, v, B, n)
            parent = symbols[-1]
            n = parent.shape[1]
            idx = ops.expand_index(parent.reshape(1, 1, b, n), (t.m, 1, b, n))
            row = ops.take_along(w4, idx, 1).reshape(t.m, b, n)
            r, rng = self._gumbel_argmax(row, rng)  # (B, n)
            child = t.children_flat[r * t.v_parent + parent]  # (B, n, s)
            rules.append(r)
            symbols.append(child.reshape(b, n * t.s))
        return symbols, rules, bad, rng

    def _gumbel_argmax(self, weights: Any, rng: Any) -> tuple[Any, Any]:
        """Sample ``argmax(log w + Gumbel)`` along axis 0 (an exact categorical draw)."""
        ops = self.ops
        u, rng = ops.uniform(rng, tuple(weights.shape))
        tiny = 1e-30
        gumbel = -ops.log(-ops.log(u + tiny) + tiny)
        pos = weights > 0
        keys = ops.where(pos, ops.log(ops.where(pos, weights, 1.0)) + gumbel, -np.inf)
        return ops.argmax(keys, 0), rng

    def _map_chunk(self, leaf: Any, prior: Any, internal: list[Any], is_log: bool):
        ops, L = self.ops, self.grammar.L
        up, best, log_z, bad, _ = self._upward(leaf, internal, "max", is_log)
        score, total = self._root(up[0], prior, "max")
        zero = total <= 0
        bad = bad | zero
        log_p = log_z + ops.log(ops.where(zero, 1.0, total))
        sym = ops.argmax(score, 0)
        b = sym.shape[0]
        symbols = [sym.reshape(b, 1)]
        rules = []
        for lev in range(L):
            t = self.levels[lev]
            parent = symbols[-1]
            n = parent.shape[1]
            r = ops.take_along(best[lev], parent.reshape(1, b, n), 0).reshape(b, n)
            child = t.children_flat[r * t.v_parent + parent]
            rules.append(r)
            symbols.append(child.reshape(b, n * t.s))
        return symbols, rules, log_p, bad

    # ------------------------------------------------------------------ input handling
    def _prepare(
        self,
        evidence: Any,
        log: bool | None,
        prior: Any,
        internal_evidence: Mapping[int, Any] | None,
    ) -> tuple[Any, bool, Any, list[Any], int]:
        """Validate the inputs of ``run``/``sample``/``map``.

        Returns ``(arr, is_log, prior, internal, batch)``: ``arr`` the leaf evidence
        ``(B, d, v_L)`` (numpy, or a torch/JAX array of the backend's own library, kept on
        its device), ``prior`` ``(B, v_0)`` float64 with rows summing to 1, ``internal[l]``
        ``(B, n_l, v_l)`` float64 likelihoods or None. Same checks for every library (see
        :mod:`hiergen.inference.inputs`); bad input raises :class:`EvidenceError`.
        """
        g = self.grammar
        is_log = bool(log)
        if isinstance(evidence, Evidence):
            if log is False:
                raise EvidenceError("an Evidence object holds log-likelihoods; do not pass log=False")
            evidence, is_log = evidence.log_lik, True
        if log is not None and not isinstance(log, (bool, np.bool_)):
            raise EvidenceError(f"log must be True, False or None, got {log!r}")
        arr, lib = inputs.as_checked_array(evidence, "evidence")
        if arr.ndim == 2:
            arr = arr[None]
        shape = tuple(arr.shape)
        want = (g.d, g.vocab_sizes[-1])
        if len(shape) != 3 or shape[1:] != want:
            raise EvidenceError(
                f"evidence must have shape (batch, d, v_L) = (batch, {want[0]}, {want[1]}), got {shape}"
            )
        inputs.check_values(arr, lib, "evidence", is_log)
        if lib != "numpy" and lib != self.ops.name:  # another library's array: via the host
            arr = inputs.to_numpy_float64(arr, lib)
        batch = shape[0]
        prior_arr = g.root_prior if prior is None else prior
        prior_arr = inputs.check_prior(prior_arr, batch, g.n_classes)
        internal: list[Any] = [None] * (g.L + 1)
        for lev, ev in (internal_evidence or {}).items():
            if isinstance(lev, (bool, np.bool_)) or not isinstance(lev, (int, np.integer)) or not 0 <= lev <= g.L:
                raise EvidenceError(f"internal_evidence level must be in 0..{g.L}, got {lev!r}")
            name = f"internal_evidence[{lev}]"
            e, elib = inputs.as_checked_array(ev, name)
            want_l = (g.n_nodes(lev), g.vocab_sizes[lev])
            if tuple(e.shape) not in (want_l, (batch,) + want_l):
                raise EvidenceError(
                    f"{name} must have shape {(batch,) + want_l} or {want_l}, got {tuple(e.shape)}"
                )
            inputs.check_values(e, elib, name, is_log=False, batched=e.ndim == 3)
            internal[int(lev)] = np.broadcast_to(inputs.to_numpy_float64(e, elib), (batch,) + want_l)
        return arr, is_log, prior_arr, internal, batch

    def _chunks(
        self,
        arr: Any,
        prior: np.ndarray,
        internal: list[Any],
        batch: int,
        is_log: bool = False,
        log_offset: np.ndarray | None = None,
    ):
        """Yield ``(start, stop, leaf, prior, internal)`` backend arrays per chunk.

        Leaf and internal evidence are made scale free first (every row divided by its
        maximum, log-likelihoods exponentiated after the shift, see
        :func:`hiergen.inference.inputs.scale_rows`), so the algorithm gets likelihoods in
        ``[0, 1]``; the removed ``(stop - start,)`` log scales are written to
        ``log_offset[start:stop]`` (float64) for the caller to add to log-evidences.
        JAX pads the last chunk to the chunk size so one compiled function serves all.
        """
        ops = self.ops
        lib = inputs.array_library(arr)
        size = self.batch_chunk
        for start in range(0, batch, size):
            stop = min(batch, start + size)
            sl = slice(start, stop)
            pad = (size - (stop - start)) if (ops.name == "jax" and batch > size) else 0
            leaf, off = inputs.scale_rows(arr[sl], lib, is_log)
            pr = prior[sl]
            inn = []
            for e in internal:
                if e is not None:
                    e, o = inputs.scale_rows(e[sl], "numpy", False)
                    off = off + o
                inn.append(e)
            if log_offset is not None:
                log_offset[sl] = off
            if pad:
                leaf = _pad(leaf, pad)
                pr = _pad(pr, pad)
                inn = [None if e is None else _pad(e, pad) for e in inn]
            # to the algorithm's symbol-major layout: (B, n, v) -> (v, B, n), (B, v0) -> (v0, B)
            yield (
                start,
                stop,
                ops.transpose(ops.asarray(leaf), (2, 0, 1)),
                ops.transpose(ops.asarray(pr), (1, 0)),
                [None if e is None else ops.transpose(ops.asarray(e), (2, 0, 1)) for e in inn],
            )

    def _map_chunks(self, fn: Any, chunks: Any, pass_start: bool = False) -> Any:
        """Apply ``fn(leaf, prior, internal)`` (``fn(start, leaf, ...)`` with ``pass_start``)
        to every chunk, yielding ``((start, stop), out)`` in order. numpy runs chunks on a
        small thread pool (its kernels release the GIL); JAX and torch parallelise inside
        their own kernels."""
        if pass_start:
            call = fn
        else:
            def call(start: int, leaf: Any, pr: Any, inn: Any) -> Any:
                return fn(leaf, pr, inn)

        if self.ops.name != "numpy" or self.threads <= 1:
            for start, stop, leaf, pr, inn in chunks:
                yield (start, stop), call(start, leaf, pr, inn)
            return
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        def work(item: Any) -> Any:
            start, stop, leaf, pr, inn = item
            with self._context():
                return (start, stop), call(start, leaf, pr, inn)

        # one BLAS thread per worker: the workers already use every core
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(self.threads) as pool:
            yield from pool.map(work, chunks)

    def _fn(self, key: str, fn: Any) -> Any:
        if key not in self._compiled:
            self._compiled[key] = self.ops.compile(fn)
        return self._compiled[key]

    def _context(self):
        if self.ops.name == "torch":
            return self.ops.torch.inference_mode()
        if self.ops.name == "numpy":
            return np.errstate(divide="ignore", invalid="ignore", under="ignore")
        import contextlib

        return contextlib.nullcontext()

    def _report_bad(self, bad: np.ndarray, what: str, partial: Any = None) -> None:
        if self.on_inconsistent == "raise" and bad.any():
            items = np.flatnonzero(bad).tolist()
            shown = ", ".join(map(str, items[:20])) + (" ..." if len(items) > 20 else "")
            err = InconsistentEvidenceError(
                f"no datum of the grammar can explain the evidence of {len(items)} batch item(s): "
                f"[{shown}] ({what}). Check the evidence, or use on_inconsistent='flag' to get "
                "them marked (NaN marginals, -inf log-evidence) instead; with float32 and very "
                "sharp evidence, dtype='float64' may avoid underflow.",
                items,
            )
            err.posterior = partial  # everything computed is kept on the exception
            raise err

    # ------------------------------------------------------------------ public API
    def run(
        self,
        evidence: Any,
        *,
        log: bool | None = None,
        prior: Any = None,
        internal_evidence: Mapping[int, Any] | None = None,
        marginals: bool = True,
    ) -> Posterior:
        """Marginals of every node at every level and the log-evidence, for a batch.

        Parameters
        ----------
        evidence : :class:`~hiergen.models.noise.Evidence`, or leaf likelihoods
            ``(batch, d, v_L)`` (``(d, v_L)`` for one item); ``log=True`` when they are
            log-likelihoods. numpy arrays, lists, torch tensors or JAX arrays of a real
            float or integer dtype; likelihoods finite and ``>= 0``, log-likelihoods without
            NaN or ``+inf`` (otherwise :class:`EvidenceError`). Any scale works: every leaf's
            row is divided by its maximum in float64 first (docs/evidence.md).
        prior : class prior override ``(n_classes,)`` or ``(batch, n_classes)``
            (class-conditional inference: a one-hot prior). Rows must sum to 1 within
            1e-6 (:class:`EvidenceError` otherwise, also for an all-zero row).
        internal_evidence : ``{level: likelihoods (batch, n_l, v_l) or (n_l, v_l)}`` to clamp
            or weigh internal nodes (same checks and scaling as the leaf likelihoods).
        marginals : False to compute only the log-evidence (upward pass only).

        Returns
        -------
        :class:`Posterior` (numpy arrays).
        """
        t0 = time.perf_counter()
        arr, is_log, prior_arr, internal, batch = self._prepare(evidence, log, prior, internal_evidence)
        if self.engine == "kernel":
            return self._kernel_call(t0, arr, is_log, prior_arr, internal, marginals=marginals)[0]
        ops, L = self.ops, self.grammar.L
        g = self.grammar
        out_dtype = np.float64 if ops.float64 else np.float32
        out = (
            [np.empty((batch, g.n_nodes(lev), g.vocab_sizes[lev]), out_dtype) for lev in range(L + 1)]
            if marginals
            else []
        )
        log_ev = np.empty(batch)
        offset = np.zeros(batch)
        bad = np.zeros(batch, dtype=bool)
        # the chunks carry scale-free likelihoods (see _chunks): never log-domain here
        fn = self._fn(
            f"forward-False-{marginals}",
            lambda leaf, pr, inn: self._forward(leaf, pr, inn, False, marginals),
        )
        chunks = self._chunks(arr, prior_arr, internal, batch, is_log, offset)
        with self._context():
            for (start, stop), (mg, le, bd) in self._map_chunks(fn, chunks):
                k = stop - start
                log_ev[start:stop] = ops.to_numpy(le)[:k]
                bad[start:stop] = ops.to_numpy(bd)[:k]
                for lev in range(len(mg)):  # back from (v, B, n) to (B, n, v)
                    out[lev][start:stop] = ops.to_numpy(mg[lev])[:, :k].transpose(1, 2, 0)
        log_ev += offset
        if bad.any():
            log_ev[bad] = -np.inf
            for x in out:
                x[bad] = np.nan
        post = Posterior(
            marginals=out,
            log_evidence=log_ev,
            inconsistent=bad,
            backend=ops.name,
            dtype=str(np.dtype(str(ops.dtype).replace("torch.", ""))),
            device=ops.device_name,
            seconds=time.perf_counter() - t0,
        )
        self._report_bad(bad, "marginals", post)
        return post

    def log_evidence(self, evidence: Any, **kwargs: Any) -> np.ndarray:
        """``(batch,)`` log p(evidence) (upward pass only)."""
        return self.run(evidence, marginals=False, **kwargs).log_evidence

    def sample(
        self,
        evidence: Any,
        seed: Any = 0,
        *,
        log: bool | None = None,
        prior: Any = None,
        internal_evidence: Mapping[int, Any] | None = None,
    ) -> TreeSample:
        """One exact posterior sample of the whole latent tree per batch item.

        The root is drawn from its marginal, then every node's rule given its parent's
        sampled symbol and its children's upward messages, level by level.
        ``seed``: int, or the backend's generator (numpy Generator, JAX key, torch Generator).

        Returns a :class:`PosteriorSample` (a :class:`~hiergen.models.grammar.TreeSample`,
        numpy) with an ``inconsistent`` ``(batch,)`` bool attribute. Items no datum can
        explain raise :class:`InconsistentEvidenceError` (``on_inconsistent="raise"``) or,
        with ``"flag"``, are marked there and get the sentinel ``-1`` for every symbol and
        rule (leaves included), never an ordinary-looking tree.
        """
        arr, is_log, prior_arr, internal, batch = self._prepare(evidence, log, prior, internal_evidence)
        if self.engine == "kernel":
            return self._kernel_call(0.0, arr, is_log, prior_arr, internal, marginals=False, sample=True,
                                     seed=seed)[1]
        ops = self.ops
        rng = ops.make_rng(seed)
        bad = np.zeros(batch, dtype=bool)
        fn = self._fn(
            "sample-False",
            lambda leaf, pr, inn, key: self._sample_chunk(leaf, pr, inn, False, key),
        )
        trees = _TreeCollector(ops, self.grammar)
        chunks = self._chunks(arr, prior_arr, internal, batch, is_log)
        if ops.name == "numpy":
            # one independent child generator per chunk, so chunks can run on the thread
            # pool and the draws do not depend on how many threads ran them
            keys = rng.spawn(-(-batch // self.batch_chunk))
            results = self._map_chunks(
                lambda start, leaf, pr, inn: fn(leaf, pr, inn, keys[start // self.batch_chunk]),
                chunks,
                pass_start=True,
            )
        else:
            def sequential() -> Any:
                nonlocal rng
                for start, stop, leaf, pr, inn in chunks:
                    out = fn(leaf, pr, inn, rng)
                    rng = out[3]
                    yield (start, stop), out

            results = sequential()
        with self._context():
            for (start, stop), (s, r, bd, _) in results:
                bad[start:stop] = ops.to_numpy(bd)[: stop - start]
                trees.add(s, r, stop - start)
        tree = trees.tree(bad)
        self._report_bad(bad, "posterior sampling", tree)
        return tree

    def map(
        self,
        evidence: Any,
        *,
        log: bool | None = None,
        prior: Any = None,
        internal_evidence: Mapping[int, Any] | None = None,
    ) -> MapEstimate:
        """Max-product decoding: the most probable latent tree given the evidence.

        Returns a :class:`MapEstimate`; items no datum can explain raise
        :class:`InconsistentEvidenceError`, or with ``on_inconsistent="flag"`` are marked in
        ``MapEstimate.inconsistent`` with ``log_prob = -inf`` and ``-1`` symbols and rules.
        """
        arr, is_log, prior_arr, internal, batch = self._prepare(evidence, log, prior, internal_evidence)
        if self.engine == "kernel":
            return self._kernel_call(0.0, arr, is_log, prior_arr, internal, mode="max")[1]
        ops = self.ops
        log_p = np.empty(batch)
        offset = np.zeros(batch)
        bad = np.zeros(batch, dtype=bool)
        fn = self._fn("map-False", lambda leaf, pr, inn: self._map_chunk(leaf, pr, inn, False))
        chunks = self._chunks(arr, prior_arr, internal, batch, is_log, offset)
        trees = _TreeCollector(ops, self.grammar)
        with self._context():
            for (start, stop), (s, r, lp, bd) in self._map_chunks(fn, chunks):
                log_p[start:stop] = ops.to_numpy(lp)[: stop - start]
                bad[start:stop] = ops.to_numpy(bd)[: stop - start]
                trees.add(s, r, stop - start)
        tree = trees.tree(bad)
        log_p += offset
        log_p[bad] = -np.inf
        est = MapEstimate(tree=tree, log_prob=log_p, inconsistent=bad)
        self._report_bad(bad, "MAP decoding", est)
        return est

    def run_and_sample(
        self,
        evidence: Any,
        seed: Any = 0,
        *,
        log: bool | None = None,
        prior: Any = None,
        internal_evidence: Mapping[int, Any] | None = None,
    ) -> tuple[Posterior, TreeSample]:
        """``(run(evidence), sample(evidence, seed))`` — in one pass with the kernel engine
        (the sample reuses the upward messages of the marginals; the result is identical to
        the two separate calls)."""
        kw = {"log": log, "prior": prior, "internal_evidence": internal_evidence}
        if self.engine != "kernel":
            return self.run(evidence, **kw), self.sample(evidence, seed, **kw)
        t0 = time.perf_counter()
        arr, is_log, prior_arr, internal, _ = self._prepare(evidence, log, prior, internal_evidence)
        post, tree = self._kernel_call(t0, arr, is_log, prior_arr, internal, marginals=True, sample=True,
                                       seed=seed)
        return post, tree

    # ------------------------------------------------------------------ kernel engine
    def _kernel_call(self, t0: float, arr: Any, is_log: bool, prior_arr: np.ndarray, internal: list[Any],
                     *, marginals: bool = True, sample: bool = False, seed: Any = None,
                     mode: str = "sum") -> tuple[Any, Any]:
        """Run the numba kernel (:mod:`hiergen.inference.bp_kernel`) on prepared inputs.

        Returns ``(Posterior, TreeSample)`` for ``mode="sum"`` (the tree only with ``sample``) or ``(None, MapEstimate)`` for ``mode="max"``. Posterior samples use one uniform
        per node drawn up front from ``numpy.random.default_rng(seed)``: deterministic given
        the seed, independent of the number of threads."""
        from hiergen.inference.bp_kernel import BPKernel

        if self._kernel is None:
            self._kernel = BPKernel(self.grammar, self.ops.dtype)
        k = self._kernel
        batch = int(arr.shape[0])
        tree = mode == "max" or sample
        uniforms = None
        if mode == "sum" and sample:
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            uniforms = rng.random((batch, k.n_uniforms))
        with self._context():
            res = k.run(np.asarray(arr), is_log, prior_arr, internal, mode=mode,
                        marginals=marginals and mode == "sum", uniforms=uniforms, tree=tree,
                        threads=self.threads)
        bad = res.bad
        ts = None
        if tree:  # flagged items get the sentinel -1 everywhere, as on the array path
            for x in res.symbols + res.rules:
                x[bad] = -1
            ts = PosteriorSample(leaves=res.symbols[-1], symbols=res.symbols, rules=res.rules,
                                 inconsistent=bad)
        if mode == "max":
            res.log_evidence[bad] = -np.inf
            est = MapEstimate(tree=ts, log_prob=res.log_evidence, inconsistent=bad)
            self._report_bad(bad, "MAP decoding", est)
            return None, est
        if bad.any():
            res.log_evidence[bad] = -np.inf
            for x in res.marginals:
                x[bad] = np.nan
        post = Posterior(
            marginals=res.marginals, log_evidence=res.log_evidence, inconsistent=bad,
            backend="numpy", dtype=str(k.dtype), device="cpu", seconds=time.perf_counter() - t0,
            extra={"engine": "kernel"},
        )
        self._report_bad(bad, "marginals" if marginals else ("posterior sampling" if tree else "log-evidence"),
                         post if not tree or marginals else ts)
        return post, ts


def _choose_engine(engine: str, backend: str) -> str:
    """Resolve ``engine`` (``auto``/``kernel``/``array``) for ``backend``."""
    if engine not in ("auto", "kernel", "array"):
        raise BackendError(f"engine must be 'auto', 'kernel' or 'array', got {engine!r}")
    if engine == "array" or (engine == "auto" and backend != "numpy"):
        return "array"
    if backend != "numpy":
        raise BackendError(f"engine='kernel' runs on the numpy backend only, not {backend!r}")
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        if engine == "kernel":
            raise BackendError("engine='kernel' needs numba: pip install numba") from exc
        return "array"
    return "kernel"


class _TreeCollector:
    """Gathers per-chunk trees (backend arrays) into one numpy :class:`PosteriorSample`."""

    def __init__(self, ops: ArrayOps, grammar: Grammar) -> None:
        self.ops = ops
        depth = grammar.L
        # an empty block per level so that a batch of 0 gives (0, n_l) arrays
        self.symbols: list[list[np.ndarray]] = [
            [np.zeros((0, grammar.n_nodes(lev)), np.int64)] for lev in range(depth + 1)
        ]
        self.rules: list[list[np.ndarray]] = [
            [np.zeros((0, grammar.n_nodes(lev)), np.int64)] for lev in range(depth)
        ]

    def add(self, symbols: list[Any], rules: list[Any], k: int) -> None:
        """Append the first ``k`` items of a chunk (the rest is JAX padding)."""
        for acc, x in zip(self.symbols + self.rules, list(symbols) + list(rules)):
            acc.append(self.ops.to_numpy(x)[:k].astype(np.int64))

    def tree(self, bad: np.ndarray) -> PosteriorSample:
        """The collected trees; items flagged in ``bad`` (batch,) get ``-1`` everywhere."""
        symbols = [np.concatenate(x, 0) for x in self.symbols]
        rules = [np.concatenate(x, 0) for x in self.rules]
        for x in symbols + rules:
            x[bad] = -1
        return PosteriorSample(leaves=symbols[-1], symbols=symbols, rules=rules, inconsistent=bad)


def _pad(x: Any, pad: int) -> Any:
    """Pad the batch axis by repeating the first row (its results are discarded)."""
    if isinstance(x, np.ndarray):
        return np.concatenate([x, np.repeat(x[:1], pad, axis=0)], 0)
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        return torch.cat([x, x[:1].repeat_interleave(pad, 0)], 0)
    import jax.numpy as jnp

    return jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)], 0)
