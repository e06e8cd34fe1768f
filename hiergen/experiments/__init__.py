"""Experiments: forward-backward sweeps on grammars (the paper's Fig. 5 and 7b).

Public names are imported lazily (``import hiergen.experiments`` stays light)::

    from hiergen.experiments import forward_backward, sweep_forward_backward, transitions
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "forward_backward": "hiergen.experiments.sweeps",
    "sweep_forward_backward": "hiergen.experiments.sweeps",
    "forward_backward_point": "hiergen.experiments.sweeps",
    "default_times": "hiergen.experiments.sweeps",
    "draw_data": "hiergen.experiments.sweeps",
    "transition": "hiergen.experiments.analysis",
    "transitions": "hiergen.experiments.analysis",
    "Transition": "hiergen.experiments.analysis",
    "inversion_time": "hiergen.experiments.analysis",
    "trees_generable": "hiergen.experiments.analysis",
    "summarize": "hiergen.experiments.analysis",
    "PointStore": "hiergen.experiments.store",
    "save_figures": "hiergen.experiments.plots",
    "TreeCNN": "hiergen.experiments.cnn_probe",
    "train_cnn": "hiergen.experiments.cnn_probe",
    "cnn_probe": "hiergen.experiments.cnn_probe",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hiergen.experiments' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
