"""Probing a timm classifier on start vs forward-backward images (the paper's Fig. 2, right).

* :func:`load_classifier` - any timm model by name (pretrained when weights are at hand), with an
  optional local checkpoint, or a hiergen classifier folder (``classifier.json`` +
  ``model.safetensors``, as the digits preset writes).
* :func:`hook_points` - the stem, every block, every downsampling layer and the head (41 modules
  for ConvNeXt-Base, as the authors hook).
* :class:`Whitening` - per-channel mean / std of every hooked activation over the start images,
  stored in safetensors and reused.
* :func:`similarity` - per image and layer: cosine similarity, L2 distance and normalized L2
  (``||a - b|| / ||a||``) of the whitened activations of start ``a`` and generated ``b``.
* :func:`run_probe` - the whole experiment over the PNGs that
  :func:`hiergen.imagenet.forward_backward.run_forward_backward` wrote; per-(k, chunk) NetCDF parts
  (resumable, shardable), merged into ``probe.nc``.

Activations are channel-first for 4-d outputs ``(B, C, H, W)`` and channel-last otherwise
(``(B, C)`` logits, ``(B, N, C)`` tokens).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hiergen._files import atomic_path, atomic_write, file_lock
from hiergen.imagenet.data import ImageRecord, load_images, records_from_json, shard
from hiergen.imagenet.forward_backward import FB_SETTINGS
from hiergen.imagenet.settings import (
    json_fingerprint,
    lock_path,
    read_json,
    record_settings,
    state_dict_fingerprint,
)
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


# ---- hooks ---------------------------------------------------------------------------------

def hook_points(model, names: Sequence[str] | None = None) -> list[tuple[str, object]]:
    """Ordered ``[(name, module)]`` to hook: stem, then per stage its downsampling layer (when not
    an identity) and every block, then the head.

    Understands timm models built of ``stem`` / ``stages[i].downsample`` / ``stages[i].blocks`` /
    ``head`` (ConvNeXt, and most timm CNNs), ``patch_embed`` / ``blocks`` / ``head`` (ViT-like),
    and ``conv1`` / ``layer1..4`` / ``fc`` (ResNet). Pass ``names`` (dotted module names) to hook
    something else.
    """
    import torch.nn as nn

    modules = dict(model.named_modules())
    if names is not None:
        missing = [n for n in names if n not in modules]
        if missing:
            raise ConfigError(f"modules not found in the classifier: {missing}")
        return [(n, modules[n]) for n in names]

    def real(m) -> bool:
        return m is not None and not isinstance(m, nn.Identity)

    points: list[str] = []
    stem = next((n for n in ("stem", "patch_embed", "conv_stem", "conv1") if n in modules), None)
    if stem is None:
        raise ConfigError(f"cannot find the stem of {type(model).__name__}; pass hook names")
    points.append(stem)
    if "stages" in modules:
        for si, stage in enumerate(model.stages):
            if real(getattr(stage, "downsample", None)):
                points.append(f"stages.{si}.downsample")
            blocks = getattr(stage, "blocks", None)
            if blocks is None:
                raise ConfigError(f"stage {si} of {type(model).__name__} has no blocks")
            points += [f"stages.{si}.blocks.{bi}" for bi in range(len(blocks))]
    elif "blocks" in modules:
        points += [f"blocks.{bi}" for bi in range(len(model.blocks))]
    elif "layer1" in modules:
        for li in range(1, 5):
            layer = getattr(model, f"layer{li}", None)
            if layer is not None:
                points += [f"layer{li}.{bi}" for bi in range(len(layer))]
    else:
        raise ConfigError(f"cannot find the blocks of {type(model).__name__}; pass hook names")
    head = next((n for n in ("head", "fc", "classifier") if n in modules and real(modules[n])),
                None)
    if head is None:
        raise ConfigError(f"cannot find the head of {type(model).__name__}; pass hook names")
    points.append(head)
    return [(n, modules[n]) for n in points]


class ActivationRecorder:
    """Forward hooks on the given modules; ``forward(x)`` returns (logits, {name: activation})."""

    def __init__(self, model, points: Sequence[tuple[str, object]]):
        self.model = model
        self.names = [n for n, _ in points]
        self._acts: dict[str, object] = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in points]

    def _hook(self, name: str):
        def fn(_module, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            self._acts[name] = out.detach().float()
        return fn

    def forward(self, x):
        import torch

        self._acts = {}
        with torch.no_grad():
            logits = self.model(x)
        acts, self._acts = self._acts, {}
        return logits.float(), acts

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def channel_axis(ndim: int) -> int:
    """Axis of channels of a hooked activation: 1 for (B, C, H, W), last otherwise."""
    return 1 if ndim == 4 else ndim - 1


# ---- whitening -----------------------------------------------------------------------------

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
        for name, a in acts.items():
            ax = channel_axis(a.ndim)
            a = a.double().movedim(ax, -1).reshape(-1, a.shape[ax])
            s = self._sums.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + a.sum(0).cpu().numpy()
            s[1] = s[1] + (a * a).sum(0).cpu().numpy()
            s[2] += a.shape[0]

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


# ---- the experiment --------------------------------------------------------------------------

def _fb_paths(fb_dir: Path, k: int, records: Sequence[ImageRecord]) -> list[ImageRecord]:
    return [ImageRecord(r.id, str(fb_dir / f"k{k:04d}" / f"{r.safe_id}.png"), r.label,
                        r.class_name) for r in records]


def _batches(records, batch_size):
    return [records[i:i + batch_size] for i in range(0, len(records), batch_size)]


PROBE_NAME = "probe"
_RESERVED = {"fb", "start_images", "parts"}


def probe_dir(run_dir: str | os.PathLike, name: str = PROBE_NAME) -> Path:
    """The folder of the probe results called ``name`` (``run_dir/<name>``, merged into
    ``run_dir/<name>.nc``); ``name`` is a plain file name."""
    ok = (name and name not in _RESERVED and name[0].isalnum()
          and all(c.isalnum() or c in "._-" for c in name))
    if not ok:
        raise ConfigError(f"probe name {name!r}: use letters, digits, '.', '_' and '-' (not "
                          f"{', '.join(sorted(_RESERVED))})")
    return Path(run_dir) / name


def compute_whitening(clf: Classifier, rec: ActivationRecorder, start: Sequence[ImageRecord],
                      size: int, channels: int, batch_size: int, device: str = "cpu",
                      eps: float = 1e-6) -> Whitening:
    """Whitening statistics over all start images (the k = 0 PNGs)."""
    import torch

    w = Whitening(eps)
    for batch in _batches(list(start), batch_size):
        x = torch.from_numpy(load_images(batch, size, channels)).to(device)
        _, acts = rec.forward(clf.preprocess(x))
        w.update(acts)
    return w.finalize()


def _part_path(pdir: Path, k: int, chunk: int) -> Path:
    return pdir / "parts" / f"k{k:04d}_c{chunk:05d}.nc"


@dataclass
class _ProbeRun:
    """What one probe call works on: the forward-backward run and the probe folder."""

    run_dir: Path
    fb_dir: Path
    pdir: Path
    meta: dict
    records: list[ImageRecord]
    size: int
    channels: int


def _open_run(run_dir: str | os.PathLike, name: str) -> _ProbeRun:
    run_dir = Path(run_dir)
    fb_dir = run_dir / "fb"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a folder (expected a forward-backward run folder)")
    if not (fb_dir / "meta.json").is_file() or not (fb_dir / "images.json").is_file():
        raise ConfigError(f"{fb_dir / 'meta.json'}: no forward-backward run found in {run_dir}")
    meta = read_json(fb_dir / "meta.json")
    try:
        records = records_from_json((fb_dir / "images.json").read_text())
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{fb_dir / 'images.json'}: corrupt image list ({exc})") from exc
    return _ProbeRun(run_dir, fb_dir, probe_dir(run_dir, name), meta, records,
                     int(meta["image_size"]), int(meta["channels"]))


def probe_settings(clf: Classifier, layers: Sequence[str], run: _ProbeRun, batch_size: int,
                   eps: float, device: str) -> dict:
    """Every setting that changes probe results (stored in ``<probe>/config.json`` and in the
    merged file's attributes): the classifier's :meth:`Classifier.settings`, the hooked layers,
    the whitening eps, the chunk size, the device kind and fingerprints of the forward-backward
    settings and of the image list."""
    import torch

    return {**clf.settings(), "hooks": list(layers), "whitening_eps": float(eps),
            "chunk_size": int(batch_size), "device_kind": torch.device(device).type,
            "fb_settings": json_fingerprint({k: run.meta.get(k) for k in FB_SETTINGS}),
            "images": json_fingerprint([r.id for r in run.records]),
            "n_images": len(run.records)}


def _load_or_compute_whitening(clf, rec, run: _ProbeRun, layers, batch_size, device, eps
                               ) -> Whitening:
    """The stored statistics of the probe folder, or computed (once, under a lock) and stored."""
    wpath = run.pdir / "whitening.safetensors"
    with file_lock(lock_path(wpath)):
        if wpath.is_file():
            white = Whitening.load(wpath)
            if sorted(white.mean) != sorted(layers) or white.eps != eps:
                raise ConfigError(f"{wpath}: statistics are for other layers or another eps "
                                  "than this probe's settings; delete the probe folder")
            return white
        white = compute_whitening(clf, rec, _fb_paths(run.fb_dir, 0, run.records), run.size,
                                  run.channels, batch_size, device, eps)
        white.save(wpath)
    return white


def _part_dataset(rs, k, layers, sims, logit, logit0):
    import xarray as xr

    ds = xr.Dataset(
        {m: (("image", "layer"), np.stack([sims[n][m] for n in layers], axis=1))
         for m in ("cosine", "l2", "nl2")},
        coords={"image": [r.id for r in rs], "layer": list(layers)},
    )
    ds["logits"] = (("image", "class"), logit.cpu().numpy())
    ds["logits_start"] = (("image", "class"), logit0.cpu().numpy())
    ds["label"] = ("image", np.array([r.label for r in rs], dtype=np.int64))
    return ds.expand_dims(k=[k])


def _probe_chunk(clf, rec, white, run: _ProbeRun, c, rs, ks, layers, device, bar) -> tuple:
    """Probe one chunk of images at the reversal steps ``ks`` whose images all exist; write one
    part per k. Returns (images probed, seconds)."""
    import torch

    x0 = torch.from_numpy(load_images(_fb_paths(run.fb_dir, 0, rs), run.size, run.channels))
    logit0, acts0 = rec.forward(clf.preprocess(x0.to(device)))
    w0 = {n: white.apply(n, a) for n, a in acts0.items()}
    n_done, seconds = 0, 0.0
    for k in ks:
        gen = _fb_paths(run.fb_dir, k, rs)
        if not all(Path(r.path).is_file() for r in gen):
            continue
        t0 = time.perf_counter()
        x = torch.from_numpy(load_images(gen, run.size, run.channels)).to(device)
        logit, acts = rec.forward(clf.preprocess(x))
        sims = {n: similarity(w0[n], white.apply(n, acts[n])) for n in layers}
        seconds += time.perf_counter() - t0
        n_done += len(rs)
        ds = _part_dataset(rs, k, layers, sims, logit, logit0)
        with atomic_path(_part_path(run.pdir, k, c)) as tmp:
            ds.to_netcdf(tmp)
        bar.update(len(rs))
    return n_done, seconds


def run_probe(
    run_dir: str | os.PathLike,
    clf: Classifier,
    batch_size: int = 32,
    shard_index: int = 0,
    num_shards: int = 1,
    hook_names: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    name: str = PROBE_NAME,
    whitening_eps: float = 1e-6,
) -> dict:
    """Probe the classifier on every (image, k) PNG of a forward-backward run in ``run_dir``.

    Results go to the probe folder ``run_dir/<name>`` (default ``probe``): ``config.json`` (the
    :func:`probe_settings`: classifier weights fingerprint, hooks, whitening eps, chunk size,
    dtype, device kind, forward-backward settings and image list; a call with any other setting
    is refused with a :class:`ConfigError` naming the differences - use another ``name``),
    ``whitening.safetensors`` (stats over the start images), one NetCDF part per (k, chunk of
    ``batch_size`` images) under ``parts`` (skipped when present; shard ``shard_index`` does
    every ``num_shards``-th chunk), and, once all parts exist, the merged ``run_dir/<name>.nc``
    (see :func:`merge_probe`). Missing generated images (a forward-backward still running) leave
    their part for a later call. Returns timing ``{"images": n, "seconds": s,
    "images_per_s": r}`` over newly probed (image, k) pairs.
    """
    from tqdm.auto import tqdm

    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if not whitening_eps > 0:
        raise ConfigError(f"whitening eps must be > 0, got {whitening_eps}")
    run = _open_run(run_dir, name)
    points = hook_points(clf.model, hook_names)
    layers = [n for n, _ in points]
    missing = [r.path for r in _fb_paths(run.fb_dir, 0, run.records) if not Path(r.path).is_file()]
    if missing:
        raise ConfigError(f"{missing[0]}: start image (k = 0) missing; run forward-backward first")
    record_settings(run.pdir / "config.json",
                    probe_settings(clf, layers, run, batch_size, whitening_eps, device),
                    "probe results",
                    f"pass another probe name (--name) for these settings, or delete {run.pdir}",
                    compare=PROBE_COMPARED)
    rec = ActivationRecorder(clf.model, points)
    try:
        white = _load_or_compute_whitening(clf, rec, run, layers, batch_size, device,
                                           whitening_eps)
        mine = shard(list(enumerate(_batches(run.records, batch_size))), shard_index, num_shards)
        todo = [(c, rs, [k for k in run.meta["ks"] if not _part_path(run.pdir, k, c).is_file()])
                for c, rs in mine]
        todo = [t for t in todo if t[2]]
        bar = tqdm(total=sum(len(rs) * len(kk) for _, rs, kk in todo), desc="probe", unit="img",
                   disable=not progress)
        n_done, seconds = 0, 0.0
        for c, rs, kk in todo:
            n, sec = _probe_chunk(clf, rec, white, run, c, rs, [int(k) for k in kk], layers,
                                  device, bar)
            n_done, seconds = n_done + n, seconds + sec
        bar.close()
    finally:
        rec.close()
    merge_probe(run.run_dir, strict=False, name=name)
    return {"images": n_done, "seconds": seconds,
            "images_per_s": n_done / seconds if seconds > 0 else float("nan")}


#: probe settings that must match to reuse a probe folder (the classifier's name may change)
PROBE_COMPARED = ("classifier_arch", "classifier_weights", "preprocess", "dtype", "hooks",
                  "whitening_eps", "chunk_size", "device_kind", "fb_settings", "images",
                  "n_images")


def _read_parts(pdir: Path, ks: Sequence[int], n_chunks: int):
    import xarray as xr

    by_k = []
    for k in sorted(ks):
        chunks = []
        for c in range(n_chunks):
            with xr.open_dataset(_part_path(pdir, k, c)) as d:
                chunks.append(d.load())
        by_k.append(xr.concat(chunks, dim="image"))
    return xr.concat(by_k, dim="k")


def _add_metrics(ds, records: Sequence[ImageRecord]):
    """Top-1 / class change / start accuracy variables; labels from the run's image list (so a
    corrected label needs no re-probing)."""
    label_of = {r.id: r.label for r in records}
    labels = np.array([label_of[str(i)] for i in ds["image"].values], dtype=np.int64)
    ds["label"] = ("image", labels)
    ds["logits_start"] = ds["logits_start"].isel(k=0, drop=True)
    top1 = ds["logits"].argmax("class")
    top1_start = ds["logits_start"].argmax("class")
    ds["top1"] = top1
    ds["top1_start"] = top1_start
    ds["class_change"] = (top1 != top1_start).astype(np.float64)
    top5 = np.argsort(-ds["logits_start"].values, axis=1)[:, :5]
    ds["correct1_start"] = ("image", (top1_start.values == labels).astype(np.float64))
    ds["correct5_start"] = ("image", (top5 == labels[:, None]).any(1).astype(np.float64))
    labelled = labels >= 0
    for n in (1, 5):
        ds.attrs[f"top{n}_accuracy"] = (float(ds[f"correct{n}_start"].values[labelled].mean())
                                        if labelled.any() else float("nan"))
    return ds


def _settings_attrs(meta: dict, info: dict) -> dict:
    """NetCDF attributes recording the settings of the forward-backward run and the probe."""
    return {
        "n_steps": int(meta["n_steps"]), "seed": int(meta["seed"]), "ddpm": meta.get("ddpm", ""),
        "ddpm_fingerprint": str(meta.get("ddpm_fingerprint", "")),
        "fb_dtype": str(meta.get("dtype", "")), "fb_device_kind": str(meta.get("device_kind", "")),
        "classifier": info.get("classifier", ""),
        "classifier_weights": info.get("classifier_weights", ""),
        "hooks": ",".join(info.get("hooks", [])), "whitening_eps": info.get("whitening_eps", 0.0),
        "dtype": info.get("dtype", ""), "device_kind": info.get("device_kind", ""),
        "probe_settings": json.dumps(info, sort_keys=True),
        "metric_nl2": "||a - b|| / ||a|| of whitened activations",
    }


def merge_probe(run_dir: str | os.PathLike, strict: bool = True, name: str = PROBE_NAME):
    """Merge the parts of probe ``name`` of ``run_dir`` into ``run_dir/<name>.nc`` (under an
    inter-process lock, written atomically) and return the Dataset.

    Variables (dims): ``cosine``, ``l2``, ``nl2`` (k, image, layer); ``logits`` (k, image, class);
    ``top1`` (k, image); ``class_change`` (k, image) = top-1 differs from the start image's;
    ``label``, ``top1_start``, ``correct1_start``, ``correct5_start`` (image); attributes
    ``top1_accuracy`` / ``top5_accuracy`` of the start images (NaN when unlabelled) and the
    settings (``classifier_weights``, ``hooks``, ``whitening_eps``, ``dtype``, ``device_kind``,
    ``ddpm_fingerprint``, ..., all of them as JSON in ``probe_settings``).
    With ``strict=False`` returns None (and writes nothing) while parts are missing.
    """
    run = _open_run(run_dir, name)
    info_path = run.pdir / "config.json"
    if not info_path.is_file():
        if strict:
            raise ConfigError(f"{info_path}: no probe run {name!r} found in {run.run_dir}")
        return None
    info = read_json(info_path)
    n_chunks = -(-len(run.records) // int(info["chunk_size"]))
    need = {(int(k), c) for k in run.meta["ks"] for c in range(n_chunks)}
    have = {(int(p.stem[1:5]), int(p.stem.split("_c")[1]))
            for p in (run.pdir / "parts").glob("k*_c*.nc")}
    if not need <= have:
        if strict:
            lack = sorted(need - have)[:3]
            raise ConfigError(f"{run.pdir}: probe parts missing (e.g. (k, chunk) = {lack})")
        return None
    out = run.run_dir / f"{name}.nc"
    with file_lock(lock_path(out)):
        ds = _add_metrics(_read_parts(run.pdir, sorted({k for k, _ in need}), n_chunks),
                          run.records)
        ds.attrs.update(_settings_attrs(run.meta, info))
        ds = ds.assign_coords(t=("k", [(-1 if k == 0 else int(run.meta["timesteps"][k - 1]))
                                       for k in ds["k"].values]))
        with atomic_path(out) as tmp:
            ds.to_netcdf(tmp)
    return ds
