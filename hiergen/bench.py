"""Benchmarks: belief-propagation throughput and memory, printed as a table and as JSON.

The headline workload of DESIGN.md: RHM v = 32, m = 8, s = 2, n_classes = 32, full marginals
of every level, batch 1024, L = 6, 8, 10, float32, per backend.
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
) -> list[BenchResult]:
    """Time all-level marginals on an RHM; best of ``repeats`` after one warm-up run.

    Memory: numpy allocations are traced exactly (tracemalloc); other backends report the
    peak growth of the process's resident memory (CUDA: ``max_memory_allocated``). The
    outputs (all marginals, ``batch x (2d - 1) x v`` floats) are included.
    """
    from hiergen.inference.bp import BeliefPropagation
    from hiergen.models.noise import UniformCorruption
    from hiergen.models.rhm import RHM

    results = []
    for L in depths:
        rhm = RHM(v=v, n_classes=n_classes, m=m, s=s, L=L, seed=seed)
        x = rhm.sample(batch, seed=seed)
        log_lik = UniformCorruption(v).evidence(x.leaves, eps).log_lik.astype(dtype)
        for backend in backends:
            bp = BeliefPropagation(rhm, backend=backend, dtype=dtype, device=device)
            bp.run(log_lik[: min(batch, bp.batch_chunk)], log=True)  # warm-up / compile
            if bp.batch_chunk < batch and backend == "jax":
                bp.run(log_lik[: bp.batch_chunk + 1], log=True)  # the padded chunk shape
            best = float("inf")
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                bp.run(log_lik, log=True)
                best = min(best, time.perf_counter() - t0)
            mem, kind = _measure_memory(bp, log_lik)
            results.append(
                BenchResult(
                    backend=backend,
                    device=bp.ops.device_name,
                    dtype=dtype,
                    L=L,
                    batch=batch,
                    batch_chunk=bp.batch_chunk,
                    seconds=best,
                    samples_per_s=batch / best,
                    peak_mem_mb=mem,
                    mem_kind=kind,
                )
            )
    return results


def _measure_memory(bp: Any, log_lik: np.ndarray) -> tuple[float, str]:
    if bp.backend == "numpy":
        tracemalloc.start()
        bp.run(log_lik, log=True)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak / 2**20, "traced"
    if bp.backend == "torch" and bp.ops.device.type == "cuda":
        torch = bp.ops.torch
        torch.cuda.reset_peak_memory_stats()
        bp.run(log_lik, log=True)
        return torch.cuda.max_memory_allocated() / 2**20, "cuda"
    with _RSSPeak() as peak:
        bp.run(log_lik, log=True)
    return peak.mb, "rss-growth"


def format_table(results: Sequence[BenchResult]) -> str:
    """A readable fixed-width table of benchmark results."""
    head = f"{'backend':8} {'device':10} {'dtype':8} {'L':>3} {'batch':>6} {'chunk':>6} " \
           f"{'seconds':>8} {'samples/s':>10} {'peak MB':>9} mem"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.backend:8} {r.device[:10]:10} {r.dtype:8} {r.L:3d} {r.batch:6d} {r.batch_chunk:6d} "
            f"{r.seconds:8.3f} {r.samples_per_s:10.1f} {r.peak_mem_mb:9.1f} {r.mem_kind}"
        )
    return "\n".join(rows)


def results_json(results: Sequence[BenchResult]) -> str:
    """Machine-readable JSON: the machine and one record per (backend, L)."""
    return json.dumps(
        {"benchmark": "bp-all-marginals", "machine": machine_info(), "results": [asdict(r) for r in results]},
        indent=2,
    )
