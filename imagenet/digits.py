"""The ``digits`` preset: a CPU-scale stand-in for ImageNet + guided-diffusion + ConvNeXt.

scikit-learn's handwritten digits (1797 images of 8x8, 17 grey levels, 10 classes) are upsampled
bilinearly to 16x16 and split once (seeded) into 1437 training and 360 test images. On the
training split we train

* a small class-unconditional DDPM: a diffusers ``UNet2DModel`` (3 resolutions, 32-32-64
  channels, no attention; about 0.74 M parameters) with a ``DDPMScheduler`` (T = 1000, linear
  betas 1e-4..0.02, fixed-small variance, epsilon prediction), weights averaged (EMA);
* a small ConvNeXt classifier built from timm's own ``ConvNeXt`` class (depths 1-1-2-1, widths
  16-32-48-64, stem patch 1, kernel 3), so the probe hooks exactly what it hooks on ConvNeXt-Base
  (stem, every block, every downsampling layer, head).

Both are saved with safetensors: ``<dir>/ddpm/{unet,scheduler}`` (a diffusers pipeline layout,
loadable with :func:`hiergen.imagenet.forward_backward.load_ddpm`) and ``<dir>/classifier``
(loadable with :func:`hiergen.imagenet.probe.load_classifier`). The repository ships trained
weights flat in ``hiergen/imagenet/assets`` (:func:`preset_dir`; the DDPM's ``config.json``,
``scheduler_config.json`` and ``diffusion_pytorch_model.safetensors`` beside the classifier's
``classifier.json`` and ``model.safetensors``: no file names collide, and a flat folder is all
the package-data pattern ``assets/*`` installs).
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np

from hiergen._files import atomic_write
from hiergen.models.errors import ConfigError

DIGITS_SIZE = 16
N_TEST = 360
SPLIT_SEED = 0
CLASSIFIER_SPEC = {
    "timm_class": "timm.models.convnext.ConvNeXt",
    "kwargs": {"in_chans": 1, "num_classes": 10, "depths": [1, 1, 2, 1],
               "dims": [16, 32, 48, 64], "patch_size": 1, "kernel_sizes": 3},
}


PRESET_FILES = {
    "ddpm": ("config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors"),
    "classifier": ("classifier.json", "model.safetensors"),
}


def preset_dir() -> Path:
    """Folder of the shipped digits weights (both models, flat)."""
    return Path(__file__).resolve().parent / "assets"


def have_preset() -> bool:
    """Whether the shipped digits weights are present."""
    return all((preset_dir() / f).is_file() for fs in PRESET_FILES.values() for f in fs)


def digits_arrays(split: str = "test", size: int = DIGITS_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``(x, y)``: x float32 ``(N, 1, size, size)`` in [-1, 1], y int64 ``(N,)``.

    ``split`` is ``"train"`` (1437 images), ``"test"`` (360) or ``"all"`` (1797); the split is a
    fixed seeded permutation, the same everywhere.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).numpy()
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    if split == "all":
        idx = np.arange(len(y))
    elif split == "test":
        idx = np.sort(perm[:N_TEST])
    elif split == "train":
        idx = np.sort(perm[N_TEST:])
    else:
        raise ConfigError(f"digits split must be train, test or all, got {split!r}")
    return x[idx], y[idx]


def export_digits_folder(root: str | os.PathLike, split: str = "test",
                         n_per_class: int | None = None, size: int = DIGITS_SIZE,
                         seed: int = 0) -> Path:
    """Write digits as an ImageNet-style folder ``root/<digit>/<split>_<index>.png`` (grey
    PNGs of ``size``), optionally a seeded subset of ``n_per_class`` per digit. Existing files are
    kept. Returns ``root``."""
    from hiergen.imagenet.data import save_png

    root = Path(root)
    x, y = digits_arrays(split, size)
    rng = np.random.default_rng(seed)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        if n_per_class is not None:
            idx = np.sort(rng.permutation(idx)[:n_per_class])
        for i in idx:
            path = root / str(c) / f"{split}_{i:04d}.png"
            if not path.exists():
                save_png(x[i], path)
    return root


def make_unet(size: int = DIGITS_SIZE, channels: tuple[int, ...] = (32, 32, 64)):
    """The preset's small ``UNet2DModel`` (no attention)."""
    from diffusers import UNet2DModel

    n = len(channels)
    return UNet2DModel(sample_size=size, in_channels=1, out_channels=1,
                       block_out_channels=tuple(channels), layers_per_block=1,
                       down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                       norm_num_groups=8, add_attention=False)


def make_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                         beta_schedule="linear", variance_type="fixed_small", clip_sample=True,
                         prediction_type="epsilon")


