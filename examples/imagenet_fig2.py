"""The paper's Fig. 2 protocol: DDPM forward-backward on images, probed by a classifier.

    python examples/imagenet_fig2.py                          # digits preset, CPU, ~1-2 minutes
    python examples/imagenet_fig2.py --n-per-class 2 --steps 20 --n-k 5      # smaller
    python examples/imagenet_fig2.py --ddpm openai-ddpm-folder --classifier convnext_base \\
        --images /data/imagenet/val --labels val_labels.txt --n-per-class 1 --steps 250 \\
        --n-k 26 --device cuda --dtype float16 --batch-size 64

For each start image and reversal step k of a DDPM respaced to N steps, noise to t_k and run the
reverse chain to 0; hook the classifier on the stem, every block, every downsampling layer and the
head; compare whitened activations of start and generated images (cosine similarity per layer)
and the top-1 class. Writes into ``--out``: ``fb/`` (images with provenance), ``probe.nc`` (all
metrics), ``fig2.png`` (image grid, similarity vs k per layer, class change vs k) and
``summary.json`` (accuracies, class change per k, images/s). Re-running resumes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script."""
    from hiergen.cli import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("hiergen-out/imagenet_fig2"),
                        help="run folder (rerunning resumes)")
    parser.add_argument("--ddpm", default="digits",
                        help="diffusers DDPM folder or hub id, or digits (the shipped preset)")
    parser.add_argument("--classifier", default="digits",
                        help="timm model name, hiergen classifier folder, or digits")
    parser.add_argument("--checkpoint", default=None, help="local weights for a timm classifier")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="do not fetch pretrained timm weights")
    parser.add_argument("--images", default="digits",
                        help="image folder (class subfolders or flat + --labels), or digits "
                             "(the test split)")
    parser.add_argument("--labels", default=None, help="labels file of a flat (ILSVRC val) folder")
    parser.add_argument("--n-per-class", type=int, default=10, help="start images per class")
    parser.add_argument("--steps", type=int, default=50, help="respaced steps N (paper: 250)")
    parser.add_argument("--n-k", type=int, default=11, help="reversal steps evenly spread in 0..N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and the sampler")
    parser.add_argument("--batch-size", type=int, default=100, help="images per batch")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="autocast dtype of the UNet (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import torch

    from hiergen.imagenet.data import scan_images
    from hiergen.imagenet.digits import export_digits_folder, resolve_preset
    from hiergen.imagenet.forward_backward import RespacedDDPM, load_ddpm, run_forward_backward
    from hiergen.imagenet.plots import plot_fig2
    from hiergen.imagenet.probe import load_classifier, merge_probe, run_probe
    from hiergen.imagenet.schedule import k_grid

    torch.set_num_threads(args.threads)
    out: Path = args.out
    images = args.images
    if images == "digits":
        images = export_digits_folder(out / "start_images", split="test",
                                      n_per_class=args.n_per_class, seed=args.seed)
    records = scan_images(images, labels_file=args.labels, n_per_class=args.n_per_class,
                          seed=args.seed)
    unet, scheduler = load_ddpm(resolve_preset(args.ddpm, "ddpm"), device=args.device)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    sampler = RespacedDDPM(unet, scheduler, args.steps, dtype=dtype, compile=args.compile)
    ks = k_grid(args.steps, args.n_k)
    fb = run_forward_backward(sampler, records, ks, out, seed=args.seed,
                              batch_size=args.batch_size, ddpm_name=str(args.ddpm),
                              progress=not args.no_progress)
    clf = load_classifier(resolve_preset(args.classifier, "classifier"),
                          pretrained=not args.no_pretrained, checkpoint=args.checkpoint,
                          device=args.device)
    pr = run_probe(out, clf, batch_size=args.batch_size, device=args.device,
                   progress=not args.no_progress)
    ds = merge_probe(out)
    png = plot_fig2(ds, out, out / "fig2.png")
    change = ds["class_change"].mean("image")
    cos = ds["cosine"].mean("image")
    summary = {
        "n_images": int(ds.sizes["image"]), "n_steps": args.steps, "ks": ks,
        "top1_accuracy_start": ds.attrs["top1_accuracy"],
        "top5_accuracy_start": ds.attrs["top5_accuracy"],
        "class_change": [float(v) for v in change.values],
        "cosine_stem": [float(v) for v in cos.isel(layer=0).values],
        "cosine_head": [float(v) for v in cos.isel(layer=-1).values],
        "layers": [str(x) for x in ds["layer"].values],
        "forward_backward": fb, "probe": pr,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{summary['n_images']} images, N = {args.steps}, start top-1 "
          f"{summary['top1_accuracy_start']:.3f}")
    print("k:            " + " ".join(f"{k:5d}" for k in ks))
    print("class change: " + " ".join(f"{v:5.2f}" for v in summary["class_change"]))
    print("cos(head):    " + " ".join(f"{v:5.2f}" for v in summary["cosine_head"]))
    print(f"forward-backward {fb['images_per_s']:.2f} images/s (k > 0), probe "
          f"{pr['images_per_s']:.1f} images/s; wrote {png} and {out / 'probe.nc'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
