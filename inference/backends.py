"""Array backends for the belief-propagation algorithm.

The BP algorithm (:mod:`hiergen.inference.bp`) is written once against the small interface
below; each backend maps it onto one array library. numpy is the reference (float64
capable); JAX and torch are imported lazily and only when asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hiergen.models.errors import BackendError

BACKENDS = ("numpy", "jax", "torch")


class ArrayOps:
    """Operations the BP algorithm needs. Arrays are the backend's own type."""

    name: str = ""
    dtype: Any
    float64: bool

    # conversion ---------------------------------------------------------------------------
    def asarray(self, x: Any, dtype: Any = None) -> Any:
        raise NotImplementedError

    def index_array(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def to_numpy(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    # math ---------------------------------------------------------------------------------
    def exp(self, x: Any) -> Any:
        return self.xp.exp(x)

    def log(self, x: Any) -> Any:
        return self.xp.log(x)

    def sum(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        return self.xp.sum(x, axis=axis, keepdims=keepdims)

    def max(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        return self.xp.max(x, axis=axis, keepdims=keepdims)

    def argmax(self, x: Any, axis: int) -> Any:
        return self.xp.argmax(x, axis=axis)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.xp.where(cond, a, b)

    def any(self, x: Any, axis: int) -> Any:
        return self.xp.any(x, axis=axis)

    def take_first(self, x: Any, idx: Any) -> Any:
        """``x[idx]`` for a 1-d index array (rows of the first axis)."""
        return x[idx]

    def contiguous(self, x: Any) -> Any:
        """A C-contiguous copy when ``x`` is a strided view (no-op where layout is opaque)."""
        return x

    def transpose(self, x: Any, axes: tuple[int, ...]) -> Any:
        """Permute axes, materialised contiguously."""
        return self.contiguous(self.xp.transpose(x, axes))

    def expand_index(self, idx: Any, shape: tuple[int, ...]) -> Any:
        """Broadcast an index array to ``shape``."""
        return self.xp.broadcast_to(idx, shape)

    def take_along(self, x: Any, idx: Any, axis: int) -> Any:
        return self.xp.take_along_axis(x, idx, axis=axis)

    def matmul(self, a: Any, b: Any) -> Any:
        return a @ b

    def stack(self, xs: list[Any], axis: int) -> Any:
        return self.xp.stack(xs, axis=axis)

    def cumsum(self, x: Any, axis: int) -> Any:
        return self.xp.cumsum(x, axis=axis)

    def isfinite(self, x: Any) -> Any:
        return self.xp.isfinite(x)

    def uniform(self, rng: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """Uniform draws in [0, 1); returns ``(draws, new_rng_state)``."""
        raise NotImplementedError

    def make_rng(self, seed: Any) -> Any:
        raise NotImplementedError

    def compile(self, fn: Any) -> Any:
        """Compile a pure function of arrays (JAX jit); identity elsewhere."""
        return fn

    @property
    def device_name(self) -> str:
        return "cpu"


class NumpyOps(ArrayOps):
    name = "numpy"

    def __init__(self, dtype: str = "float64", device: str | None = None) -> None:
        if device not in (None, "cpu"):
            raise BackendError(f"the numpy backend runs on the CPU only, got device={device!r}")
        self.xp = np
        self.dtype = np.dtype(dtype)
        self.float64 = self.dtype == np.float64

    def asarray(self, x: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(x, dtype=self.dtype if dtype is None else dtype)

    def index_array(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.intp)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def take_first(self, x: Any, idx: Any) -> Any:
        return np.take(x, idx, axis=0)

    def contiguous(self, x: Any) -> Any:
        return np.ascontiguousarray(x)

    def make_rng(self, seed: Any) -> np.random.Generator:
        return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def uniform(self, rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        return rng.random(shape).astype(self.dtype, copy=False), rng


class JaxOps(ArrayOps):
    name = "jax"

    def __init__(self, dtype: str = "float32", device: str | None = None) -> None:
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("backend 'jax' needs jax: pip install 'hiergen[jax]'") from exc
        if dtype == "float64" and not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
        self.jax = jax
        self.xp = jnp
        self.dtype = jnp.dtype(dtype)
        self.float64 = dtype == "float64"
        if device is None:
            self.device = jax.devices()[0]
        else:
            try:
                kind, _, index = str(device).partition(":")
                kind = {"cuda": "gpu"}.get(kind, kind)
                self.device = jax.devices(kind)[int(index or 0)]
            except (RuntimeError, IndexError, ValueError) as exc:
                raise BackendError(f"JAX device {device!r} is not available: {exc}") from exc

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        return self.jax.device_put(self.xp.asarray(x, dtype=self.dtype if dtype is None else dtype), self.device)

    def index_array(self, x: np.ndarray) -> Any:
        return self.jax.device_put(self.xp.asarray(np.asarray(x, dtype=np.int32)), self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def make_rng(self, seed: Any) -> Any:
        if isinstance(seed, (int, np.integer)) or seed is None:
            return self.jax.random.key(0 if seed is None else int(seed))
        return seed

    def uniform(self, rng: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
        rng, sub = self.jax.random.split(rng)
        return self.jax.random.uniform(sub, shape, dtype=self.dtype), rng

    def compile(self, fn: Any) -> Any:
        return self.jax.jit(fn)

    @property
    def device_name(self) -> str:
        return str(self.device)


class TorchOps(ArrayOps):
    name = "torch"

    def __init__(self, dtype: str = "float32", device: str | None = None) -> None:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("backend 'torch' needs torch: pip install 'hiergen[torch]'") from exc
        self.torch = torch
        self.xp = torch
        self.dtype = getattr(torch, dtype)
        self.float64 = dtype == "float64"
        dev = device or "cpu"
        if str(dev).startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"torch device {dev!r} requested but CUDA is not available")
        self.device = torch.device(dev)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        t = self.torch
        if isinstance(x, t.Tensor):
            return x.to(device=self.device, dtype=self.dtype if dtype is None else dtype)
        return t.as_tensor(np.array(x), dtype=self.dtype if dtype is None else dtype, device=self.device)

    def index_array(self, x: np.ndarray) -> Any:
        return self.torch.as_tensor(np.array(x, dtype=np.int64), device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    def sum(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        return self.torch.sum(x, dim=axis, keepdim=keepdims)

    def max(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        return self.torch.amax(x, dim=axis, keepdim=keepdims)

    def argmax(self, x: Any, axis: int) -> Any:
        return self.torch.argmax(x, dim=axis)

    def any(self, x: Any, axis: int) -> Any:
        return self.torch.any(x, dim=axis)

    def take_along(self, x: Any, idx: Any, axis: int) -> Any:
        return self.torch.take_along_dim(x, idx, dim=axis)

    def take_first(self, x: Any, idx: Any) -> Any:
        return self.torch.index_select(x, 0, idx)

    def contiguous(self, x: Any) -> Any:
        return x.contiguous()

    def transpose(self, x: Any, axes: tuple[int, ...]) -> Any:
        return x.permute(*axes).contiguous()

    def expand_index(self, idx: Any, shape: tuple[int, ...]) -> Any:
        return idx.expand(*shape)

    def stack(self, xs: list[Any], axis: int) -> Any:
        return self.torch.stack(xs, dim=axis)

    def cumsum(self, x: Any, axis: int) -> Any:
        return self.torch.cumsum(x, dim=axis)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        t = self.torch
        if not isinstance(a, t.Tensor):
            a = t.as_tensor(a, dtype=self.dtype, device=self.device)
        if not isinstance(b, t.Tensor):
            b = t.as_tensor(b, dtype=self.dtype, device=self.device)
        return t.where(cond, a, b)

    def make_rng(self, seed: Any) -> Any:
        t = self.torch
        if isinstance(seed, t.Generator):
            return seed
        gen = t.Generator(device=self.device)
        gen.manual_seed(0 if seed is None else int(seed))
        return gen

    def uniform(self, rng: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
        return self.torch.rand(shape, generator=rng, dtype=self.dtype, device=self.device), rng

    @property
    def device_name(self) -> str:
        return str(self.device)


def get_ops(backend: str = "numpy", dtype: str | None = None, device: str | None = None) -> ArrayOps:
    """Return the :class:`ArrayOps` of ``backend`` (``"numpy"``, ``"jax"`` or ``"torch"``)."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown BP backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if dtype is None:
        dtype = "float64" if backend == "numpy" else "float32"
    if dtype not in ("float32", "float64"):
        raise BackendError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    cls = {"numpy": NumpyOps, "jax": JaxOps, "torch": TorchOps}[backend]
    return cls(dtype=dtype, device=device)
