"""Compiled CPU kernel (numba) for exact belief propagation — the numpy backend's fast engine.

The same algorithm as :mod:`hiergen.inference.bp` (same normalisations, same ``log_z``
bookkeeping, same conventions for inconsistent evidence), but one batch item at a time in
compiled code, the items spread over threads (``prange``). Everything an item needs
(messages of every level, a few per-node rows) lives in one per-thread scratch buffer of
``~ 2 x sum_l n_l v_l`` floats (~0.5 MB at L = 10, v = 32, float32): it stays in the core's
L2 cache, and the deepest levels are processed in tiles of nodes that fit in L1.

Layout. Messages of level ``l`` are stored symbol-major, ``(v_l, n_l)``, with the nodes in a
*storage order* in which the children at position ``j`` of all parents form one contiguous
block in their parents' order: node ``c = i s_l + j`` of level ``l+1`` is stored at
``j n_l + pos_l(i)``. Every rule then multiplies and adds whole contiguous rows (SIMD over the
nodes of a level). ``perm[l]`` maps a node's natural index to its storage position and
``iperm[l]`` back; inputs and outputs keep the library's natural ``(batch, n_l, v_l)`` order.

Covered: every grammar the engine supports — ragged rules (loops stop at ``n_rules``; padding
never contributes), non-uniform probabilities, ambiguous rules, any branching ``s_l >= 1``
per level, a per-item prior, internal evidence at any level, log or linear evidence, float32
or float64 messages (``log_z`` is always accumulated in float64). Posterior samples use
uniforms drawn up front (one per node), so they are deterministic given the seed and do not
depend on the number of threads.

This module imports numba at import time; :mod:`hiergen.inference.bp` imports it lazily.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from hiergen.inference.inputs import scale_rows
from hiergen.models.grammar import Grammar

_OPTS = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy", "boundscheck": False}
_SUM, _MAX = 0, 1
# numba's fallback "workqueue" threading layer aborts on concurrent parallel launches from
# several Python threads: calls into the kernel are serialised (each uses every core anyway)
_LAUNCH = threading.Lock()


# ---------------------------------------------------------------------------- per-level steps
# Inner loops run over row *views* (``x[lo:hi]`` indexed from 0): numba then needs no
# negative-index check per element and LLVM vectorises them (~30x faster than ``x[o + p]``).
# A level's rows are ``rs`` apart (``n`` plus one cache line when long), so that walking down
# a column touches distinct L1 sets (no 4 KiB aliasing in the transposes).
@njit(**_OPTS)
def _normalise(x, v, n, rs, z, want_log):  # pragma: no cover - compiled
    """Normalise ``x`` ``(v, n)`` (row stride ``rs``) over symbols per node; return
    ``(sum log z, any z <= 0)``."""
    zv = z[:n]
    zv[:] = 0.0
    for a in range(v):
        row = x[a * rs:a * rs + n]
        for p in range(n):
            zv[p] += row[p]
    bad = False
    lz = 0.0
    for p in range(n):
        if zv[p] <= 0.0:
            bad = True
            zv[p] = 1.0
        if want_log:
            lz += math.log(np.float64(zv[p]))
        zv[p] = 1.0 / zv[p]
    for a in range(v):
        row = x[a * rs:a * rs + n]
        for p in range(n):
            row[p] *= zv[p]
    return lz, bad


@njit(**_OPTS)
def _exp32(t, k):  # pragma: no cover - compiled
    """In-place ``exp`` of float32 ``t`` (values <= 0) in vectorisable code: Cephes' expf
    polynomial with the power of two added to the exponent bits; max relative error ~1e-7.
    Arguments below -87 (``e^-87 ~ 1.6e-38``, the float32 normal range) give exactly 0."""
    n = t.shape[0]
    for i in range(n):
        v = t[i]
        kf = np.floor(v * np.float32(1.4426950408889634) + np.float32(0.5))
        r = v - kf * np.float32(0.693359375) - kf * np.float32(-2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        ok = v >= np.float32(-87.0)
        t[i] = p if ok else np.float32(0.0)
        k[i] = np.int32(kf) if ok else np.int32(0)
    bits = t.view(np.int32)
    for i in range(n):
        bits[i] += k[i] << 23


@njit(**_OPTS)
def _leaves(ev, b, is_log, v, d, rs, iperm, x, k, fast_exp):  # pragma: no cover - compiled
    """Leaf messages of item ``b`` into ``x`` ``(v, d)`` (storage order), unnormalised.
    Scale free: log-evidence is shifted by its per-leaf max in the evidence's precision and
    exponentiated row by row; likelihoods are divided by their per-leaf max (a row of zeros
    stays zero). The removed log scales are returned summed (float64), so any finite
    likelihood (1e-300 or 1e308) fits the message dtype."""
    shift = 0.0
    for q in range(d):  # storage order: the strided writes stay in L1 (padded rows)
        e = ev[b, iperm[q]]
        xq = x[q:]
        mx = e[0]
        for a in range(v):
            mx = max(mx, e[a])
        if is_log:
            if not np.isfinite(mx):
                mx = 0.0
            shift += np.float64(mx)
            for a in range(v):
                xq[a * rs] = e[a] - mx
        elif mx > 0:
            shift += math.log(np.float64(mx))
            inv = 1.0 / np.float64(mx)
            if inv == np.inf:  # a subnormal maximum: divide instead of multiplying
                for a in range(v):
                    xq[a * rs] = np.float64(e[a]) / np.float64(mx)
            else:
                for a in range(v):
                    xq[a * rs] = np.float64(e[a]) * inv
        else:
            for a in range(v):
                xq[a * rs] = 0.0
    if is_log:
        for a in range(v):
            row = x[a * rs:a * rs + d]
            if fast_exp:
                _exp32(row, k[:d])
            else:
                for i in range(d):
                    row[i] = np.exp(row[i])
    return shift


@njit(**_OPTS)
def _internal(x, intev, base, v, n, rs, iperm):  # pragma: no cover - compiled
    """Multiply ``x`` ``(v, n)`` by internal evidence stored natural ``(n, v)`` at ``base``."""
    for q in range(n):
        e = intev[base + iperm[q] * v:base + iperm[q] * v + v]
        xq = x[q:]
        for a in range(v):
            xq[a * rs] *= e[a]


@njit(**_OPTS)
def _up_level(child, out, best, ch, pr, nr, vp, m, s, n, rsc, rsp, uniform, mode, tile, tmp):  # pragma: no cover
    """One upward step: ``out[a, p] = sum_k p_ak prod_j child[c_akj, j n + p]`` (or max with
    the argmax rule in ``best``). ``child`` ``(v_c, s n)`` rows ``rsc`` apart, ``out``
    ``(v_p, n)`` rows ``rsp`` apart."""
    for p0 in range(0, n, tile):
        p1 = min(n, p0 + tile)
        w_ = p1 - p0
        for a in range(vp):
            ov = out[a * rsp + p0:a * rsp + p1]
            ov[:] = 0.0
            bv = best[a * rsp + p0:a * rsp + p1] if mode == _MAX else best[:0]
            if mode == _MAX:
                bv[:] = 0
            for k in range(nr[a]):
                r = a * m + k
                w = pr[r]
                x0 = ch[r * s] * rsc
                c0 = child[x0 + p0:x0 + p1]
                if s == 2 and mode == _SUM:
                    x1 = ch[r * 2 + 1] * rsc + n
                    c1 = child[x1 + p0:x1 + p1]
                    if uniform:
                        for p in range(w_):
                            ov[p] += c0[p] * c1[p]
                    else:
                        for p in range(w_):
                            ov[p] += c0[p] * c1[p] * w
                    continue
                t = tmp[:w_]
                for p in range(w_):
                    t[p] = c0[p] * w
                for j in range(1, s):
                    xj = ch[r * s + j] * rsc + j * n
                    cj = child[xj + p0:xj + p1]
                    for p in range(w_):
                        t[p] *= cj[p]
                if mode == _SUM:
                    for p in range(w_):
                        ov[p] += t[p]
                else:
                    for p in range(w_):
                        if t[p] > ov[p]:
                            ov[p] = t[p]
                            bv[p] = k


@njit(**_OPTS)
def _down_level(g, up_c, dn, ch, pr, nr, vp, vc, m, s, n, rsp, rsc, uniform, tile, tmp):  # pragma: no cover
    """One downward step: ``dn[c, j n + p] = sum_{r: c_rj = c} g[a_r, p] p_r prod_{k!=j} up_c[..]``.
    ``g`` ``(v_p, n)`` parent factor (rows ``rsp`` apart), ``up_c``/``dn`` ``(v_c, s n)``."""
    dn[:vc * rsc] = 0.0
    for p0 in range(0, n, tile):
        p1 = min(n, p0 + tile)
        w_ = p1 - p0
        for a in range(vp):
            gv = g[a * rsp + p0:a * rsp + p1]
            for k in range(nr[a]):
                r = a * m + k
                w = pr[r]
                x0 = ch[r * s] * rsc
                d0 = dn[x0 + p0:x0 + p1]
                if s == 1:
                    for p in range(w_):
                        d0[p] += gv[p] * w
                elif s == 2:
                    x1 = ch[r * 2 + 1] * rsc + n
                    d1 = dn[x1 + p0:x1 + p1]
                    u0 = up_c[x0 + p0:x0 + p1]
                    u1 = up_c[x1 + p0:x1 + p1]
                    if uniform:
                        for p in range(w_):
                            d0[p] += gv[p] * u1[p]
                            d1[p] += gv[p] * u0[p]
                    else:
                        for p in range(w_):
                            gp = gv[p] * w
                            d0[p] += gp * u1[p]
                            d1[p] += gp * u0[p]
                else:
                    t = tmp[:w_]
                    for j in range(s):
                        for p in range(w_):
                            t[p] = gv[p] * w
                        for jj in range(s):
                            if jj != j:
                                xk = ch[r * s + jj] * rsc + jj * n
                                uk = up_c[xk + p0:xk + p1]
                                for p in range(w_):
                                    t[p] *= uk[p]
                        xj = ch[r * s + j] * rsc + j * n
                        dj = dn[xj + p0:xj + p1]
                        for p in range(w_):
                            dj[p] += t[p]


@njit(**_OPTS)
def _marginals_out(dn, up, v, n, rs, zd, zm, iperm, out, last, tmp):  # pragma: no cover - compiled
    """Rescale ``dn`` ``(v, n)`` per node (unless ``last``) and write the marginals
    ``dn * up`` normalised, natural order ``(n, v)``, to ``out`` (via ``tmp`` ``(v, n)``)."""
    zdv = zd[:n]
    zmv = zm[:n]
    zdv[:] = 0.0
    zmv[:] = 0.0
    for a in range(v):
        d = dn[a * rs:a * rs + n]
        u = up[a * rs:a * rs + n]
        for q in range(n):
            zdv[q] += d[q]
            zmv[q] += d[q] * u[q]
    for q in range(n):
        zdv[q] = 1.0 / zdv[q] if zdv[q] > 0.0 else 1.0
        zmv[q] = 1.0 / zmv[q] if zmv[q] > 0.0 else 0.0
    for a in range(v):
        d = dn[a * rs:a * rs + n]
        u = up[a * rs:a * rs + n]
        t = tmp[a * rs:a * rs + n]
        for q in range(n):
            t[q] = d[q] * u[q] * zmv[q]
    for q in range(n):  # storage order: the column reads stay in L1 (padded rows)
        o = out[iperm[q] * v:(iperm[q] + 1) * v]
        tq = tmp[q:]
        for a in range(v):
            o[a] = tq[a * rs]
    if not last:
        for a in range(v):
            d = dn[a * rs:a * rs + n]
            for q in range(n):
                d[q] *= zdv[q]


@njit(**_OPTS)
def _pick(w, k_count, u):  # pragma: no cover - compiled
    """Index drawn from unnormalised weights ``w[:k_count]`` by inverse CDF with uniform ``u``."""
    tot = 0.0
    for k in range(k_count):
        tot += np.float64(w[k])
    t = u * tot
    acc = 0.0
    last = 0
    for k in range(k_count):
        if w[k] > 0.0:
            last = k
            acc += np.float64(w[k])
            if acc > t:
                return k
    return last


# ---------------------------------------------------------------------------- one item
# G: the packed grammar, (vs, ns, ss, ms, rs, ch, choff, pr, proff, nr, nroff, uni, luni,
# uoff, perm, iperm, poff, boff) -- see BPKernel.
@njit(**_OPTS)
def _upward(ev, b, is_log, intev, ioff, G, mode, up, best, z, z2, t, k, tile, fast_exp):  # pragma: no cover
    """Leaf messages and the upward pass of item ``b``; returns ``(log_z, bad)``."""
    vs, ns, ss, ms, rs, ch, choff, pr, proff, nr, nroff, uni, luni, uoff, perm, iperm, poff, boff = G
    L = ns.shape[0] - 1
    v, d = vs[L], ns[L]
    xl = up[uoff[L]:uoff[L + 1]]
    ipl = iperm[poff[L]:poff[L] + d]
    lz = _leaves(ev, b, is_log, v, d, rs[L], ipl, xl, k, fast_exp)
    lzl, bad = _normalise(xl, v, d, rs[L], z, True)
    lz += lzl
    if ioff[L] >= 0:
        _internal(xl, intev, ioff[L] + b * d * v, v, d, rs[L], ipl)
        lzl, bz = _normalise(xl, v, d, rs[L], z, True)
        lz += lzl
        bad = bad or bz
    for lev in range(L - 1, -1, -1):
        vp, n, s, m = vs[lev], ns[lev], ss[lev], ms[lev]
        xp = up[uoff[lev]:uoff[lev + 1]]
        _up_level(up[uoff[lev + 1]:uoff[lev + 2]], xp, best[boff[lev]:boff[lev + 1]],
                  ch[choff[lev]:choff[lev + 1]], pr[proff[lev]:proff[lev + 1]],
                  nr[nroff[lev]:nroff[lev + 1]], vp, m, s, n, rs[lev + 1], rs[lev], uni[lev],
                  mode, tile, z2)
        if ioff[lev] >= 0:
            _internal(xp, intev, ioff[lev] + b * n * vp, vp, n, rs[lev], iperm[poff[lev]:poff[lev] + n])
        lzl, bz = _normalise(xp, vp, n, rs[lev], z, True)
        lz += lzl + luni[lev] * n
        bad = bad or bz
    return lz, bad


@njit(**_OPTS)
def _downward(b, prior, intev, ioff, G, up, dA, dB, z, z2, t, marg, moff, tile):  # pragma: no cover
    """Downward pass and marginals of levels 1..L of item ``b`` (level 0 written by caller)."""
    vs, ns, ss, ms, rs, ch, choff, pr, proff, nr, nroff, uni, luni, uoff, perm, iperm, poff, boff = G
    L = ns.shape[0] - 1
    for a in range(vs[0]):
        dA[a * rs[0]] = prior[b, a]
    for lev in range(L):
        vp, n, s, m = vs[lev], ns[lev], ss[lev], ms[lev]
        vc, nc = vs[lev + 1], ns[lev + 1]
        g = dA[:vp * rs[lev]]
        if ioff[lev] >= 0:
            _internal(g, intev, ioff[lev] + b * n * vp, vp, n, rs[lev], iperm[poff[lev]:poff[lev] + n])
        up_c = up[uoff[lev + 1]:uoff[lev + 2]]
        dn = dB[:vc * rs[lev + 1]]
        _down_level(g, up_c, dn, ch[choff[lev]:choff[lev + 1]], pr[proff[lev]:proff[lev + 1]],
                    nr[nroff[lev]:nroff[lev + 1]], vp, vc, m, s, n, rs[lev], rs[lev + 1], uni[lev],
                    tile, z)
        o = moff[lev + 1] + b * nc * vc
        _marginals_out(dn, up_c, vc, nc, rs[lev + 1], z, z2, iperm[poff[lev + 1]:poff[lev + 1] + nc],
                       marg[o:o + nc * vc], lev + 1 == L, t)
        dA, dB = dB, dA


@njit(**_OPTS)
def _root(b, prior, up, v0, rs0, mode):  # pragma: no cover - compiled
    """Root total (sum or max) and argmax of ``prior * up0``."""
    tot = 0.0
    arg = 0
    best = -1.0
    for a in range(v0):
        sc = np.float64(prior[b, a]) * np.float64(up[a * rs0])
        if mode == _SUM:
            tot += sc
        if sc > best:
            best = sc
            arg = a
    if mode == _MAX:
        tot = best
    return tot, arg


@njit(**_OPTS)
def _descend(b, G, up, best, mode, unif, root, syms, soff, rules, roff, w):  # pragma: no cover
    """Sample (``mode`` sum: each node's rule given its parent's symbol and its children's
    upward messages, uniforms ``unif[b]``) or backtrack the MAP tree (``mode`` max)."""
    vs, ns, ss, ms, rs, ch, choff, pr, proff, nr, nroff, uni, luni, uoff, perm, iperm, poff, boff = G
    L = ns.shape[0] - 1
    syms[soff[0] + b] = root
    u_at = 1
    for lev in range(L):
        n, s, m = ns[lev], ss[lev], ms[lev]
        upc = up[uoff[lev + 1]:uoff[lev + 2]]
        rsc = rs[lev + 1]
        ch_l = ch[choff[lev]:choff[lev + 1]]
        pr_l = pr[proff[lev]:proff[lev + 1]]
        nr_l = nr[nroff[lev]:nroff[lev + 1]]
        sb, cb, rb = soff[lev] + b * n, soff[lev + 1] + b * n * s, roff[lev] + b * n
        for i in range(n):
            a = syms[sb + i]
            q = perm[poff[lev] + i]
            if mode == _MAX:
                k = best[boff[lev] + a * rs[lev] + q]
            else:
                kc = nr_l[a]
                for k in range(kc):
                    r = a * m + k
                    t = np.float64(pr_l[r])
                    for j in range(s):
                        t *= upc[ch_l[r * s + j] * rsc + j * n + q]
                    w[k] = t
                k = _pick(w, kc, unif[b, u_at + i])
            rules[rb + i] = k
            r = a * m + k
            for j in range(s):
                syms[cb + i * s + j] = ch_l[r * s + j]
        u_at += n


# ---------------------------------------------------------------------------- the batch
@njit(parallel=True, **_OPTS)
def bp_batch(ev, is_log, prior, intev, ioff, G, mode, want_marg, want_tree, unif, marg, moff,
             log_ev, bad, syms, soff, rules, roff, scratch, iscratch, tile, fast_exp):  # pragma: no cover
    """Exact BP for a batch; items split over ``scratch.shape[0]`` tasks run in parallel.

    ``ev`` ``(B, d, v_L)`` evidence (log when ``is_log``); ``prior`` ``(B, v_0)``; ``intev``
    flat internal evidence with per-level block offsets ``ioff`` (-1: none). Outputs: flat
    ``marg`` (level blocks at ``moff``, each ``(B, n_l, v_l)``), ``log_ev`` ``(B,)``,
    ``bad`` ``(B,)``, flat ``syms``/``rules`` (blocks ``(B, n_l)`` at ``soff``/``roff``).
    ``mode`` 0: sum-product (marginals and/or posterior samples), 1: max-product (MAP).
    """
    vs, ns, ss, ms, rs, ch, choff, pr, proff, nr, nroff, uni, luni, uoff, perm, iperm, poff, boff = G
    B = ev.shape[0]
    L = ns.shape[0] - 1
    n_tasks = scratch.shape[0]
    total = uoff[L + 1]
    wide = 0
    nmax = 0
    for lev in range(L + 1):
        wide = max(wide, vs[lev] * rs[lev])
        nmax = max(nmax, rs[lev])
    tsize = ns[L]
    for task in prange(n_tasks):
        buf = scratch[task]
        up = buf[:total]
        dA = buf[total:total + wide]
        dB = buf[total + wide:total + 2 * wide]
        z = buf[total + 2 * wide:total + 2 * wide + nmax]
        z2 = buf[total + 2 * wide + nmax:total + 2 * wide + 2 * nmax]
        t = buf[total + 2 * wide + 2 * nmax:]
        ib = iscratch[task]
        best = ib[:boff[L]] if mode == _MAX else ib[:0]
        kk = ib[ib.shape[0] - tsize:]
        for b in range((task * B) // n_tasks, ((task + 1) * B) // n_tasks):
            lz, bd = _upward(ev, b, is_log, intev, ioff, G, mode, up, best, z, z2, t, kk, tile, fast_exp)
            tot, arg = _root(b, prior, up, vs[0], rs[0], mode)
            if tot <= 0.0:
                bd = True
                tot = 1.0
            bad[b] = bd
            log_ev[b] = lz + math.log(tot)
            if want_marg:
                for a in range(vs[0]):
                    marg[moff[0] + b * vs[0] + a] = np.float64(prior[b, a]) * up[a * rs[0]] / tot
                _downward(b, prior, intev, ioff, G, up, dA, dB, z, z2, t, marg, moff, tile)
            if want_tree:
                if mode == _SUM:
                    for a in range(vs[0]):
                        t[a] = np.float64(prior[b, a]) * up[a * rs[0]]
                    arg = _pick(t, vs[0], unif[b, 0])
                _descend(b, G, up, best, mode, unif, arg, syms, soff, rules, roff, t)


# ---------------------------------------------------------------------------- Python side
def _storage_perms(branching: tuple[int, ...]) -> list[np.ndarray]:
    """Per level, natural node index -> storage position (see the module docstring)."""
    perms = [np.zeros(1, dtype=np.int64)]
    for s in branching:
        prev = perms[-1]
        n = prev.shape[0]
        i = np.repeat(np.arange(n), s)
        j = np.tile(np.arange(s), n)
        perms.append(j * n + prev[i])
    return perms


@dataclass
class KernelResult:
    """Raw outputs of :meth:`BPKernel.run` (numpy, natural node order)."""

    marginals: list[np.ndarray]
    log_evidence: np.ndarray
    bad: np.ndarray
    symbols: list[np.ndarray] | None
    rules: list[np.ndarray] | None


class BPKernel:
    """The packed grammar tables and the call into the compiled kernel.

    ``dtype``: message dtype, ``float32`` or ``float64`` (log-evidence is float64 always).
    """

    def __init__(self, grammar: Grammar, dtype: Any = np.float64) -> None:
        self.grammar = g = grammar
        self.dtype = np.dtype(dtype)
        L = g.L
        vs = np.asarray(g.vocab_sizes, dtype=np.int64)
        ns = np.asarray([g.n_nodes(lev) for lev in range(L + 1)], dtype=np.int64)
        ss = np.asarray(list(g.branching) + [1], dtype=np.int64)
        ms = np.asarray([g.children[lev].shape[1] for lev in range(L)] + [1], dtype=np.int64)
        line = 64 // self.dtype.itemsize  # one cache line of padding on long rows
        rs = np.asarray([n + line if n * self.dtype.itemsize >= 512 else n for n in ns], dtype=np.int64)
        uniform = [
            bool(np.all(g.n_rules[lev] == ms[lev]))
            and np.allclose(g.probs[lev], 1.0 / ms[lev], rtol=0, atol=1e-15)
            for lev in range(L)
        ]
        # uniform levels: weight 1 per rule, the 1/m goes into log_z (as in bp.py)
        pr = [np.ones(g.probs[lev].size) if uniform[lev] else g.probs[lev].reshape(-1) for lev in range(L)]
        perms = _storage_perms(tuple(g.branching))
        self.uoff = _offsets([int(vs[lev] * rs[lev]) for lev in range(L + 1)])
        self.tables = (
            vs, ns, ss, ms, rs,
            np.concatenate([g.children[lev].reshape(-1) for lev in range(L)]).astype(np.int64),
            _offsets([g.children[lev].size for lev in range(L)]),
            np.concatenate(pr).astype(self.dtype),
            _offsets([x.size for x in pr]),
            np.concatenate([g.n_rules[lev] for lev in range(L)]).astype(np.int64),
            _offsets([g.n_rules[lev].size for lev in range(L)]),
            np.asarray(uniform + [False], dtype=np.bool_),
            np.asarray([-math.log(ms[lev]) if uniform[lev] else 0.0 for lev in range(L)] + [0.0]),
            self.uoff,
            np.concatenate(perms).astype(np.int64),
            np.concatenate([np.argsort(p) for p in perms]).astype(np.int64),
            _offsets([p.size for p in perms]),
            _offsets([int(vs[lev] * rs[lev]) for lev in range(L)]),
        )
        self.vs, self.ns = vs, ns
        self.n_uniforms = 1 + int(ns[:L].sum())
        wide = int((vs * rs).max())
        self.leaf_size = int(ns[L])
        self.best_size = int(self.tables[-1][-1])
        tail = max(wide, int(ms.max()))
        self.scratch_size = int(self.uoff[-1]) + 2 * wide + 2 * int(rs.max()) + tail
        self.tile = 1 << 20  # no node tiling: rows stream from L2 fastest (measured)

    def run(
        self,
        ev: np.ndarray,
        is_log: bool,
        prior: np.ndarray,
        internal: list[Any],
        *,
        mode: str = "sum",
        marginals: bool = True,
        uniforms: np.ndarray | None = None,
        tree: bool = False,
        threads: int = 1,
    ) -> KernelResult:
        """Run the kernel on ``ev`` ``(B, d, v_L)``; ``prior`` ``(B, v_0)``; ``internal`` per
        level ``None`` or ``(B, n_l, v_l)``. ``uniforms`` ``(B, n_uniforms)`` float64 draws in
        [0, 1) for sampling (``tree`` with ``mode="sum"``)."""
        B, L = ev.shape[0], self.grammar.L
        ns, vs = self.ns, self.vs
        if ev.dtype not in (np.float32, np.float64):
            ev = ev.astype(np.float64)
        ev = np.ascontiguousarray(ev)
        prior = np.ascontiguousarray(prior, dtype=np.float64)
        sizes = [int(ns[lev] * vs[lev]) for lev in range(L + 1)]
        ioff = np.full(L + 1, -1, dtype=np.int64)
        blocks, at = [], 0
        offset = np.zeros(B)  # log scales divided out of the internal evidence, per item
        for lev, e in enumerate(internal):
            if e is not None:
                ioff[lev] = at
                e, off = scale_rows(e, "numpy", False)  # scale free, like the leaves
                offset += off
                blocks.append(np.ascontiguousarray(e, dtype=np.float64).reshape(-1))
                at += B * sizes[lev]
        intev = np.concatenate(blocks) if blocks else np.zeros(1)
        moff = _offsets([B * x for x in sizes])
        marg = np.empty(int(moff[-1]) if marginals else 1, dtype=self.dtype)
        soff = _offsets([B * int(n) for n in ns])
        roff = _offsets([B * int(n) for n in ns[:L]])
        syms = np.empty(int(soff[-1]) if tree else 1, dtype=np.int64)
        rules = np.empty(int(roff[-1]) if tree else 1, dtype=np.int64)
        unif = np.zeros((1, 1)) if uniforms is None else np.ascontiguousarray(uniforms, dtype=np.float64)
        log_ev = np.empty(B)
        bad = np.zeros(B, dtype=np.bool_)
        threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
        n_tasks = max(1, min(B, threads))
        scratch = np.empty((n_tasks, self.scratch_size), dtype=self.dtype)
        isize = self.leaf_size + (self.best_size if mode == "max" else 0)
        iscratch = np.empty((n_tasks, isize), dtype=np.int32)
        with _LAUNCH:
            numba.set_num_threads(threads)
            bp_batch(ev, bool(is_log), prior, intev, ioff, self.tables, _SUM if mode == "sum" else _MAX,
                     bool(marginals), bool(tree), unif, marg, moff, log_ev, bad, syms, soff, rules,
                     roff, scratch, iscratch, self.tile, self.dtype == np.float32)
        log_ev += offset
        out = (
            [marg[moff[lev]:moff[lev + 1]].reshape(B, int(ns[lev]), int(vs[lev])) for lev in range(L + 1)]
            if marginals else []
        )
        symbols = rls = None
        if tree:
            symbols = [syms[soff[lev]:soff[lev + 1]].reshape(B, int(ns[lev])) for lev in range(L + 1)]
            rls = [rules[roff[lev]:roff[lev + 1]].reshape(B, int(ns[lev])) for lev in range(L)]
        return KernelResult(out, log_ev, bad, symbols, rls)


def _offsets(sizes: list[int]) -> np.ndarray:
    """``[0, s0, s0 + s1, ...]`` as int64."""
    return np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))]).astype(np.int64)