def _augment(x, gen):
    """Random integer shifts of up to 1 pixel (zero = background -1 padding)."""
    import torch

    b, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (b,), generator=gen)
    dy = torch.randint(0, 3, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(b, 1, h, w + 2)
    out = torch.gather(pad, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(b, 1, h, w)
    return torch.gather(out, 3, cols)


def train_ddpm(out_dir: str | os.PathLike, steps: int = 3000, batch_size: int = 64,
               lr: float = 2e-3, ema_decay: float = 0.995, seed: int = 0,
               channels: tuple[int, ...] = (32, 32, 64), progress: bool = True) -> dict:
    """Train the preset DDPM on the training digits; save to ``out_dir/{unet,scheduler}``.

    Adam with linear warm-up (100 steps) and cosine decay, epsilon-MSE loss, EMA weights saved.
    Returns ``{"steps", "seconds", "final_loss"}`` (loss averaged over the last 100 steps).
    """
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train = torch.from_numpy(digits_arrays("train")[0])
    unet = make_unet(DIGITS_SIZE, channels)
    sched = make_scheduler()
    ema = copy.deepcopy(unet).eval()
    opt = torch.optim.Adam(unet.parameters(), lr=lr)
    warm = min(100, max(1, steps // 10))

    def lr_at(s: int) -> float:
        return min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(s / steps, 1.0)))

    abar = sched.alphas_cumprod
    losses, t0 = [], time.perf_counter()
    for s in tqdm(range(steps), desc="train ddpm", disable=not progress):
        idx = torch.randint(0, len(x_train), (batch_size,), generator=gen)
        x0 = _augment(x_train[idx], gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = (unet(xt, t).sample - eps).pow(2).mean()
        for g in opt.param_groups:
            g["lr"] = lr * lr_at(s)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + s) / (10 + s))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        losses.append(float(loss.detach()))
    out = Path(out_dir)
    _save_pretrained(ema, out / "unet", safe_serialization=True)
    _save_pretrained(sched, out / "scheduler")
    info = {"steps": steps, "seconds": time.perf_counter() - t0,
            "final_loss": float(np.mean(losses[-100:]))}
    atomic_write(out / "training.json", json.dumps(info, indent=1))
    return info


def _save_pretrained(obj, folder: Path, **kwargs) -> None:
    """diffusers' ``save_pretrained`` into a private scratch folder, then every file moved into
    ``folder`` with :func:`hiergen._files.atomic_write` (a reader never sees a partial file)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hiergen-save-") as scratch:
        obj.save_pretrained(scratch, **kwargs)
        for f in sorted(Path(scratch).rglob("*")):
            if f.is_file():
                atomic_write(folder / f.relative_to(scratch), f.read_bytes())


def _classifier_accuracy(model, x, y, batch_size: int = 512) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


def train_classifier(out_dir: str | os.PathLike, epochs: int = 20, batch_size: int = 64,
                     lr: float = 3e-3, seed: int = 0, progress: bool = True) -> dict:
    """Train the preset ConvNeXt on the training digits (random 1-pixel shifts, AdamW, cosine
    decay) and save ``out_dir/classifier.json`` + ``model.safetensors``. Pixels enter as
    ``(x + 1) / 2`` normalised by mean 0.5 / std 0.5, i.e. the [-1, 1] image itself. Returns
    ``{"epochs", "seconds", "test_accuracy"}`` (accuracy on the 360 test digits)."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from hiergen.imagenet.probe import CLASSIFIER_CONFIG, CLASSIFIER_WEIGHTS, build_timm_model

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr = (torch.from_numpy(a) for a in digits_arrays("train"))
    xte, yte = (torch.from_numpy(a) for a in digits_arrays("test"))
    model = build_timm_model(CLASSIFIER_SPEC)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    n_batches = -(-len(xtr) // batch_size)
    total = epochs * n_batches
    t0, step = time.perf_counter(), 0
    for _ in tqdm(range(epochs), desc="train classifier", disable=not progress):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), batch_size):
            idx = perm[i:i + batch_size]
            xb = _augment(xtr[idx], gen)
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / total))
            loss = torch.nn.functional.cross_entropy(model(xb), ytr[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    acc = _classifier_accuracy(model, xte, yte)
    out = Path(out_dir)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / CLASSIFIER_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    cfg = {"model": CLASSIFIER_SPEC, "input_size": DIGITS_SIZE, "in_chans": 1, "mean": [0.5],
           "std": [0.5], "num_classes": 10, "classes": [str(c) for c in range(10)],
           "test_accuracy": acc, "epochs": epochs}
    atomic_write(out / CLASSIFIER_CONFIG, json.dumps(cfg, indent=1))
    return {"epochs": epochs, "seconds": time.perf_counter() - t0, "test_accuracy": acc}


def train_preset(out_dir: str | os.PathLike, ddpm_steps: int = 3000,
                 classifier_epochs: int = 20, seed: int = 0, progress: bool = True) -> dict:
    """Train both preset models into ``out_dir/ddpm`` and ``out_dir/classifier``."""
    out = Path(out_dir)
    clf = train_classifier(out / "classifier", epochs=classifier_epochs, seed=seed,
                           progress=progress)
    ddpm = train_ddpm(out / "ddpm", steps=ddpm_steps, seed=seed, progress=progress)
    return {"classifier": clf, "ddpm": ddpm}


def resolve_preset(name_or_path: str | os.PathLike, part: str) -> str:
    """``"digits"`` -> the shipped weights folder for ``part`` (``"ddpm"`` or ``"classifier"``;
    ``ConfigError`` when the weights are not there: train them with
    ``hiergen imagenet train-digits --out DIR`` and pass ``DIR/ddpm`` / ``DIR/classifier``);
    anything else is returned unchanged."""
    if str(name_or_path) != "digits":
        return str(name_or_path)
    if part not in PRESET_FILES:
        raise ConfigError(f"unknown preset part {part!r}; expected ddpm or classifier")
    path = preset_dir()
    for f in PRESET_FILES[part]:
        if not (path / f).is_file():
            raise ConfigError(f"{path / f}: digits preset weights not found; run "
                              f"`hiergen imagenet train-digits --out DIR` and pass DIR/{part}")
    return str(path)
