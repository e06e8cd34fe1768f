"""Classifiers for probing: any timm model by name (pretrained when weights are at hand), with an
optional local checkpoint, or a hiergen classifier folder (``classifier.json`` +
``model.safetensors``, as the digits preset writes); :class:`Classifier` carries the
preprocessing and a fingerprint of the weights."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from hiergen.imagenet.settings import state_dict_fingerprint
from hiergen.models.errors import ConfigError

CLASSIFIER_CONFIG = "classifier.json"
CLASSIFIER_WEIGHTS = "model.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Classifier:
    """A classifier ready for probing: ``model`` (eval mode), its input ``input_size`` (square),
    ``in_chans``, normalisation ``mean`` / ``std`` (per channel, on [0, 1] pixels) and ``name``."""

    model: object
    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    num_classes: int = 0
    extra: dict = field(default_factory=dict)
    arch: dict = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        """sha256 of the model's state dict (names, dtypes, shapes, bytes); computed once."""
        if self._fingerprint is None:
            self._fingerprint = state_dict_fingerprint(self.model.state_dict())
        return self._fingerprint

    def settings(self) -> dict:
        """Everything about the classifier that changes probe results: architecture, weights
        fingerprint, preprocessing, parameter dtype."""
        dtype = next(iter(self.model.parameters())).dtype
        return {"classifier": self.name, "classifier_arch": self.arch,
                "classifier_weights": self.fingerprint,
                "preprocess": {"input_size": self.input_size, "in_chans": self.in_chans,
                               "mean": list(self.mean), "std": list(self.std)},
                "dtype": str(dtype).replace("torch.", "")}

    def preprocess(self, x):
        """``x`` (B, C, H, W) in [-1, 1] -> normalised classifier input (B, in_chans, S, S)."""
        import torch
        import torch.nn.functional as F

        x = (x.float() + 1.0) / 2.0
        if x.shape[1] != self.in_chans:
            if x.shape[1] == 1:
                x = x.expand(-1, self.in_chans, -1, -1)
            elif self.in_chans == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ConfigError(f"images have {x.shape[1]} channels, classifier {self.in_chans}")
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic",
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _load_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: classifier checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
        return sd
    except Exception as exc:
        raise ConfigError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: "
                          f"{exc})") from exc


def build_timm_model(spec: dict):
    """A timm model from a spec: ``{"model_name": ..., "kwargs": {...}}`` (``timm.create_model``)
    or ``{"timm_class": "timm.models.convnext.ConvNeXt", "kwargs": {...}}`` (a custom-sized
    architecture class of timm)."""
    import importlib

    import timm

    kwargs = dict(spec.get("kwargs", {}))
    for key, val in list(kwargs.items()):
        if isinstance(val, list):
            kwargs[key] = tuple(val)
    if "timm_class" in spec:
        mod_name, _, cls_name = spec["timm_class"].rpartition(".")
        if not mod_name.startswith("timm."):
            raise ConfigError(f"timm_class must be a timm class, got {spec['timm_class']!r}")
        cls = getattr(importlib.import_module(mod_name), cls_name)
        return cls(**kwargs)
    return timm.create_model(spec["model_name"], pretrained=False, **kwargs)


def load_classifier(source: str | os.PathLike = "convnext_base", pretrained: bool = True,
                    checkpoint: str | os.PathLike | None = None, device: str = "cpu") -> Classifier:
    """Load a classifier.

    ``source`` is a hiergen classifier folder (holding ``classifier.json`` and
    ``model.safetensors``) or a timm model name (``convnext_base`` by default; pretrained weights
    are fetched by timm when ``pretrained`` and reachable). ``checkpoint`` (safetensors or a torch
    state dict) overrides the weights of a timm model.
    """

    src = Path(str(source))
    looks_local = isinstance(source, os.PathLike) or str(source).startswith(("/", ".", "~"))
    if looks_local and not src.exists():
        raise ConfigError(f"{src}: classifier folder not found")
    if src.is_dir():
        cfg_path = src / CLASSIFIER_CONFIG
        if not cfg_path.is_file():
            raise ConfigError(f"{cfg_path}: classifier config not found")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cfg_path}: corrupt classifier config ({exc})") from exc
        model = build_timm_model(cfg["model"])
        sd = _load_state_dict(Path(checkpoint) if checkpoint else src / CLASSIFIER_WEIGHTS)
        _load_into(model, sd, src / CLASSIFIER_WEIGHTS)
        return Classifier(model.to(device).eval(), int(cfg["input_size"]), int(cfg["in_chans"]),
                          tuple(cfg["mean"]), tuple(cfg["std"]), name=str(src),
                          num_classes=int(cfg["num_classes"]), extra=cfg, arch=cfg["model"])
    import timm

    name = str(source)
    if not (timm.is_model(name) or name.startswith(("hf-hub:", "hf_hub:"))):
        raise ConfigError(f"{name!r} is neither a classifier folder nor a timm model name")
    try:
        model = timm.create_model(name, pretrained=pretrained and checkpoint is None)
    except Exception as exc:  # network / hub errors
        raise ConfigError(f"cannot get pretrained weights of {source!r} ({type(exc).__name__}); "
                          "pass a local checkpoint or pretrained=False") from exc
    if checkpoint is not None:
        _load_into(model, _load_state_dict(Path(checkpoint)), Path(checkpoint))
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return Classifier(model.to(device).eval(), size, int(cfg.get("input_size", (3,))[0]),
                      tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
                      name=str(source), num_classes=int(getattr(model, "num_classes", 0)),
                      arch={"timm_model": name})


def _load_into(model, sd: dict, path: Path) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: checkpoint does not match the model "
                          f"({str(exc).splitlines()[0]})") from exc
