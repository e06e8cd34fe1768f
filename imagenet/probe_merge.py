"""The probe's part of a run folder: layout (``run/<name>/config.json``, ``whitening.safetensors``,
``parts/k0010_c00003.nc``), reading the forward-backward run it probes, and :func:`merge_probe`,
which assembles the parts into ``run/<name>.nc`` with the metrics and the recorded settings."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hiergen._files import atomic_path, file_lock
from hiergen.imagenet.data import ImageRecord, records_from_json
from hiergen.imagenet.settings import lock_path, read_json
from hiergen.models.errors import ConfigError


def fb_paths(fb_dir: Path, k: int, records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """The records of the generated images of reversal step ``k`` (``fb/k0010/<id>.png``)."""
    return [ImageRecord(r.id, str(fb_dir / f"k{k:04d}" / f"{r.safe_id}.png"), r.label,
                        r.class_name) for r in records]


def batches(records: Sequence, batch_size: int) -> list:
    """Consecutive chunks of ``batch_size`` (the probe's chunk c is ``batches(...)[c]``)."""
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


def part_path(pdir: Path, k: int, chunk: int) -> Path:
    """The NetCDF part of (k, chunk) in probe folder ``pdir``."""
    return pdir / "parts" / f"k{k:04d}_c{chunk:05d}.nc"


@dataclass
class ProbeRun:
    """What one probe call works on: the forward-backward run and the probe folder."""

    run_dir: Path
    fb_dir: Path
    pdir: Path
    meta: dict
    records: list[ImageRecord]
    size: int
    channels: int


def open_run(run_dir: str | os.PathLike, name: str) -> ProbeRun:
    """The forward-backward run in ``run_dir`` and its probe folder ``name``; a missing or corrupt
    run is a :class:`ConfigError` naming the file."""
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
    return ProbeRun(run_dir, fb_dir, probe_dir(run_dir, name), meta, records,
                    int(meta["image_size"]), int(meta["channels"]))


def _read_parts(pdir: Path, ks: Sequence[int], n_chunks: int):
    import xarray as xr

    by_k = []
    for k in sorted(ks):
        chunks = []
        for c in range(n_chunks):
            with xr.open_dataset(part_path(pdir, k, c)) as d:
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
    run = open_run(run_dir, name)
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
