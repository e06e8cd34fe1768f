"""Validation and scale-free normalisation of belief-propagation inputs.

Evidence may be a numpy array, a list/tuple, a torch tensor (any device) or a JAX array;
every check runs with the array's own library (a GPU tensor is checked on the GPU, only a
few booleans come back to the host), and every library gets the same rules:

- dtype: real floating point or integer; ``bool``, complex, object and string arrays are
  refused (:class:`~hiergen.models.errors.EvidenceError`).
- likelihoods: finite and ``>= 0``; log-likelihoods: no NaN and no ``+inf`` (``-inf`` is a
  hard zero).

Leaf evidence is then made scale free before it reaches the algorithm: per leaf (row over
the alphabet) the maximum is divided out — in float64 where the library allows it, in the
log domain for log-likelihoods (``exp(x - max)``) — so that every row has maximum 1 and the
algorithm's dtype only ever sees numbers in ``[0, 1]``. The removed scales are returned as
a float64 per-item log offset ``sum_i log max_a lik[b, i, a]`` and added back to the
log-evidence. Exact zeros stay exact zeros. (XLA, hence JAX, treats subnormal numbers —
below 2.2e-308 in float64, 1.2e-38 in float32 — as zero: pass such likelihoods to the JAX
backend as numpy arrays or as log-likelihoods.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hiergen.models.errors import EvidenceError


def array_library(x: Any) -> str:
    """``"torch"``, ``"jax"`` or ``"numpy"`` (everything else is converted with numpy)."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("jax"):
        return "jax"
    return "numpy"


def as_checked_array(x: Any, name: str) -> tuple[Any, str]:
    """``x`` as a numpy / torch / JAX array with a real numeric dtype; returns ``(array, library)``.

    Lists, tuples and scalars become numpy arrays. Raises :class:`EvidenceError` for
    non-numeric dtypes (bool, complex, object, strings) and ragged nested lists.
    """
    lib = array_library(x)
    if lib == "numpy" and not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise EvidenceError(f"{name} is not a rectangular numeric array: {exc}") from None
    ok, dtype = _dtype_ok(x, lib)
    if not ok:
        raise EvidenceError(f"{name} must be real floating point or integer, got dtype {dtype}")
    return x, lib


def _dtype_ok(x: Any, lib: str) -> tuple[bool, str]:
    if lib == "torch":
        import torch

        ints = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
        return (x.dtype.is_floating_point or x.dtype in ints), str(x.dtype)
    if lib == "jax":
        import jax.numpy as jnp

        ok = jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
        return bool(ok), str(x.dtype)
    ok = np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
    return bool(ok), str(x.dtype)


def _is_float(x: Any, lib: str) -> bool:
    if lib == "torch":
        return bool(x.dtype.is_floating_point)
    if lib == "jax":
        import jax.numpy as jnp

        return bool(jnp.issubdtype(x.dtype, jnp.floating))
    return bool(np.issubdtype(x.dtype, np.floating))


def _xp(lib: str) -> Any:
    if lib == "torch":
        import torch

        return torch
    if lib == "jax":
        import jax.numpy as jnp

        return jnp
    return np


def _items(mask: Any, lib: str) -> list[int]:
    """Batch items (axis 0) where a boolean mask has a True entry (mask of ndim >= 1)."""
    if mask.ndim == 1:
        per_item = mask
    elif lib == "torch":
        per_item = mask.flatten(1).any(1)
    else:
        per_item = _xp(lib).any(mask, axis=tuple(range(1, mask.ndim)))
    if lib == "torch":
        per_item = per_item.cpu().numpy()
    return np.flatnonzero(np.asarray(per_item)).tolist()


def _where(items: list[int], batched: bool) -> str:
    if not batched:
        return ""
    shown = ", ".join(map(str, items[:20])) + (" ..." if len(items) > 20 else "")
    return f" (batch items [{shown}])"


