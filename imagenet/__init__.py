"""hiergen.imagenet: DDPM forward-backward on real images and classifier probing (Fig. 2).

Submodules (torch, diffusers and timm are imported only when used):

* :mod:`~hiergen.imagenet.data` - image folders, ILSVRC val layout, subsets, PNG provenance;
* :mod:`~hiergen.imagenet.schedule` - respacing a DDPM schedule to N steps;
* :mod:`~hiergen.imagenet.forward_backward` - loading diffusers DDPMs, the respaced reverse chain,
  resumable / sharded forward-backward runs;
* :mod:`~hiergen.imagenet.probe` - timm classifiers, hooks, whitening, similarities, ``probe.nc``;
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
    "Classifier": "probe",
    "load_classifier": "probe",
    "hook_points": "probe",
    "Whitening": "probe",
    "similarity": "probe",
    "run_probe": "probe",
    "merge_probe": "probe",
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
