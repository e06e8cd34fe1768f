"""Probing a classifier on start vs forward-backward images (the paper's Fig. 2, right): the
driver. :func:`run_probe` runs the whole experiment over the PNGs that
:func:`hiergen.imagenet.forward_backward.run_forward_backward` wrote - per-(k, chunk) NetCDF
parts (resumable, shardable, keyed by :func:`probe_settings`), merged into ``probe.nc``.

The pieces live in their own modules and are re-exported here:
:mod:`~hiergen.imagenet.classifier` (:func:`load_classifier`, :class:`Classifier`),
:mod:`~hiergen.imagenet.hooks` (:func:`hook_points`, :class:`ActivationRecorder`),
:mod:`~hiergen.imagenet.whitening` (:class:`Whitening`, :func:`similarity`) and
:mod:`~hiergen.imagenet.probe_merge` (run-folder layout, :func:`merge_probe`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hiergen._files import atomic_path, file_lock
from hiergen.imagenet.classifier import (
    CLASSIFIER_CONFIG,
    CLASSIFIER_WEIGHTS,
    Classifier,
    build_timm_model,
    load_classifier,
)
from hiergen.imagenet.data import ImageRecord, load_images
from hiergen.imagenet.distributed import Processes
from hiergen.imagenet.forward_backward import FB_SETTINGS
from hiergen.imagenet.hooks import ActivationRecorder, channel_axis, hook_points
from hiergen.imagenet.probe_merge import (
    PROBE_NAME,
    ProbeRun,
    batches,
    fb_paths,
    merge_probe,
    open_run,
    part_path,
    probe_dir,
)
from hiergen.imagenet.settings import json_fingerprint, lock_path, record_settings
from hiergen.imagenet.whitening import Whitening, similarity
from hiergen.models.errors import ConfigError

__all__ = [
    "CLASSIFIER_CONFIG", "CLASSIFIER_WEIGHTS", "PROBE_COMPARED", "PROBE_NAME",
    "ActivationRecorder", "Classifier", "Whitening", "build_timm_model", "channel_axis",
    "compute_whitening", "hook_points", "load_classifier", "merge_probe", "probe_dir",
    "probe_settings", "run_probe", "similarity",
]


def compute_whitening(clf: Classifier, rec: ActivationRecorder, start: Sequence[ImageRecord],
                      size: int, channels: int, batch_size: int, device: str = "cpu",
                      eps: float = 1e-6) -> Whitening:
    """Whitening statistics over all start images (the k = 0 PNGs)."""
    import torch

    w = Whitening(eps)
    for batch in batches(list(start), batch_size):
        x = torch.from_numpy(load_images(batch, size, channels)).to(device)
        _, acts = rec.forward(clf.preprocess(x))
        w.update(acts)
    return w.finalize()


def probe_settings(clf: Classifier, layers: Sequence[str], run: ProbeRun, batch_size: int,
                   eps: float, device: str) -> dict:
    """Every setting that changes probe results (stored in ``<probe>/config.json`` and in the
    merged file's attributes): the classifier's :meth:`Classifier.settings`, the hooked layers,
    the whitening eps, the chunk size, the device kind and fingerprints of the forward-backward
    settings and of the image list."""
    import torch

    return {**clf.settings(), "hooks": list(layers), "whitening_eps": float(eps),
            "chunk_size": int(batch_size), "device_kind": torch.device(device).type,
            "fb_settings": json_fingerprint(_fb_settings(run.meta)),
            "images": json_fingerprint([r.id for r in run.records]),
            "n_images": len(run.records)}


def _fb_settings(meta: dict) -> dict:
    """The forward-backward settings a probe depends on. ``autocast_off_cuda`` is left out when
    unset, so probes of runs made before it existed keep their settings fingerprint."""
    settings = {k: meta.get(k) for k in FB_SETTINGS}
    if settings.get("autocast_off_cuda") is None:
        del settings["autocast_off_cuda"]
    return settings


def _load_whitening(wpath: Path, layers, eps) -> Whitening:
    white = Whitening.load(wpath)
    if sorted(white.mean) != sorted(layers) or white.eps != eps:
        raise ConfigError(f"{wpath}: statistics are for other layers or another eps "
                          "than this probe's settings; delete the probe folder")
    return white


def _load_or_compute_whitening(clf, rec, run: ProbeRun, layers, batch_size, device, eps,
                               procs: Processes | None = None) -> Whitening:
    """The stored statistics of the probe folder, or computed (once, under a lock) and stored.
    In a process group the start images are split between the processes and their per-batch
    sums gathered (added in batch order: the statistics of one process, bit for bit); the
    main process stores them."""
    wpath = run.pdir / "whitening.safetensors"
    if procs is None or not procs.communicates:
        with file_lock(lock_path(wpath)):
            if wpath.is_file():
                return _load_whitening(wpath, layers, eps)
            white = compute_whitening(clf, rec, fb_paths(run.fb_dir, 0, run.records), run.size,
                                      run.channels, batch_size, device, eps)
            white.save(wpath)
        return white
    # every process looks before any can write (writing needs everyone's sums)
    if all(procs.gather(wpath.is_file())):
        return _load_whitening(wpath, layers, eps)
    import torch

    mine = []
    for i, batch in procs.split(list(enumerate(batches(fb_paths(run.fb_dir, 0, run.records),
                                                       batch_size)))):
        x = torch.from_numpy(load_images(batch, run.size, run.channels)).to(device)
        _, acts = rec.forward(clf.preprocess(x))
        mine.append((i, Whitening.batch_sums(acts)))
    white = Whitening(eps)
    for _, sums in sorted((p for part in procs.gather(mine) for p in part), key=lambda p: p[0]):
        white.add_sums(sums)
    white.finalize()
    if procs.is_main:
        with file_lock(lock_path(wpath)):
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


def _probe_chunk(clf, rec, white, run: ProbeRun, c, rs, ks, layers, device, bar) -> tuple:
    """Probe one chunk of images at the reversal steps ``ks`` whose images all exist; write one
    part per k. Returns (images probed, seconds)."""
    import torch

    x0 = torch.from_numpy(load_images(fb_paths(run.fb_dir, 0, rs), run.size, run.channels))
    logit0, acts0 = rec.forward(clf.preprocess(x0.to(device)))
    w0 = {n: white.apply(n, a) for n, a in acts0.items()}
    n_done, seconds = 0, 0.0
    for k in ks:
        gen = fb_paths(run.fb_dir, k, rs)
        if not all(Path(r.path).is_file() for r in gen):
            continue
        t0 = time.perf_counter()
        x = torch.from_numpy(load_images(gen, run.size, run.channels)).to(device)
        logit, acts = rec.forward(clf.preprocess(x))
        sims = {n: similarity(w0[n], white.apply(n, acts[n])) for n in layers}
        seconds += time.perf_counter() - t0
        n_done += len(rs)
        ds = _part_dataset(rs, k, layers, sims, logit, logit0)
        with atomic_path(part_path(run.pdir, k, c)) as tmp:
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
    processes: Processes | None = None,
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
    their part for a later call. ``processes`` (a
    :class:`~hiergen.imagenet.distributed.Processes`, e.g. under ``accelerate launch``) replaces
    ``shard_index``/``num_shards``: the whitening statistics are computed jointly, the chunks
    split, the timings gathered, and the main process merges once every process is done.
    Returns timing ``{"images": n, "seconds": s,
    "images_per_s": r, "processes": p}`` over newly probed (image, k) pairs (of all ``p``
    processes of a group).
    """
    from tqdm.auto import tqdm

    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if not whitening_eps > 0:
        raise ConfigError(f"whitening eps must be > 0, got {whitening_eps}")
    run = open_run(run_dir, name)
    points = hook_points(clf.model, hook_names)
    layers = [n for n, _ in points]
    missing = [r.path for r in fb_paths(run.fb_dir, 0, run.records) if not Path(r.path).is_file()]
    if missing:
        raise ConfigError(f"{missing[0]}: start image (k = 0) missing; run forward-backward first")
    if (run.pdir / "layers.json").is_file() and not (run.pdir / "config.json").is_file():
        raise ConfigError(f"{run.pdir}: probe results of an older hiergen without a settings "
                          "record (its weights are unknown); delete the folder or pass --name")
    procs = processes if processes is not None else Processes(shard_index, num_shards)
    with procs.main_first():
        record_settings(run.pdir / "config.json",
                        probe_settings(clf, layers, run, batch_size, whitening_eps, device),
                        "probe results",
                        f"pass another probe name (--name) for these settings, or delete "
                        f"{run.pdir}", compare=PROBE_COMPARED)
    rec = ActivationRecorder(clf.model, points)
    try:
        white = _load_or_compute_whitening(clf, rec, run, layers, batch_size, device,
                                           whitening_eps, procs)
        mine = procs.split(list(enumerate(batches(run.records, batch_size))))
        todo = [(c, rs, [k for k in run.meta["ks"] if not part_path(run.pdir, k, c).is_file()])
                for c, rs in mine]
        todo = [t for t in todo if t[2]]
        bar = tqdm(total=sum(len(rs) * len(kk) for _, rs, kk in todo), desc="probe", unit="img",
                   disable=not progress or not procs.is_main)
        n_done, seconds = 0, 0.0
        for c, rs, kk in todo:
            n, sec = _probe_chunk(clf, rec, white, run, c, rs, [int(k) for k in kk], layers,
                                  device, bar)
            n_done, seconds = n_done + n, seconds + sec
        bar.close()
    finally:
        rec.close()
    parts = procs.gather((n_done, seconds))
    procs.barrier()  # every part of the group is written
    if procs.is_main or not procs.communicates:
        merge_probe(run.run_dir, strict=False, name=name)
    procs.barrier()
    n_done, seconds = sum(p[0] for p in parts), max(p[1] for p in parts)
    return {"images": n_done, "seconds": seconds,
            "images_per_s": n_done / seconds if seconds > 0 else float("nan"),
            "processes": len(parts)}


#: probe settings that must match to reuse a probe folder (the classifier's name may change)
PROBE_COMPARED = ("classifier_arch", "classifier_weights", "preprocess", "dtype", "hooks",
                  "whitening_eps", "chunk_size", "device_kind", "fb_settings", "images",
                  "n_images")