def check_values(x: Any, lib: str, name: str, is_log: bool, batched: bool = True) -> None:
    """Raise :class:`EvidenceError` for NaN, for ``+inf`` and, for likelihoods
    (``is_log=False``), for ``-inf`` or negative entries. ``batched``: axis 0 is the batch
    (named in the message). Runs with ``x``'s own library, on its device."""
    xp = _xp(lib)
    if _is_float(x, lib):
        nan = xp.isnan(x)
        if bool(nan.any()):
            raise EvidenceError(f"{name} contains NaN{_where(_items(nan, lib), batched)}")
        if is_log:
            pinf = x == float("inf")
            if bool(pinf.any()):
                raise EvidenceError(
                    f"{name} (log-likelihoods) contains +inf{_where(_items(pinf, lib), batched)}"
                )
            return
        bad = xp.isinf(x) | (x < 0)
    elif is_log:
        return
    else:
        bad = x < 0
    if bool(bad.any()):
        hint = " (pass log=True for log-likelihoods)" if name == "evidence" else ""
        raise EvidenceError(
            f"{name}: likelihoods must be finite and >= 0{hint}{_where(_items(bad, lib), batched)}"
        )


def to_numpy_float64(x: Any, lib: str) -> np.ndarray:
    """A float64 numpy copy of a (validated) array of any library (moves device data to host)."""
    if lib == "torch":
        import torch

        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _wide_dtype(lib: str) -> Any:
    """The widest float dtype the library can use for the scaling pass."""
    if lib == "torch":
        import torch

        return torch.float64
    if lib == "jax":
        import jax
        import jax.numpy as jnp

        return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    return np.float64


def scale_rows(x: Any, lib: str, is_log: bool) -> tuple[Any, np.ndarray]:
    """Divide out the maximum of every row (last axis) of validated evidence ``(B, n, v)``.

    Returns ``(scaled, log_offset)``: ``scaled`` ``(B, n, v)`` likelihoods in ``[0, 1]``
    with row maximum 1 (rows of zeros, or of ``-inf`` log-likelihoods, stay zero), in the
    input's library and at least float64 where the library allows; ``log_offset`` ``(B,)``
    numpy float64 with ``log lik = log scaled + log_offset`` summed over the rows of an item.
    """
    xp = _xp(lib)
    if lib == "torch":
        x = x.to(_wide_dtype(lib))
        mx = x.amax(-1, keepdim=True)
    else:
        x = x.astype(_wide_dtype(lib)) if lib == "jax" else np.asarray(x, dtype=np.float64)
        mx = x.max(-1, keepdims=True)
    if is_log:
        keep = xp.isfinite(mx)  # a row of -inf (all impossible) stays all zero
        shift = xp.where(keep, mx, xp.zeros_like(mx))
        scaled = xp.exp(x - shift)
        log_scale = shift
    else:
        keep = mx > 0  # a row of zeros stays all zero
        one = xp.ones_like(mx)
        safe = xp.where(keep, mx, one)
        if lib == "jax":  # XLA divides via the reciprocal 1/max, a subnormal flushed to zero
            scaled = xp.exp(xp.log(x) - xp.log(safe))
        else:
            scaled = x / safe
        log_scale = xp.log(safe)  # log 1 = 0 for zero rows
    offset = log_scale[..., 0].sum(-1)
    if lib == "torch":
        offset = offset.cpu().numpy()
    return scaled, np.asarray(offset, dtype=np.float64)


def check_prior(prior: Any, batch: int, n_classes: int, tol: float = 1e-6) -> np.ndarray:
    """Validate a class-prior override; return it ``(batch, n_classes)`` float64, rows
    renormalised exactly.

    Every row must be finite, ``>= 0``, not all zero and sum to 1 within ``tol`` (absolute):
    an unnormalised prior would silently shift the log-evidence, so it is refused rather
    than rescaled.
    """
    arr, lib = as_checked_array(prior, "prior")
    shape = tuple(arr.shape)
    if shape not in ((n_classes,), (batch, n_classes)):
        raise EvidenceError(f"prior must have shape ({n_classes},) or ({batch}, {n_classes}), got {shape}")
    check_values(arr, lib, "prior", is_log=False, batched=len(shape) == 2)
    p = to_numpy_float64(arr, lib)
    rows = p.reshape(-1, n_classes)
    sums = rows.sum(1)
    zero = np.flatnonzero(sums <= 0).tolist()
    if zero:
        raise EvidenceError(f"prior row(s) {zero[:20]} are all zero: no class is possible")
    off = np.flatnonzero(np.abs(sums - 1.0) > tol).tolist()
    if off:
        raise EvidenceError(
            f"prior rows must sum to 1 (within {tol:g}); row {off[0]} sums to {sums[off[0]]:.12g}"
            + (f" ({len(off)} rows off)" if len(off) > 1 else "")
        )
    rows = rows / sums[:, None]
    return np.broadcast_to(rows.reshape(shape), (batch, n_classes))
