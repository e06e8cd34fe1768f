"""``hiergen imagenet``: DDPM forward-backward and classifier probing on images (Fig. 2).

    hiergen imagenet train-digits --out weights/
    hiergen imagenet forward-backward --ddpm digits --images digits --out run/ --steps 50 --n-k 11
    hiergen imagenet probe --out run/ --classifier digits
    hiergen imagenet plot --out run/

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
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-index", type=int, default=None,
                   help="this independent process's shard, with --num-shards (default: the "
                        "process of accelerate launch / torchrun, else 0)")
    p.add_argument("--num-shards", type=int, default=None,
                   help="number of independent processes sharing --out, no process group "
                        "(default: accelerate launch's / torchrun's processes, else 1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imagenet", help="DDPM forward-backward and classifier probing on images")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    fb = what.add_parser("forward-backward", help="noise start images to t_k and denoise back")
    fb.add_argument("--ddpm", default="digits",
                    help="diffusers DDPM folder or hub id, or 'digits' (the shipped preset)")
    fb.add_argument("--images", default="digits",
                    help="image folder (class subfolders or flat + --labels), or 'digits'")
    fb.add_argument("--labels", default=None, help="labels file of a flat (ILSVRC val) folder")
    fb.add_argument("--classes", default=None,
                    help="class names in label order, one per line (or '<name> <index>' lines); "
                         "default: the sorted names of all class folders, empty ones included")
    fb.add_argument("--n-per-class", type=int, default=None, help="deterministic subset size")
    fb.add_argument("--subset-seed", type=int, default=0)
    fb.add_argument("--out", type=Path, required=True, help="run folder")
    fb.add_argument("--steps", type=int, default=250, help="respaced steps N")
    fb.add_argument("--ks", default=None, help="comma list of reversal steps (default: --n-k grid)")
    fb.add_argument("--n-k", type=int, default=11, help="number of evenly spread k in 0..N")
    fb.add_argument("--seed", type=int, default=0)
    fb.add_argument("--dtype", default=None, choices=DTYPES,
                    help="autocast dtype (CUDA; default: accelerate launch's --mixed_precision, "
                         "else float32)")
    fb.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA)")
    _add_device(fb)
    fb.set_defaults(func=run_forward_backward)

    pr = what.add_parser("probe", help="hook a timm classifier on start vs generated images")
    pr.add_argument("--out", type=Path, required=True, help="run folder of forward-backward")
    pr.add_argument("--classifier", default="digits",
                    help="timm model name, hiergen classifier folder, or 'digits'")
    pr.add_argument("--checkpoint", default=None, help="local weights for a timm model")
    pr.add_argument("--no-pretrained", action="store_true", help="do not fetch timm weights")
    pr.add_argument("--hooks", default=None, help="comma list of module names to hook")
    pr.add_argument("--name", default="probe",
                    help="probe results name: RUN/NAME/ and RUN/NAME.nc (default probe); "
                         "a probe with other settings needs another name")
    pr.add_argument("--whitening-eps", type=float, default=1e-6,
                    help="added to the per-channel variance before whitening")
    _add_device(pr)
    pr.set_defaults(func=run_probe)

    pl = what.add_parser("plot", help="Fig. 2 panels from probe.nc")
    pl.add_argument("--out", type=Path, required=True, help="run folder")
    pl.add_argument("--png", type=Path, default=None, help="figure path (default RUN/fig2.png)")
    pl.add_argument("--name", default="probe", help="which probe results (default probe)")
    pl.add_argument("--n-grid-images", type=int, default=4, help="rows of the image grid")
    pl.add_argument("--n-grid-k", type=int, default=6, help="columns of the image grid")
    pl.set_defaults(func=run_plot)

    tr = what.add_parser("train-digits", help="train the digits preset DDPM and classifier")
    tr.add_argument("--out", type=Path, required=True, help="folder for ddpm/ and classifier/")
    tr.add_argument("--ddpm-steps", type=int, default=3000)
    tr.add_argument("--classifier-epochs", type=int, default=20)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=None)
    tr.add_argument("--no-progress", action="store_true")
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
