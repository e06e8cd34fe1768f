"""Experiments: forward-backward sweeps on grammars (the paper's Fig. 5 and 7b).

Public names are imported lazily (``import hiergen.experiments`` stays light)::

    from hiergen.experiments import forward_backward, sweep_forward_backward, transitions
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hiergen._lazy import attach

if TYPE_CHECKING:
    from hiergen.experiments.analysis import Transition as Transition
    from hiergen.experiments.analysis import inversion_time as inversion_time
    from hiergen.experiments.analysis import summarize as summarize
    from hiergen.experiments.analysis import transition as transition
    from hiergen.experiments.analysis import transitions as transitions
    from hiergen.experiments.analysis import trees_generable as trees_generable
    from hiergen.experiments.cnn_probe import TreeCNN as TreeCNN
    from hiergen.experiments.cnn_probe import cnn_probe as cnn_probe
    from hiergen.experiments.cnn_probe import train_cnn as train_cnn
    from hiergen.experiments.compare_sweep import sweep_compare as sweep_compare
    from hiergen.experiments.plots import save_figures as save_figures
    from hiergen.experiments.store import PointStore as PointStore
    from hiergen.experiments.sweeps import default_times as default_times
    from hiergen.experiments.sweeps import draw_data as draw_data
    from hiergen.experiments.sweeps import forward_backward as forward_backward
    from hiergen.experiments.sweeps import forward_backward_point as forward_backward_point
    from hiergen.experiments.sweeps import sweep_forward_backward as sweep_forward_backward

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "sweeps": [
            "forward_backward", "sweep_forward_backward", "forward_backward_point",
            "default_times", "draw_data",
        ],
        "analysis": [
            "transition", "transitions", "Transition", "inversion_time", "trees_generable",
            "summarize",
        ],
        "store": ["PointStore"],
        "plots": ["save_figures"],
        "cnn_probe": ["TreeCNN", "train_cnn", "cnn_probe"],
        "compare_sweep": ["sweep_compare"],
    },
)
