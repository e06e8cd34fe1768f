"""Forward hooks on a classifier: :func:`hook_points` finds the stem, every block, every
downsampling layer and the head (41 modules for ConvNeXt-Base, as the authors hook);
:class:`ActivationRecorder` returns the logits and every hooked activation.

Activations are channel-first for 4-d outputs ``(B, C, H, W)`` and channel-last otherwise
(``(B, C)`` logits, ``(B, N, C)`` tokens), see :func:`channel_axis`.
"""

from __future__ import annotations

from collections.abc import Sequence

from hiergen.models.errors import ConfigError


def hook_points(model, names: Sequence[str] | None = None) -> list[tuple[str, object]]:
    """Ordered ``[(name, module)]`` to hook: stem, then per stage its downsampling layer (when not
    an identity) and every block, then the head.

    Understands timm models built of ``stem`` / ``stages[i].downsample`` / ``stages[i].blocks`` /
    ``head`` (ConvNeXt, and most timm CNNs), ``patch_embed`` / ``blocks`` / ``head`` (ViT-like),
    and ``conv1`` / ``layer1..4`` / ``fc`` (ResNet). Pass ``names`` (dotted module names) to hook
    something else.
    """
    import torch.nn as nn

    modules = dict(model.named_modules())
    if names is not None:
        missing = [n for n in names if n not in modules]
        if missing:
            raise ConfigError(f"modules not found in the classifier: {missing}")
        return [(n, modules[n]) for n in names]

    def real(m) -> bool:
        return m is not None and not isinstance(m, nn.Identity)

    points: list[str] = []
    stem = next((n for n in ("stem", "patch_embed", "conv_stem", "conv1") if n in modules), None)
    if stem is None:
        raise ConfigError(f"cannot find the stem of {type(model).__name__}; pass hook names")
    points.append(stem)
    if "stages" in modules:
        for si, stage in enumerate(model.stages):
            if real(getattr(stage, "downsample", None)):
                points.append(f"stages.{si}.downsample")
            blocks = getattr(stage, "blocks", None)
            if blocks is None:
                raise ConfigError(f"stage {si} of {type(model).__name__} has no blocks")
            points += [f"stages.{si}.blocks.{bi}" for bi in range(len(blocks))]
    elif "blocks" in modules:
        points += [f"blocks.{bi}" for bi in range(len(model.blocks))]
    elif "layer1" in modules:
        for li in range(1, 5):
            layer = getattr(model, f"layer{li}", None)
            if layer is not None:
                points += [f"layer{li}.{bi}" for bi in range(len(layer))]
    else:
        raise ConfigError(f"cannot find the blocks of {type(model).__name__}; pass hook names")
    head = next((n for n in ("head", "fc", "classifier") if n in modules and real(modules[n])),
                None)
    if head is None:
        raise ConfigError(f"cannot find the head of {type(model).__name__}; pass hook names")
    points.append(head)
    return [(n, modules[n]) for n in points]


class ActivationRecorder:
    """Forward hooks on the given modules; ``forward(x)`` returns (logits, {name: activation})."""

    def __init__(self, model, points: Sequence[tuple[str, object]]):
        self.model = model
        self.names = [n for n, _ in points]
        self._acts: dict[str, object] = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in points]

    def _hook(self, name: str):
        def fn(_module, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            self._acts[name] = out.detach().float()
        return fn

    def forward(self, x):
        import torch

        self._acts = {}
        with torch.no_grad():
            logits = self.model(x)
        acts, self._acts = self._acts, {}
        return logits.float(), acts

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def channel_axis(ndim: int) -> int:
    """Axis of channels of a hooked activation: 1 for (B, C, H, W), last otherwise."""
    return 1 if ndim == 4 else ndim - 1
