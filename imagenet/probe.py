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

from hiergen.imagenet.data import ImageRecord, load_images, records_from_json, shard
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
                          num_classes=int(cfg["num_classes"]), extra=cfg)
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
                      name=str(source), num_classes=int(getattr(model, "num_classes", 0)))


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
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata={"eps": str(self.eps)})
        os.replace(tmp, path)

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


def compute_whitening(clf: Classifier, rec: ActivationRecorder, start: Sequence[ImageRecord],
                      size: int, channels: int, batch_size: int, device: str = "cpu") -> Whitening:
    """Whitening statistics over all start images (the k = 0 PNGs)."""
    import torch

    w = Whitening()
    for batch in _batches(list(start), batch_size):
        x = torch.from_numpy(load_images(batch, size, channels)).to(device)
        _, acts = rec.forward(clf.preprocess(x))
        w.update(acts)
    return w.finalize()


def _part_path(probe_dir: Path, k: int, chunk: int) -> Path:
    return probe_dir / "parts" / f"k{k:04d}_c{chunk:05d}.nc"


def run_probe(
    run_dir: str | os.PathLike,
    clf: Classifier,
    batch_size: int = 32,
    shard_index: int = 0,
    num_shards: int = 1,
    hook_names: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Probe the classifier on every (image, k) PNG of a forward-backward run in ``run_dir``.

    Writes ``run_dir/probe/whitening.safetensors`` (stats over the start images, reused when
    present), one NetCDF part per (k, chunk of ``batch_size`` images) under ``probe/parts``
    (skipped when present; shard ``shard_index`` does every ``num_shards``-th chunk), and, once all
    parts exist, the merged ``run_dir/probe.nc`` (see :func:`merge_probe`). Missing generated
    images (a forward-backward still running) leave their part for a later call. Returns timing
    ``{"images": n, "seconds": s, "images_per_s": r}`` over newly probed (image, k) pairs.
    """
    import torch
    import xarray as xr
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    fb_dir = run_dir / "fb"
    if not (fb_dir / "meta.json").is_file():
        raise ConfigError(f"{fb_dir / 'meta.json'}: no forward-backward run found in {run_dir}")
    meta = json.loads((fb_dir / "meta.json").read_text())
    records = records_from_json((fb_dir / "images.json").read_text())
    ks = [int(k) for k in meta["ks"]]
    size, channels = int(meta["image_size"]), int(meta["channels"])
    probe_dir = run_dir / "probe"
    (probe_dir / "parts").mkdir(parents=True, exist_ok=True)
    points = hook_points(clf.model, hook_names)
    layers = [n for n, _ in points]
    rec = ActivationRecorder(clf.model, points)
    start_all = _fb_paths(fb_dir, 0, records)
    missing = [r.path for r in start_all if not Path(r.path).is_file()]
    if missing:
        raise ConfigError(f"{missing[0]}: start image (k = 0) missing; run forward-backward first")
    wpath = probe_dir / "whitening.safetensors"
    if wpath.is_file():
        white = Whitening.load(wpath)
        if sorted(white.mean) != sorted(layers):
            raise ConfigError(f"{wpath}: statistics are for other layers than the hooked ones")
    else:
        white = compute_whitening(clf, rec, start_all, size, channels, batch_size, device)
        white.save(wpath)
    info_path = probe_dir / "layers.json"
    if info_path.is_file():
        old = json.loads(info_path.read_text())
        if old.get("chunk_size") != batch_size or old.get("layers") != layers:
            raise ConfigError(f"{info_path}: existing probe parts used chunk size "
                              f"{old.get('chunk_size')} and {len(old.get('layers', []))} layers; "
                              f"resume with the same batch size and classifier")
    else:
        info_path.write_text(json.dumps({"classifier": clf.name, "layers": layers,
                                         "chunk_size": batch_size}))

    mine = shard([(c, records[i:i + batch_size]) for c, i in
                  enumerate(range(0, len(records), batch_size))], shard_index, num_shards)
    todo = [(c, rs, [k for k in ks if not _part_path(probe_dir, k, c).is_file()])
            for c, rs in mine]
    todo = [t for t in todo if t[2]]
    bar = tqdm(total=sum(len(rs) * len(kk) for _, rs, kk in todo), desc="probe", unit="img",
               disable=not progress)
    n_done, seconds = 0, 0.0
    for c, rs, kk in todo:
        x0 = torch.from_numpy(load_images(_fb_paths(fb_dir, 0, rs), size, channels)).to(device)
        logit0, acts0 = rec.forward(clf.preprocess(x0))
        w0 = {n: white.apply(n, a) for n, a in acts0.items()}
        for k in kk:
            gen = _fb_paths(fb_dir, k, rs)
            if not all(Path(r.path).is_file() for r in gen):
                continue
            t0 = time.perf_counter()
            x = torch.from_numpy(load_images(gen, size, channels)).to(device)
            logit, acts = rec.forward(clf.preprocess(x))
            sims = {n: similarity(w0[n], white.apply(n, acts[n])) for n in layers}
            seconds += time.perf_counter() - t0
            n_done += len(rs)
            ds = xr.Dataset(
                {m: (("image", "layer"), np.stack([sims[n][m] for n in layers], axis=1))
                 for m in ("cosine", "l2", "nl2")},
                coords={"image": [r.id for r in rs], "layer": layers},
            )
            ds["logits"] = (("image", "class"), logit.cpu().numpy())
            ds["logits_start"] = (("image", "class"), logit0.cpu().numpy())
            ds["label"] = ("image", np.array([r.label for r in rs], dtype=np.int64))
            ds = ds.expand_dims(k=[k])
            path = _part_path(probe_dir, k, c)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            ds.to_netcdf(tmp)
            os.replace(tmp, path)
            bar.update(len(rs))
    bar.close()
    rec.close()
    merge_probe(run_dir, strict=False)
    return {"images": n_done, "seconds": seconds,
            "images_per_s": n_done / seconds if seconds > 0 else float("nan")}


def merge_probe(run_dir: str | os.PathLike, strict: bool = True):
    """Merge the probe parts of ``run_dir`` into ``run_dir/probe.nc`` and return the Dataset.

    Variables (dims): ``cosine``, ``l2``, ``nl2`` (k, image, layer); ``logits`` (k, image, class);
    ``top1`` (k, image); ``class_change`` (k, image) = top-1 differs from the start image's;
    ``label``, ``top1_start``, ``correct1_start``, ``correct5_start`` (image); attributes
    ``top1_accuracy`` / ``top5_accuracy`` of the start images (NaN when unlabelled).
    With ``strict=False`` returns None (and writes nothing) while parts are missing.
    """
    import xarray as xr

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "fb" / "meta.json").read_text())
    records = records_from_json((run_dir / "fb" / "images.json").read_text())
    probe_dir = run_dir / "probe"
    info_path = probe_dir / "layers.json"
    if not info_path.is_file():
        if strict:
            raise ConfigError(f"{info_path}: no probe run found in {run_dir}")
        return None
    info = json.loads(info_path.read_text())
    n_chunks = -(-len(records) // int(info["chunk_size"]))
    need = {(int(k), c) for k in meta["ks"] for c in range(n_chunks)}
    have = {(int(p.stem[1:5]), int(p.stem.split("_c")[1]))
            for p in (probe_dir / "parts").glob("k*_c*.nc")}
    if not need <= have:
        if strict:
            lack = sorted(need - have)[:3]
            raise ConfigError(f"{probe_dir}: probe parts missing (e.g. (k, chunk) = {lack})")
        return None
    by_k = []
    for k in sorted({k for k, _ in need}):
        chunks = []
        for c in sorted({c for kk, c in need if kk == k}):
            with xr.open_dataset(_part_path(probe_dir, k, c)) as d:
                chunks.append(d.load())
        by_k.append(xr.concat(chunks, dim="image"))
    ds = xr.concat(by_k, dim="k")
    ds["label"] = ds["label"].isel(k=0, drop=True)
    ds["logits_start"] = ds["logits_start"].isel(k=0, drop=True)
    top1 = ds["logits"].argmax("class")
    top1_start = ds["logits_start"].argmax("class")
    ds["top1"] = top1
    ds["top1_start"] = top1_start
    ds["class_change"] = (top1 != top1_start).astype(np.float64)
    labels = ds["label"].values
    top5 = np.argsort(-ds["logits_start"].values, axis=1)[:, :5]
    ds["correct1_start"] = ("image", (top1_start.values == labels).astype(np.float64))
    ds["correct5_start"] = ("image", (top5 == labels[:, None]).any(1).astype(np.float64))
    labelled = labels >= 0
    ds.attrs.update({
        "top1_accuracy": float(ds["correct1_start"].values[labelled].mean()) if labelled.any()
        else float("nan"),
        "top5_accuracy": float(ds["correct5_start"].values[labelled].mean()) if labelled.any()
        else float("nan"),
        "n_steps": int(meta["n_steps"]), "seed": int(meta["seed"]), "ddpm": meta.get("ddpm", ""),
        "metric_nl2": "||a - b|| / ||a|| of whitened activations",
    })
    ds = ds.assign_coords(t=("k", [(-1 if k == 0 else int(meta["timesteps"][k - 1]))
                                   for k in ds["k"].values]))
    ds.attrs["classifier"] = info.get("classifier", "")
    out = run_dir / "probe.nc"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    ds.to_netcdf(tmp)
    os.replace(tmp, out)
    return ds
