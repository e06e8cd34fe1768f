"""Benchmarks: belief-propagation throughput and memory, printed as a table and as JSON.

The headline workload of DESIGN.md: RHM v = 32, m = 8, s = 2, n_classes = 32, full marginals
of every level, batch 1024, L = 6, 8, 10, float32, per backend. The numpy backend is timed
with each engine measured in the same run: ``kernel`` (compiled numba kernel, the default),
``array`` (the array-at-a-time code shared with JAX/torch) and ``plain`` (a plain numpy BP,
one gather and product per level, written here as the baseline); plus posterior-sampling
rows (``sample``: one posterior tree per item; ``run+sample``: marginals and a sample on the
same evidence, as in a forward-backward point).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class BenchResult:
    backend: str
    engine: str
    task: str
    device: str
    dtype: str
    L: int
    batch: int
    batch_chunk: int
    seconds: float
    samples_per_s: float
    peak_mem_mb: float
    mem_kind: str


def machine_info() -> dict[str, Any]:
    """CPU model, core count, library versions and GPU name where there is one."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for mod in ("torch", "jax"):
        try:
            lib = __import__(mod)
            info[mod] = lib.__version__
        except ImportError:
            continue
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


class _RSSPeak:
    """Peak resident-set growth of this process while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> _RSSPeak:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - non-Linux
        return 0


def bench_bp(
    backends: Sequence[str] = ("numpy", "torch", "jax"),
    depths: Sequence[int] = (6, 8, 10),
    batch: int = 1024,
    v: int = 32,
    m: int = 8,
    s: int = 2,
    n_classes: int = 32,
    dtype: str = "float32",
    device: str | None = None,
    repeats: int = 3,
    eps: float = 0.5,
    seed: int = 0,
    engines: Sequence[str] = ("kernel", "array", "plain"),
    sampling: bool = True,
) -> list[BenchResult]:
    """Time all-level marginals on an RHM; best of ``repeats`` after one warm-up run.

    ``engines`` applies to the numpy backend (other backends run their array engine);
    ``sampling`` adds posterior-sampling rows for the numpy engines. Memory: numpy
    allocations are traced exactly (tracemalloc); other backends report the peak growth of
    the process's resident memory (CUDA: ``max_memory_allocated``). The outputs (all
    marginals, ``batch x (2d - 1) x v`` floats) are included.
    """
    from hiergen.models.noise import UniformCorruption
    from hiergen.models.rhm import RHM

    results = []
    for L in depths:
        rhm = RHM(v=v, n_classes=n_classes, m=m, s=s, L=L, seed=seed)
        x = rhm.sample(batch, seed=seed)
        log_lik = UniformCorruption(v).evidence(x.leaves, eps).log_lik.astype(dtype)
        for backend in backends:
            for engine in (engines if backend == "numpy" else ("array",)):
                for task, fn, chunk, dev in _bench_tasks(rhm, backend, engine, dtype, device, log_lik, sampling):
                    fn(log_lik[: min(batch, chunk)])  # warm-up / compile
                    if chunk < batch and backend == "jax":
                        fn(log_lik[: chunk + 1])  # the padded chunk shape
                    best = float("inf")
                    for _ in range(max(1, repeats)):
                        t0 = time.perf_counter()
                        fn(log_lik)
                        best = min(best, time.perf_counter() - t0)
                    mem, kind = _measure_memory(backend, dev, fn, log_lik)
                    results.append(BenchResult(
                        backend=backend, engine=engine, task=task, device=str(dev), dtype=dtype, L=L,
                        batch=batch, batch_chunk=chunk, seconds=best, samples_per_s=batch / best,
                        peak_mem_mb=mem, mem_kind=kind,
                    ))
    return results


def _bench_tasks(rhm: Any, backend: str, engine: str, dtype: str, device: str | None,
                 log_lik: np.ndarray, sampling: bool) -> list[tuple[str, Any, int, Any]]:
    """``(task, fn(log_lik), batch_chunk, device)`` rows for one backend/engine."""
    from hiergen.inference.bp import BeliefPropagation

    if engine == "plain":
        plain = PlainNumpyBP(rhm, dtype)
        return [("marginals", plain.run, plain.batch_chunk, "cpu")]
    bp = BeliefPropagation(rhm, backend=backend, dtype=dtype, device=device, engine=engine)
    dev = bp.ops.device if backend == "torch" else bp.ops.device_name
    chunk = log_lik.shape[0] if bp.engine == "kernel" else bp.batch_chunk  # the kernel: one call
    rows = [("marginals", lambda ev: bp.run(ev, log=True), chunk, dev)]
    if sampling and backend == "numpy":
        rows.append(("sample", lambda ev: bp.sample(ev, seed=0, log=True), chunk, dev))
        rows.append(("run+sample", lambda ev: bp.run_and_sample(ev, seed=0, log=True), chunk, dev))
    return rows


class PlainNumpyBP:
    """The comparison baseline: a plain numpy sum-product BP, one gather and one product per
    level (upward), one gather, product and scatter-add (``np.add.at`` free: a one-hot matrix
    product) per child position (downward), batch-major ``(B, n, v)`` arrays, chunks of
    ``batch_chunk`` items. All-level marginals and log-evidence, log-likelihood input."""

    def __init__(self, grammar: Any, dtype: str = "float32", batch_chunk: int = 64) -> None:
        self.g = grammar
        self.dtype = np.dtype(dtype)
        self.batch_chunk = batch_chunk
        self.children = [c.astype(np.intp) for c in grammar.children]  # (v, m, s)
        self.probs = [p.astype(self.dtype) for p in grammar.probs]  # (v, m)
        self.onehot = []
        for lev in range(grammar.L):
            v_p, m_, s_ = self.children[lev].shape
            v_c = grammar.vocab_sizes[lev + 1]
            self.onehot.append([np.eye(v_c, dtype=self.dtype)[self.children[lev][:, :, j].reshape(-1)]
                                for j in range(s_)])  # (v m, v_c)

    def run(self, log_lik: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        out = [self._chunk(log_lik[i:i + self.batch_chunk]) for i in range(0, log_lik.shape[0], self.batch_chunk)]
        marg = [np.concatenate([o[0][lev] for o in out]) for lev in range(self.g.L + 1)]
        return marg, np.concatenate([o[1] for o in out])

    def _chunk(self, log_lik: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        g, L = self.g, self.g.L
        msg = np.exp(log_lik - log_lik.max(-1, keepdims=True)).astype(self.dtype)
        log_z = log_lik.max(-1).sum(-1).astype(np.float64)
        up: list[np.ndarray] = [None] * (L + 1)  # type: ignore[list-item]
        up[L], log_z = _plain_norm(msg, log_z)
        for lev in reversed(range(L)):
            b, n_c, _ = up[lev + 1].shape
            s_ = self.children[lev].shape[2]
            c = up[lev + 1].reshape(b, n_c // s_, s_, -1)
            w = self.probs[lev][None, None]  # (1, 1, v, m)
            for j in range(s_):
                w = w * c[:, :, j][:, :, self.children[lev][:, :, j]]  # gather (B, n, v, m)
            up[lev], log_z = _plain_norm(w.sum(-1), log_z)
        score = up[0][:, 0] * g.root_prior.astype(self.dtype)
        log_ev = log_z + np.log(score.sum(-1))
        marg = [(score / score.sum(-1, keepdims=True))[:, None]]
        down = np.broadcast_to(g.root_prior.astype(self.dtype), score.shape)[:, None]
        for lev in range(L):
            b, n, v_p = down.shape
            s_ = self.children[lev].shape[2]
            c = up[lev + 1].reshape(b, n, s_, -1)
            kids = []
            for j in range(s_):
                w = down[..., None] * self.probs[lev][None, None]
                for k in range(s_):
                    if k != j:
                        w = w * c[:, :, k][:, :, self.children[lev][:, :, k]]
                kids.append(w.reshape(b, n, -1) @ self.onehot[lev][j])  # scatter-add (B, n, v_c)
            down = np.stack(kids, 2).reshape(b, n * s_, -1)
            down = down / down.sum(-1, keepdims=True)
            mg = down * up[lev + 1]
            marg.append(mg / mg.sum(-1, keepdims=True))
        return marg, log_ev


def _plain_norm(msg: np.ndarray, log_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = msg.sum(-1, keepdims=True)
    return msg / z, log_z + np.log(z[..., 0].astype(np.float64)).sum(-1)


def _measure_memory(backend: str, device: Any, fn: Any, log_lik: np.ndarray) -> tuple[float, str]:
    if backend == "numpy":
        tracemalloc.start()
        fn(log_lik)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak / 2**20, "traced"
    if backend == "torch" and getattr(device, "type", "") == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        fn(log_lik)
        return torch.cuda.max_memory_allocated() / 2**20, "cuda"
    with _RSSPeak() as peak:
        fn(log_lik)
    return peak.mb, "rss-growth"


def format_table(results: Sequence[BenchResult]) -> str:
    """A readable fixed-width table of benchmark results."""
    head = f"{'backend':8} {'engine':7} {'task':10} {'device':10} {'dtype':8} {'L':>3} {'batch':>6} " \
           f"{'chunk':>6} {'seconds':>8} {'samples/s':>10} {'peak MB':>9} mem"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.backend:8} {r.engine:7} {r.task:10} {r.device[:10]:10} {r.dtype:8} {r.L:3d} "
            f"{r.batch:6d} {r.batch_chunk:6d} {r.seconds:8.3f} {r.samples_per_s:10.1f} "
            f"{r.peak_mem_mb:9.1f} {r.mem_kind}"
        )
    return "\n".join(rows)


def results_json(results: Sequence[BenchResult]) -> str:
    """Machine-readable JSON: the machine and one record per (backend, L)."""
    return json.dumps(
        {"benchmark": "bp-all-marginals", "machine": machine_info(), "results": [asdict(r) for r in results]},
        indent=2,
    )
