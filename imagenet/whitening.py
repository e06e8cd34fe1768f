"""Whitening and similarity of hooked activations: :class:`Whitening` (per-channel mean / std
over the start images, stored in safetensors and reused) and :func:`similarity` (cosine, L2 and
normalized L2 of start vs generated activations)."""

from __future__ import annotations

import os

import numpy as np

from hiergen._files import atomic_write
from hiergen.imagenet.hooks import channel_axis
from hiergen.models.errors import ConfigError


class Whitening:
    """Per-channel mean and std of each hooked layer over the start images.

    Accumulate with :meth:`update` (streaming float64 sums over batches), then :meth:`finalize`;
    :meth:`apply` whitens with the *stored* statistics; :meth:`save` / :meth:`load` use
    safetensors (keys ``<layer>.mean``, ``<layer>.std``).
    """

    def __init__(self, eps: float = 1e-6):
        self.eps = eps
        self.mean: dict[str, np.ndarray] = {}
        self.std: dict[str, np.ndarray] = {}
        self._sums: dict[str, list] = {}

    def update(self, acts: dict) -> None:
        self.add_sums(self.batch_sums(acts))

    @staticmethod
    def batch_sums(acts: dict) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        """``{layer: (sum (C,), sum of squares (C,), count)}`` of one batch's activations
        (float64; small, to be gathered across processes)."""
        out = {}
        for name, a in acts.items():
            ax = channel_axis(a.ndim)
            a = a.double().movedim(ax, -1).reshape(-1, a.shape[ax])
            out[name] = (a.sum(0).cpu().numpy(), (a * a).sum(0).cpu().numpy(), a.shape[0])
        return out

    def add_sums(self, sums: dict[str, tuple[np.ndarray, np.ndarray, int]]) -> None:
        """Add one batch's :meth:`batch_sums` (in batch order, the sums are those of
        :meth:`update` over the same batches, bit for bit)."""
        for name, (s1, s2, n) in sums.items():
            s = self._sums.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + s1
            s[1] = s[1] + s2
            s[2] += n

    def finalize(self) -> Whitening:
        for name, (s1, s2, n) in self._sums.items():
            mean = s1 / n
            var = np.maximum(s2 / n - mean**2, 0.0)
            self.mean[name] = mean.astype(np.float32)
            self.std[name] = np.sqrt(var + self.eps).astype(np.float32)
        self._sums = {}
        return self

    def apply(self, name: str, a):
        """Whitened copy of activation ``a`` of layer ``name``."""
        import torch

        if name not in self.mean:
            raise ConfigError(f"no whitening statistics for layer {name!r}")
        ax = channel_axis(a.ndim)
        shape = [1] * a.ndim
        shape[ax] = -1
        mean = torch.from_numpy(self.mean[name]).to(a.device).view(shape)
        std = torch.from_numpy(self.std[name]).to(a.device).view(shape)
        return (a - mean) / std

    def save(self, path: str | os.PathLike) -> None:
        import torch
        from safetensors.torch import save_file

        tensors = {}
        for name in self.mean:
            tensors[f"{name}.mean"] = torch.from_numpy(self.mean[name])
            tensors[f"{name}.std"] = torch.from_numpy(self.std[name])
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp),
                                                 metadata={"eps": repr(float(self.eps))}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Whitening:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                eps = float((f.metadata() or {}).get("eps", 1e-6))
                w = cls(eps)
                for key in f.keys():
                    name, _, kind = key.rpartition(".")
                    getattr(w, kind)[name] = f.get_tensor(key)
        except Exception as exc:
            raise ConfigError(f"{path}: unreadable whitening statistics ({exc})") from exc
        return w


def similarity(a, b) -> dict[str, np.ndarray]:
    """Per-row metrics of flattened activations ``a`` (start) and ``b`` (generated), (B, ...):
    ``cosine``, ``l2`` = ||a - b|| and ``nl2`` = ||a - b|| / ||a||, each (B,) float64."""
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    d = (a - b).norm(dim=1)
    cos = (a * b).sum(1) / (na * nb).clamp_min(1e-30)
    return {"cosine": cos.cpu().numpy(), "l2": d.cpu().numpy(),
            "nl2": (d / na.clamp_min(1e-30)).cpu().numpy()}
