"""hiergen.imagenet: DDPM forward-backward on real images and classifier probing (Fig. 2).

Submodules (torch, diffusers and timm are imported only when used):

* :mod:`~hiergen.imagenet.data` - image folders, ILSVRC val layout, subsets, PNG provenance;
* :mod:`~hiergen.imagenet.schedule` - respacing a DDPM schedule to N steps;
* :mod:`~hiergen.imagenet.forward_backward` - loading diffusers DDPMs, the respaced reverse chain,
  resumable / sharded forward-backward runs;
* :mod:`~hiergen.imagenet.classifier` - timm classifiers and classifier folders, weight fingerprints;
* :mod:`~hiergen.imagenet.hooks` - the hooked modules (stem, blocks, downsampling, head);
* :mod:`~hiergen.imagenet.whitening` - per-channel whitening statistics and similarity metrics;
* :mod:`~hiergen.imagenet.probe` - the probe driver (resumable, sharded, settings-keyed parts);
* :mod:`~hiergen.imagenet.probe_merge` - the probe's run-folder layout and ``probe.nc``;
* :mod:`~hiergen.imagenet.distributed` - the processes of a run (accelerate launch / torchrun
  group, independent shards, one process): split, gather, main process;
* :mod:`~hiergen.imagenet.settings` - fingerprints and settings records (no mixing of caches);
* :mod:`~hiergen.imagenet.guided` - OpenAI guided-diffusion checkpoints as diffusers UNets;
* :mod:`~hiergen.imagenet.plots` - the Fig. 2 panels;
* :mod:`~hiergen.imagenet.digits` - the CPU-scale ``digits`` preset (training and shipped weights).

The main names are re-exported lazily: ``from hiergen.imagenet import RespacedDDPM`` imports
torch only then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hiergen._lazy import attach

if TYPE_CHECKING:
    from hiergen.imagenet.classifier import Classifier as Classifier
    from hiergen.imagenet.classifier import load_classifier as load_classifier
    from hiergen.imagenet.data import ImageRecord as ImageRecord
    from hiergen.imagenet.data import load_images as load_images
    from hiergen.imagenet.data import read_classes_file as read_classes_file
    from hiergen.imagenet.data import read_provenance as read_provenance
    from hiergen.imagenet.data import save_png as save_png
    from hiergen.imagenet.data import scan_images as scan_images
    from hiergen.imagenet.digits import digits_arrays as digits_arrays
    from hiergen.imagenet.digits import export_digits_folder as export_digits_folder
    from hiergen.imagenet.digits import train_preset as train_preset
    from hiergen.imagenet.forward_backward import RespacedDDPM as RespacedDDPM
    from hiergen.imagenet.forward_backward import load_ddpm as load_ddpm
    from hiergen.imagenet.forward_backward import run_forward_backward as run_forward_backward
    from hiergen.imagenet.guided import convert_guided_diffusion as convert_guided_diffusion
    from hiergen.imagenet.guided import save_converted as save_converted
    from hiergen.imagenet.hooks import ActivationRecorder as ActivationRecorder
    from hiergen.imagenet.hooks import hook_points as hook_points
    from hiergen.imagenet.plots import plot_fig2 as plot_fig2
    from hiergen.imagenet.probe import run_probe as run_probe
    from hiergen.imagenet.probe_merge import merge_probe as merge_probe
    from hiergen.imagenet.schedule import RespacedSchedule as RespacedSchedule
    from hiergen.imagenet.schedule import k_grid as k_grid
    from hiergen.imagenet.schedule import respace as respace
    from hiergen.imagenet.settings import state_dict_fingerprint as state_dict_fingerprint
    from hiergen.imagenet.whitening import Whitening as Whitening
    from hiergen.imagenet.whitening import similarity as similarity

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "data": [
            "ImageRecord", "scan_images", "load_images", "save_png", "read_provenance",
            "read_classes_file",
        ],
        "schedule": ["RespacedSchedule", "respace", "k_grid"],
        "forward_backward": ["load_ddpm", "RespacedDDPM", "run_forward_backward"],
        "classifier": ["Classifier", "load_classifier"],
        "hooks": ["hook_points", "ActivationRecorder"],
        "whitening": ["Whitening", "similarity"],
        "probe": ["run_probe"],
        "probe_merge": ["merge_probe"],
        "settings": ["state_dict_fingerprint"],
        "guided": ["convert_guided_diffusion", "save_converted"],
        "plots": ["plot_fig2"],
        "digits": ["train_preset", "export_digits_folder", "digits_arrays"],
    },
)
