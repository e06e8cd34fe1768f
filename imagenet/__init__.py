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
* :mod:`~hiergen.imagenet.plots` - the Fig. 2 panels;
* :mod:`~hiergen.imagenet.digits` - the CPU-scale ``digits`` preset (training and shipped weights).

The main names are re-exported lazily: ``from hiergen.imagenet import RespacedDDPM`` imports
torch only then.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ImageRecord": "data",
    "scan_images": "data",
    "load_images": "data",
    "save_png": "data",
    "read_provenance": "data",
    "RespacedSchedule": "schedule",
    "respace": "schedule",
    "k_grid": "schedule",
    "load_ddpm": "forward_backward",
    "RespacedDDPM": "forward_backward",
    "run_forward_backward": "forward_backward",
    "read_classes_file": "data",
    "Classifier": "classifier",
    "load_classifier": "classifier",
    "hook_points": "hooks",
    "ActivationRecorder": "hooks",
    "Whitening": "whitening",
    "similarity": "whitening",
    "run_probe": "probe",
    "merge_probe": "probe_merge",
    "state_dict_fingerprint": "settings",
    "plot_fig2": "plots",
    "train_preset": "digits",
    "export_digits_folder": "digits",
    "digits_arrays": "digits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"hiergen.imagenet.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'hiergen.imagenet' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
