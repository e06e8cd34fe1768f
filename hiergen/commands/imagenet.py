"""``hiergen imagenet``: DDPM forward-backward and classifier probing on images (Fig. 2).

    hiergen imagenet train-digits --out weights/
    hiergen imagenet forward-backward --ddpm digits --images digits --out run/ --steps 50 --n-k 11
    hiergen imagenet probe --out run/ --classifier digits
    hiergen imagenet plot --out run/
    hiergen imagenet convert --guided-diffusion 256x256_diffusion_uncond.pt \
        --preset 256x256_uncond --out openai-256-uncond/

All three run steps are resumable (finished (image, k) PNGs and probe parts are kept).
``forward-backward`` and ``probe`` split the images over the processes of
``accelerate launch -m hiergen imagenet ...`` (or torchrun), which gather their statistics and
let the main process write the results, or over independent processes with
``--shard-index/--num-shards`` (see docs/scale_out.md). A run
folder records its settings (weights fingerprints, respacing, seed, dtype, device kind, ...) and
refuses to mix results of other settings. Bad options (``--batch-size 0``, ``--device foo``, an
``--out`` that is a file, ...) end with ``hiergen: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DTYPES = ("float32", "float16", "bfloat16")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps, ... (cuda becomes cuda:$LOCAL_RANK under torchrun)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads; default: torch's choice")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--shard-index", type=int, default=None,
                   help="this independent process's shard, with --num-shards (default: the "
                        "process of accelerate launch / torchrun, else 0)")
    p.add_argument("--num-shards", type=int, default=None,
                   help="number of independent processes sharing --out, no process group "
                        "(default: accelerate launch's / torchrun's processes, else 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars (on stderr)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imagenet", help="DDPM forward-backward and classifier probing on images")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    fb = what.add_parser("forward-backward", help="noise start images to t_k and denoise back")
    fb.add_argument("--ddpm", default="digits",
                    help="diffusers DDPM folder or hub id, or 'digits' (the shipped preset)")
    fb.add_argument("--images", default="digits",
                    help="image folder (class subfolders or flat + --labels), or 'digits'")
    fb.add_argument("--labels", default=None,
                    help="labels file of a flat (ILSVRC val) folder, one label per image")
    fb.add_argument("--classes", default=None,
                    help="class names in label order, one per line (or '<name> <index>' lines); "
                         "default: the sorted names of all class folders, empty ones included")
    fb.add_argument("--n-per-class", type=int, default=None, help="keep at most this many images per class (a deterministic "
                         "subset drawn with --subset-seed); default: all")
    fb.add_argument("--subset-seed", type=int, default=0, help="seed of the --n-per-class subset")
    fb.add_argument("--out", type=Path, required=True,
                    help="run folder (created; rerunning resumes)")
    fb.add_argument("--steps", type=int, default=250, help="respaced diffusion steps N of the sampler (paper: 250)")
    fb.add_argument("--ks", default=None, help="comma list of reversal steps k in 0..N; default: the --n-k grid")
    fb.add_argument("--n-k", type=int, default=11, help="number of reversal steps k evenly spread in 0..N (0 and N included)")
    fb.add_argument("--seed", type=int, default=0, help="seed of the forward noise and of the sampler")
    fb.add_argument("--dtype", default=None, choices=DTYPES,
                    help="autocast dtype of the UNet (CUDA or CPU); default: accelerate "
                         "launch's --mixed_precision (no, fp16, bf16), else float32")
    fb.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA; slow first batch)")
    _add_device(fb)
    fb.set_defaults(func=run_forward_backward)

    pr = what.add_parser("probe", help="hook a timm classifier on start vs generated images")
    pr.add_argument("--out", type=Path, required=True, help="run folder written by `hiergen imagenet forward-backward`")
    pr.add_argument("--classifier", default="digits",
                    help="timm model name, hiergen classifier folder, or 'digits'")
    pr.add_argument("--checkpoint", default=None, help="local weights file for a timm model (instead of downloading)")
    pr.add_argument("--no-pretrained", action="store_true", help="do not fetch pretrained timm weights")
    pr.add_argument("--hooks", default=None, help="comma list of dotted module names to hook; default: stem, every "
                         "stage's downsampling and blocks, and the head")
    pr.add_argument("--name", default="probe",
                    help="name of the probe results: RUN/NAME/ and RUN/NAME.nc; a probe with other "
                         "settings needs another name (default: probe)")
    pr.add_argument("--whitening-eps", type=float, default=1e-6,
                    help="added to the per-channel variance before whitening")
    _add_device(pr)
    pr.set_defaults(func=run_probe)

    pl = what.add_parser("plot", help="Fig. 2 panels from probe.nc")
    pl.add_argument("--out", type=Path, required=True, help="run folder with a merged probe")
    pl.add_argument("--png", type=Path, default=None, help="PNG file to write; default: RUN/fig2.png")
    pl.add_argument("--name", default="probe", help="which probe results: RUN/NAME.nc (default: probe)")
    pl.add_argument("--n-grid-images", type=int, default=4, help="rows (images) of the image grid")
    pl.add_argument("--n-grid-k", type=int, default=6, help="columns (reversal steps k) of the image grid")
    pl.set_defaults(func=run_plot)

    cv = what.add_parser("convert", help="convert a guided-diffusion checkpoint to a diffusers "
                                         "DDPM folder (for forward-backward --ddpm)")
    cv.add_argument("--guided-diffusion", required=True, metavar="CKPT",
                    help="OpenAI guided-diffusion .pt checkpoint")
    cv.add_argument("--preset", default="256x256_uncond",
                    help="the checkpoint's flags: 256x256_uncond (the paper's), 256x256_cond, "
                         "64x64_cond, lsun_256, ...")
    cv.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE",
                    help="override one guided-diffusion flag of the preset (repeatable)")
    cv.add_argument("--out", type=Path, required=True, help="output DDPM folder")
    cv.set_defaults(func=run_convert)

    tr = what.add_parser("train-digits", help="train the digits preset DDPM and classifier")
    tr.add_argument("--out", type=Path, required=True, help="folder for ddpm/ and classifier/")
    tr.add_argument("--ddpm-steps", type=int, default=3000, help="optimizer steps of the DDPM training")
    tr.add_argument("--classifier-epochs", type=int, default=20, help="epochs of the classifier training")
    tr.add_argument("--seed", type=int, default=0, help="seed of the training")
    tr.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads; default: torch's choice")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bars (on stderr)")
    tr.set_defaults(func=run_train_digits)


#: smallest allowed value of each numeric option (``None`` values mean "not given")
MINIMUM = {"batch_size": 1, "threads": 1, "shard_index": 0, "num_shards": 1, "steps": 1,
           "n_k": 2, "n_per_class": 1, "seed": 0, "subset_seed": 0, "ddpm_steps": 1,
           "classifier_epochs": 1, "n_grid_images": 1, "n_grid_k": 1}


def _check_numbers(args: argparse.Namespace) -> None:
    """Every numeric option at or above its :data:`MINIMUM`, else a ConfigError naming it."""
    from hiergen.models.errors import ConfigError

    for name, low in MINIMUM.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    eps = getattr(args, "whitening_eps", None)
    if eps is not None and not eps > 0:
        raise ConfigError(f"--whitening-eps must be > 0, got {eps}")


def _check_out(path: Path, must_exist: bool = False) -> None:
    """``--out`` must be a folder this process can write in (created when missing, unless
    ``must_exist``): an existing file, a path under a file or an unwritable folder is a
    ConfigError naming it."""
    import tempfile

    from hiergen.models.errors import ConfigError

    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: is a file, not a folder")
    if must_exist and not path.is_dir():
        raise ConfigError(f"--out {path}: folder not found (run forward-backward first)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot write there ({exc.strerror or exc})") from exc


def _device(args) -> str:
    """The checked ``--device``; ``cuda`` becomes ``cuda:$LOCAL_RANK`` under torchrun /
    accelerate. An unknown device, or CUDA / MPS that this machine lacks, is a ConfigError."""
    import os

    import torch

    from hiergen.models.errors import ConfigError

    spec = args.device
    if spec == "cuda" and "LOCAL_RANK" in os.environ:
        spec = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {args.device!r}: not a torch device (cpu, cuda, cuda:1, "
                          "mps, ...)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA "
                              "device(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {args.device}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {args.device}: unsupported device type {dev.type!r}")
    return spec


def _processes(args, device: str):
    """The processes of this run (:func:`hiergen.imagenet.distributed.launched_processes`)."""
    import torch

    from hiergen.imagenet.distributed import launched_processes

    return launched_processes(args.shard_index, args.num_shards,
                              cpu=torch.device(device).type == "cpu")


def _threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def run_forward_backward(args: argparse.Namespace) -> int:
    import torch

    from hiergen.imagenet.data import read_classes_file, scan_images
    from hiergen.imagenet.digits import export_digits_folder, resolve_preset
    from hiergen.imagenet.distributed import mixed_precision_dtype
    from hiergen.imagenet.forward_backward import RespacedDDPM, load_ddpm
    from hiergen.imagenet.forward_backward import run_forward_backward as run
    from hiergen.imagenet.schedule import k_grid
    from hiergen.models.errors import ConfigError

    _check_numbers(args)
    device = _device(args)
    _check_out(args.out)
    _threads(args)
    procs = _processes(args, device)
    images = args.images
    if images == "digits":
        with procs.main_first():
            images = export_digits_folder(args.out / "start_images", split="test")
    classes = read_classes_file(args.classes) if args.classes else None
    records = scan_images(images, labels_file=args.labels, n_per_class=args.n_per_class,
                          seed=args.subset_seed, classes=classes)
    unet, scheduler = load_ddpm(resolve_preset(args.ddpm, "ddpm"), device=device)
    dtype_name = mixed_precision_dtype(args.dtype)
    dtype = None if dtype_name == "float32" else getattr(torch, dtype_name)
    sampler = RespacedDDPM(unet, scheduler, args.steps, dtype=dtype, compile=args.compile)
    if args.ks:
        try:
            ks = [int(k) for k in args.ks.split(",") if k]
        except ValueError as exc:
            raise ConfigError(f"--ks must be a comma list of integers, got {args.ks!r}") from exc
    else:
        ks = k_grid(args.steps, args.n_k)
    stats = run(sampler, records, ks, args.out, seed=args.seed, batch_size=args.batch_size,
                ddpm_name=str(args.ddpm), progress=not args.no_progress, processes=procs)
    if procs.is_main or not procs.communicates:
        print(json.dumps({"forward_backward": stats, "n_images": len(records),
                          "ks": sorted(set(ks))}))
    return 0


def run_probe(args: argparse.Namespace) -> int:
    from hiergen.imagenet.digits import resolve_preset
    from hiergen.imagenet.probe import load_classifier, probe_dir
    from hiergen.imagenet.probe import run_probe as run

    _check_numbers(args)
    device = _device(args)
    _check_out(args.out, must_exist=True)
    probe_dir(args.out, args.name)  # a bad name fails before the classifier loads
    _threads(args)
    procs = _processes(args, device)
    clf = load_classifier(resolve_preset(args.classifier, "classifier"),
                          pretrained=not args.no_pretrained, checkpoint=args.checkpoint,
                          device=device)
    hooks = [h for h in args.hooks.split(",") if h] if args.hooks else None
    stats = run(args.out, clf, batch_size=args.batch_size, hook_names=hooks, device=device,
                progress=not args.no_progress, name=args.name, whitening_eps=args.whitening_eps,
                processes=procs)
    merged = args.out / f"{args.name}.nc"
    if procs.is_main or not procs.communicates:
        print(json.dumps({"probe": stats, "merged": str(merged) if merged.is_file() else None}))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from hiergen.imagenet.plots import plot_fig2
    from hiergen.imagenet.probe import merge_probe

    _check_numbers(args)
    _check_out(args.out, must_exist=True)
    ds = merge_probe(args.out, strict=True, name=args.name)
    png = plot_fig2(ds, args.out, args.png or args.out / "fig2.png",
                    n_grid_images=args.n_grid_images, n_grid_k=args.n_grid_k)
    print(png)
    return 0


def run_train_digits(args: argparse.Namespace) -> int:
    from hiergen.imagenet.digits import train_preset

    _check_numbers(args)
    _check_out(args.out)
    _threads(args)
    info = train_preset(args.out, ddpm_steps=args.ddpm_steps,
                        classifier_epochs=args.classifier_epochs, seed=args.seed,
                        progress=not args.no_progress)
    print(json.dumps(info))
    return 0


def _flag_overrides(items: list[str]) -> dict:
    """``--set FLAG=VALUE`` items, each VALUE coerced to the type of guided-diffusion's default."""
    from hiergen.imagenet.guided import DEFAULT_FLAGS
    from hiergen.models.errors import ConfigError

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in DEFAULT_FLAGS:
            raise ConfigError(f"--set {item}: expected FLAG=VALUE with a guided-diffusion flag "
                              f"({', '.join(sorted(DEFAULT_FLAGS))})")
        default = DEFAULT_FLAGS[name]
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[name] = value.lower() in ("true", "1")
            else:
                out[name] = type(default)(value)
        except ValueError as exc:
            raise ConfigError(f"--set {item}: {name} takes a {type(default).__name__}") from exc
    return out


def run_convert(args: argparse.Namespace) -> int:
    from hiergen.imagenet.guided import convert_guided_diffusion, resolve_flags, save_converted

    overrides = _flag_overrides(args.set)
    flags = resolve_flags(args.preset, overrides)
    _check_out(args.out)
    unet, scheduler = convert_guided_diffusion(args.guided_diffusion, flags)
    save_converted(unet, scheduler, args.out, flags=flags, source=args.guided_diffusion)
    n_params = sum(p.numel() for p in unet.parameters())
    print(json.dumps({"out": str(args.out), "parameters": n_params, "flags": flags,
                      "respacing_hint": flags["timestep_respacing"]}))
    return 0
