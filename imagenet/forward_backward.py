"""DDPM forward-backward with diffusers models: noise start images to ``t_k``, denoise to 0.

:func:`load_ddpm` loads any class-unconditional ``UNet2DModel`` + ``DDPMScheduler`` (a local
folder or a hub id, through ``from_pretrained``); :class:`RespacedDDPM` runs the respaced
ancestral reverse chain (the authors' protocol), for epsilon / sample / v predictions and
fixed or learned variances (a UNet with ``2 C`` output channels is split into the prediction and
the variance interpolation ``v`` of Nichol & Dhariwal, as guided-diffusion's ``learned_range``).
:func:`run_forward_backward` drives a whole experiment over images x reversal steps with
per-(image, k) PNG outputs: resumable, shardable across processes, seeded per image so the result
does not depend on batching or sharding.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hiergen._files import atomic_write, file_lock
from hiergen.imagenet.data import (
    ImageRecord,
    load_images,
    records_to_json,
    save_png,
)
from hiergen.imagenet.distributed import Processes
from hiergen.imagenet.schedule import RespacedSchedule, respace
from hiergen.imagenet.settings import (
    differing,
    json_fingerprint,
    lock_path,
    mismatch_message,
    read_json,
    state_dict_fingerprint,
)
from hiergen.models.errors import ConfigError


def image_seed(seed: int, image_id: str, k: int) -> int:
    """Deterministic 63-bit seed of one (image, k) pair, independent of batch and shard."""
    h = hashlib.sha256(f"{int(seed)}|{image_id}|{int(k)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _find_subfolder(root: Path, name: str, config_name: str) -> str | None:
    if (root / name / config_name).is_file():
        return name
    if (root / config_name).is_file():
        return None
    return ""


def _first_loadable(load, subfolders):
    err = None
    for sub in subfolders:
        try:
            return load(sub)
        except Exception as exc:  # try the next layout, re-raise the first error
            err = err or exc
    raise err


def load_ddpm(source: str | os.PathLike, device: str = "cpu"):
    """Load ``(unet, scheduler)`` from a diffusers pipeline folder (``unet/``, ``scheduler/``), a
    folder holding both configs, or a hub id. Raises :class:`ConfigError` naming the path when the
    folder, a config or the weights are missing or unreadable."""
    from diffusers import DDPMScheduler, UNet2DModel

    src = str(source)
    local = Path(src)
    # a hub id is "name" or "owner/name"; anything that exists or looks like a path is local
    is_local = (local.exists() or isinstance(source, os.PathLike)
                or src.startswith((".", "/", "~")) or src.count("/") > 1)
    if is_local:
        if not local.is_dir():
            raise ConfigError(f"{local}: DDPM checkpoint folder not found")
        unet_sub = _find_subfolder(local, "unet", "config.json")
        sched_sub = _find_subfolder(local, "scheduler", "scheduler_config.json")
        if unet_sub == "":
            raise ConfigError(f"{local}: no UNet config (expected {local}/unet/config.json or "
                              f"{local}/config.json)")
        if sched_sub == "":
            raise ConfigError(f"{local}: no scheduler config (expected "
                              f"{local}/scheduler/scheduler_config.json)")
    try:
        if is_local:
            unet = UNet2DModel.from_pretrained(src, subfolder=unet_sub, low_cpu_mem_usage=False)
            scheduler = DDPMScheduler.from_pretrained(src, subfolder=sched_sub)
        else:  # hub: a pipeline repo (unet/, scheduler/) or a model repo with both configs
            unet = _first_loadable(lambda sub: UNet2DModel.from_pretrained(
                src, subfolder=sub, low_cpu_mem_usage=False), ("unet", None))
            scheduler = _first_loadable(lambda sub: DDPMScheduler.from_pretrained(
                src, subfolder=sub), ("scheduler", None))
    except Exception as exc:  # diffusers raises OSError / EnvironmentError / safetensors errors
        where = local / (unet_sub or "") if is_local else src
        raise ConfigError(f"{where}: cannot load the DDPM checkpoint ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if getattr(unet.config, "class_embed_type", None) is not None or \
            getattr(unet.config, "num_class_embeds", None):
        raise ConfigError(f"{src}: the UNet is class-conditional; a class-unconditional DDPM "
                          "is needed")
    return unet.to(device).eval(), scheduler


class RespacedDDPM:
    """The respaced reverse chain of a DDPM.

    Parameters
    ----------
    unet : a diffusers ``UNet2DModel`` (output channels C or 2 C).
    scheduler : its ``DDPMScheduler`` (supplies ``alphas_cumprod``, the variance type, the
        prediction type and clipping).
    n_steps : N, the number of respaced steps (250 in the paper).
    dtype : autocast dtype of the UNet (``torch.float16`` / ``torch.bfloat16``, on CUDA and
        CPU; see :func:`check_autocast`); None = float32.
    compile : wrap the UNet in ``torch.compile`` (CUDA path; untested on CPU here).
    """

    def __init__(self, unet, scheduler, n_steps: int, dtype=None, compile: bool = False):
        import torch

        self.unet = unet
        self.scheduler = scheduler
        self.schedule: RespacedSchedule = respace(scheduler.alphas_cumprod, n_steps)
        cfg = scheduler.config
        self.prediction_type = cfg.prediction_type
        self.variance_type = cfg.variance_type
        self.clip_sample = bool(cfg.clip_sample)
        self.clip_range = float(getattr(cfg, "clip_sample_range", 1.0))
        if getattr(cfg, "thresholding", False):
            raise ConfigError("scheduler thresholding is not supported by the respaced sampler")
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ConfigError(f"unknown prediction type {self.prediction_type!r}")
        c_in, c_out = unet.config.in_channels, unet.config.out_channels
        self.learned_variance = c_out == 2 * c_in
        if c_out not in (c_in, 2 * c_in):
            raise ConfigError(f"UNet has {c_in} input and {c_out} output channels; "
                              "expected C or 2C")
        if self.learned_variance and self.variance_type not in ("learned", "learned_range"):
            self.variance_type = "learned_range"
        self.channels = int(c_in)
        self.image_size = int(unet.config.sample_size if isinstance(unet.config.sample_size, int)
                              else unet.config.sample_size[0])
        self.device = next(unet.parameters()).device
        check_autocast(self.device.type, dtype)
        self.dtype = dtype
        self._net = torch.compile(unet) if compile else unet
        sch = self.schedule
        self._abar = sch.alphas_cumprod
        self._abar_prev = sch.alphas_cumprod_prev
        self._post_var = sch.posterior_variance
        self._fingerprint: str | None = None

    @property
    def dtype_name(self) -> str:
        """The autocast dtype as a name (``float32`` when none)."""
        return "float32" if self.dtype is None else str(self.dtype).replace("torch.", "")

    @property
    def fingerprint(self) -> str:
        """sha256 of the UNet weights and config and the scheduler config (computed once)."""
        if self._fingerprint is None:
            configs = {"unet": dict(self.unet.config), "scheduler": dict(self.scheduler.config)}
            self._fingerprint = json_fingerprint(
                {"weights": state_dict_fingerprint(self.unet.state_dict()),
                 "configs": {k: {n: v for n, v in c.items() if not n.startswith("_")}
                             for k, c in configs.items()}})
        return self._fingerprint

    # ---- one network evaluation ------------------------------------------------------------
    def model_output(self, x, i: int):
        """UNet output at respaced index i for ``x`` (B, C, H, W): (prediction, variance or None),
        both float32."""
        import torch

        t = torch.full((x.shape[0],), int(self.schedule.timesteps[i]), device=x.device,
                       dtype=torch.long)
        use_amp = self.dtype is not None
        with torch.no_grad(), torch.autocast(x.device.type, dtype=self.dtype, enabled=use_amp):
            out = self._net(x, t).sample
        out = out.float()
        if self.learned_variance:
            return out[:, : self.channels], out[:, self.channels:]
        return out, None

    def step(self, x, i: int, out, var_out, noise):
        """One ancestral step from respaced index i to i-1. Returns (x_prev, x0_pred)."""
        import torch

        abar, abar_prev = float(self._abar[i]), float(self._abar_prev[i])
        beta = 1.0 - abar / abar_prev
        if self.prediction_type == "epsilon":
            x0 = (x - (1.0 - abar) ** 0.5 * out) / abar ** 0.5
        elif self.prediction_type == "sample":
            x0 = out
        else:  # v_prediction
            x0 = abar ** 0.5 * x - (1.0 - abar) ** 0.5 * out
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        c0 = abar_prev ** 0.5 * beta / (1.0 - abar)
        ct = (1.0 - beta) ** 0.5 * (1.0 - abar_prev) / (1.0 - abar)
        mean = c0 * x0 + ct * x
        if i == 0:
            return mean, x0
        post_var = max(float(self._post_var[i]), 1e-20)
        vt = self.variance_type
        if vt in ("fixed_small", "fixed_small_log"):
            std = torch.full_like(x, post_var ** 0.5)
        elif vt in ("fixed_large", "fixed_large_log"):
            std = torch.full_like(x, beta ** 0.5)
        elif vt == "learned":
            std = torch.exp(0.5 * var_out)
        elif vt == "learned_range":
            frac = (var_out + 1.0) / 2.0
            log_var = frac * np.log(beta) + (1.0 - frac) * np.log(post_var)
            std = torch.exp(0.5 * log_var)
        else:
            raise ConfigError(f"unsupported variance type {vt!r}")
        return mean + std * noise, x0

    # ---- whole chains ------------------------------------------------------------------------
    def forward_backward(self, x0, k: int, seeds: Sequence[int]):
        """Noise ``x0`` (B, C, H, W) in [-1, 1] to reversal step k and run the chain to 0.

        ``seeds`` (B,) give one CPU ``torch.Generator`` per image; the noising draw comes first,
        then one draw per reverse step, so each image's result depends only on its seed.
        k = 0 returns ``x0`` unchanged; k = N starts from pure noise. Returns (B, C, H, W) float32.
        """
        import torch

        self.schedule._check_k(k)
        x0 = x0.to(self.device, torch.float32)
        if len(seeds) != x0.shape[0]:
            raise ConfigError(f"{len(seeds)} seeds for a batch of {x0.shape[0]} images")
        if k == 0:
            return x0.clone()
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        shape = tuple(x0.shape[1:])

        def draw():
            return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device)

        eps = draw()
        if k == self.schedule.n_steps:
            x = eps
        else:
            abar = float(self._abar[k - 1])
            x = abar ** 0.5 * x0 + (1.0 - abar) ** 0.5 * eps
        for i in range(k - 1, -1, -1):
            out, var_out = self.model_output(x, i)
            noise = draw() if i > 0 else None
            x, _ = self.step(x, i, out, var_out, noise)
        return x.float()


def check_autocast(device_type: str, dtype) -> None:
    """Raise :class:`ConfigError` unless this torch autocasts on ``device_type`` to ``dtype``
    (a torch dtype; None = no autocast). torch turns an unsupported autocast off with only a
    warning (float16 on CPU in older torch, float64 anywhere, ...), which would record a dtype
    in the run folder that the images were not computed in."""
    import warnings

    import torch

    if dtype is None:
        return
    name = str(dtype).replace("torch.", "")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autocast(device_type, dtype=dtype):
                pass
    except RuntimeError as exc:  # a device type without autocast
        problem = str(exc)
    else:
        problems = [str(w.message) for w in caught if "autocast" in str(w.message).lower()]
        if not problems:
            return
        problem = problems[0]
    raise ConfigError(
        f"autocast to {name} on {device_type} is not supported by torch {torch.__version__} "
        f"({problem.splitlines()[0] if problem else 'refused'}); use --dtype float32 (or "
        "accelerate launch --mixed_precision no), another dtype or another device")


def fb_image_path(out_dir: str | os.PathLike, k: int, record: ImageRecord) -> Path:
    """Where the output of (image, k) lives: ``out_dir/fb/k0010/<safe id>.png``."""
    return Path(out_dir) / "fb" / f"k{int(k):04d}" / f"{record.safe_id}.png"


#: settings of ``fb/meta.json`` that change the generated pixels: a run folder holds one value each
FB_SETTINGS = ("n_steps", "seed", "image_size", "channels", "timesteps", "variance_type",
               "prediction_type", "ddpm_fingerprint", "dtype", "device_kind", "autocast_off_cuda")


def _merge_meta(out_dir: Path, meta: dict, records: Sequence[ImageRecord]
                ) -> tuple[dict, list[ImageRecord]]:
    """Check a run's settings against ``out_dir/fb/meta.json`` (every one of
    :data:`FB_SETTINGS` must match, else :class:`ConfigError` names each difference; an image id
    must keep its start file) and store the union of the old and new images and reversal steps
    (a run folder always holds images x ks), all under an inter-process lock."""
    fb = out_dir / "fb"
    path, images_path = fb / "meta.json", fb / "images.json"
    records = sorted(records, key=lambda r: r.id)
    with file_lock(lock_path(path)):
        if path.exists():
            old = read_json(path)
            names = differing(old, meta, FB_SETTINGS)
            if names:
                raise ConfigError(mismatch_message(
                    path, old, meta, names, "generated images",
                    "use another --out for these settings, or the stored ones to resume"))
            meta = {**meta, "ks": sorted(set(old.get("ks", [])) | set(meta["ks"]))}
            merged = {r["id"]: ImageRecord(**r) for r in read_json(images_path)}
            for r in records:
                prev = merged.get(r.id)
                if prev is not None and prev.path != r.path:
                    raise ConfigError(f"{images_path}: image {r.id!r} was generated from "
                                      f"{prev.path}, this run starts from {r.path}; use "
                                      "another --out for other start images")
            merged.update({r.id: r for r in records})  # labels follow the latest scan
            records = [merged[i] for i in sorted(merged)]
        atomic_write(images_path, records_to_json(records))
        atomic_write(path, json.dumps(meta, indent=1))
    return meta, records


def ddpm_settings(sampler: RespacedDDPM) -> dict:
    """The sampler's part of :data:`FB_SETTINGS` (weights fingerprint, respacing, dtype, device
    kind)."""
    return {"n_steps": sampler.schedule.n_steps, "image_size": sampler.image_size,
            "channels": sampler.channels,
            "timesteps": [int(t) for t in sampler.schedule.timesteps],
            "variance_type": sampler.variance_type, "prediction_type": sampler.prediction_type,
            "ddpm_fingerprint": sampler.fingerprint, "dtype": sampler.dtype_name,
            "device_kind": sampler.device.type,
            # earlier hiergen autocast on CUDA only: its CPU folders with dtype bfloat16/float16
            # hold float32 images and lack this key, so they are refused instead of mixed
            "autocast_off_cuda": (True if sampler.device.type != "cuda"
                                  and sampler.dtype_name != "float32" else None)}


def chunks(records: Sequence, size: int) -> list[tuple[int, list]]:
    """``[(chunk index, records)]`` of consecutive chunks of ``size``."""
    return [(c, list(records[i:i + size])) for c, i in enumerate(range(0, len(records), size))]


def run_forward_backward(
    sampler: RespacedDDPM,
    records: Sequence[ImageRecord],
    ks: Sequence[int],
    out_dir: str | os.PathLike,
    seed: int = 0,
    batch_size: int = 32,
    shard_index: int = 0,
    num_shards: int = 1,
    ddpm_name: str = "",
    progress: bool = True,
    processes: Processes | None = None,
) -> dict:
    """Forward-backward of every record at every reversal step k; PNG per (image, k).

    Images are cut into consecutive chunks of ``batch_size``; shard ``shard_index`` of
    ``num_shards`` does every ``num_shards``-th chunk, so sharded runs write exactly the files (and
    values) of a single run. An (image, k) PNG that exists is not recomputed; each PNG is written
    atomically as soon as its batch finishes. ``processes`` (a
    :class:`~hiergen.imagenet.distributed.Processes`, e.g. under ``accelerate launch``) replaces
    ``shard_index``/``num_shards``: the chunks are split between the processes of the group and
    the timings gathered (every process returns the totals). A run folder holds one setting (N, seed, DDPM,
    image size; another is refused) and grows to the union of all images and ks asked for
    there. k = 0 is always included (it is the start image the
    probe compares with). The settings (:data:`FB_SETTINGS`: respacing, seed, the DDPM's weights
    fingerprint, dtype, device kind) are recorded in ``fb/meta.json`` and must match to resume.
    Returns timing over newly computed (image, k > 0) pairs:
    ``{"images", "seconds", "images_per_s", "unet_evals" (batched UNet calls), "image_steps"
    (sum of k over images, i.e. single-image denoising steps), "image_steps_per_s", "processes"
    (how many processes these totals cover)}``.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if not records:
        raise ConfigError("no start images to run forward-backward on")
    ks = sorted({0, *(int(k) for k in ks)})
    for k in ks:
        sampler.schedule._check_k(k)
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    meta = {**ddpm_settings(sampler), "seed": int(seed), "ddpm": str(ddpm_name), "ks": ks}
    procs = processes if processes is not None else Processes(shard_index, num_shards)
    with procs.main_first():
        meta, records = _merge_meta(out_dir, meta, records)
    ks = meta["ks"]
    mine = procs.split(chunks(records, batch_size))
    todo = [(k, c, [r for r in rs if not fb_image_path(out_dir, k, r).exists()])
            for k in ks for c, rs in mine]
    todo = [t for t in todo if t[2]]
    n_done, n_evals, n_image_steps, seconds = 0, 0, 0, 0.0
    bar = tqdm(total=sum(len(t[2]) for t in todo), desc="forward-backward", unit="img",
               disable=not progress or not procs.is_main)
    import torch

    for k, _c, rs in todo:
        x0 = torch.from_numpy(load_images(rs, sampler.image_size, sampler.channels))
        seeds = [image_seed(seed, r.id, k) for r in rs]
        t0 = time.perf_counter()
        x = sampler.forward_backward(x0, k, seeds).cpu().numpy()
        if k > 0:
            seconds += time.perf_counter() - t0
            n_done += len(rs)
            n_evals += k
            n_image_steps += k * len(rs)
        for r, xi in zip(rs, x):
            prov = {"start_id": r.id, "start_path": r.path, "label": r.label, "k": k,
                    "n_steps": sampler.schedule.n_steps, "seed": int(seed),
                    "image_seed": image_seed(seed, r.id, k),
                    "t": sampler.schedule.timestep_for_k(k) if k > 0 else None,
                    "ddpm": str(ddpm_name), "ddpm_fingerprint": meta["ddpm_fingerprint"],
                    "dtype": meta["dtype"], "device_kind": meta["device_kind"]}
            save_png(xi, fb_image_path(out_dir, k, r), prov)
        bar.update(len(rs))
    bar.close()
    return _timing(procs, n_done, seconds, n_evals, n_image_steps)


def _timing(procs: Processes, n_done: int, seconds: float, n_evals: int, n_image_steps: int
            ) -> dict:
    """Timing totals over the processes of a group (``seconds``: the slowest process's), then a
    barrier: when any process returns, every image of the run is written."""
    parts = procs.gather((n_done, seconds, n_evals, n_image_steps))
    procs.barrier()
    n_done, n_evals, n_image_steps = (sum(p[i] for p in parts) for i in (0, 2, 3))
    seconds = max(p[1] for p in parts)
    return {"images": n_done, "seconds": seconds,
            "images_per_s": n_done / seconds if seconds > 0 else float("nan"),
            "unet_evals": n_evals, "image_steps": n_image_steps,
            "image_steps_per_s": n_image_steps / seconds if seconds > 0 else float("nan"),
            "processes": len(parts)}
