"""OpenAI guided-diffusion checkpoints (Dhariwal & Nichol 2021) as diffusers ``UNet2DModel``s.

:func:`convert_guided_diffusion` maps a guided-diffusion ``UNetModel`` state dict (a ``.pt`` file,
loaded with ``torch.load(weights_only=True)``, or a dict of tensors) onto diffusers' own blocks:

==============================  ==========================================================
guided-diffusion                diffusers ``UNet2DModel``
==============================  ==========================================================
``timestep_embedding`` (cos|sin) ``Timesteps(flip_sin_to_cos=True, freq_shift=0)``
``time_embed``                  ``time_embedding`` (``time_embedding_dim = 4 num_channels``)
``label_emb`` (class_cond)      ``class_embedding`` (``num_class_embeds = 1000``)
``ResBlock``                    ``ResnetBlock2D`` (``time_embedding_norm="scale_shift"`` when
                                ``use_scale_shift_norm``, else ``"default"``)
``ResBlock(down=True/up=True)`` ``ResnetBlock2D(down/up)`` in ``ResnetDownsampleBlock2D`` /
                                ``ResnetUpsampleBlock2D`` / ``Attn*Block2D(..._type="resnet")``
``Downsample`` / ``Upsample``   ``Downsample2D`` / ``Upsample2D`` (``use_conv=True``)
``AttentionBlock``              ``Attention`` (group norm 32, ``attention_head_dim``); the fused
                                ``qkv`` 1x1 conv is split into ``to_q/to_k/to_v``, in the legacy
                                per-head ``[q_h k_h v_h]`` order or, with
                                ``use_new_attention_order``, the ``[q k v]`` order
==============================  ==========================================================

and returns the UNet with a ``DDPMScheduler`` of the same noise schedule (linear or cosine,
``learned_range`` variance for ``learn_sigma``, epsilon or x0 prediction, clipping to [-1, 1]
as guided-diffusion's samplers). Every checkpoint key is used exactly once or the conversion
fails naming the keys left over.

Flags that diffusers' ``UNet2DModel`` cannot express raise :class:`ConfigError`:

* ``channel_mult[0] != 1`` (the 512x512 model's ``0.5``): ``UNet2DModel`` sizes the sinusoidal
  timestep embedding by ``block_out_channels[0]``, guided-diffusion by ``num_channels``;
* attention layers with different head sizes (``num_head_channels = -1`` with a fixed
  ``num_heads`` over attention layers of different widths, as the 128x128 model's
  ``num_heads 4`` on 512/768/1024 channels): ``UNet2DModel`` has one ``attention_head_dim``;
* ``rescale_timesteps`` with ``diffusion_steps != 1000``, a noise schedule other than linear or
  cosine, ``in_channels != 3`` is not a guided-diffusion flag (``create_model`` fixes 3).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hiergen._files import atomic_write
from hiergen.models.errors import ConfigError

NUM_CLASSES = 1000

#: guided-diffusion's ``model_and_diffusion_defaults()`` (script_util.py) plus ``sigma_small``
DEFAULT_FLAGS: dict = {
    "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4,
    "num_heads_upsample": -1, "num_head_channels": -1, "attention_resolutions": "16,8",
    "channel_mult": "", "dropout": 0.0, "class_cond": False, "use_checkpoint": False,
    "use_scale_shift_norm": True, "resblock_updown": False, "use_fp16": False,
    "use_new_attention_order": False, "learn_sigma": False, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "", "use_kl": False,
    "predict_xstart": False, "rescale_timesteps": False, "rescale_learned_sigmas": False,
    "sigma_small": False,
}

_COMMON_256 = {"attention_resolutions": "32,16,8", "diffusion_steps": 1000, "image_size": 256,
               "learn_sigma": True, "noise_schedule": "linear", "num_channels": 256,
               "num_head_channels": 64, "num_res_blocks": 2, "resblock_updown": True,
               "use_fp16": True, "use_scale_shift_norm": True}

#: MODEL_FLAGS of the released checkpoints, from guided-diffusion's README ("Download
#: pre-trained models" / sampling commands); ``timestep_respacing`` "250" is the README's
#: sampling setting (the paper's N).
PRESETS: dict[str, dict] = {
    "64x64_cond": {"attention_resolutions": "32,16,8", "class_cond": True,
                   "diffusion_steps": 1000, "dropout": 0.1, "image_size": 64,
                   "learn_sigma": True, "noise_schedule": "cosine", "num_channels": 192,
                   "num_head_channels": 64, "num_res_blocks": 3, "resblock_updown": True,
                   "use_new_attention_order": True, "use_fp16": True,
                   "use_scale_shift_norm": True, "timestep_respacing": "250"},
    "128x128_cond": {"attention_resolutions": "32,16,8", "class_cond": True,
                     "diffusion_steps": 1000, "image_size": 128, "learn_sigma": True,
                     "noise_schedule": "linear", "num_channels": 256, "num_heads": 4,
                     "num_res_blocks": 2, "resblock_updown": True, "use_fp16": True,
                     "use_scale_shift_norm": True, "timestep_respacing": "250"},
    "256x256_cond": {**_COMMON_256, "class_cond": True, "timestep_respacing": "250"},
    "256x256_uncond": {**_COMMON_256, "class_cond": False, "timestep_respacing": "250"},
    "512x512_cond": {**_COMMON_256, "class_cond": True, "image_size": 512, "use_fp16": False,
                     "timestep_respacing": "250"},
    "lsun_256": {**_COMMON_256, "class_cond": False, "dropout": 0.1,
                 "timestep_respacing": "1000"},
}

_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                 64: (1, 2, 3, 4)}


def resolve_flags(config: str | dict | None, overrides: dict | None = None) -> dict:
    """Full guided-diffusion flags: :data:`DEFAULT_FLAGS` updated by a preset name (a key of
    :data:`PRESETS`) or a flags dict, then by ``overrides``. Unknown names are a ConfigError."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ConfigError(f"unknown guided-diffusion preset {config!r}; known: "
                              f"{', '.join(sorted(PRESETS))}")
        config = PRESETS[config]
    flags = dict(DEFAULT_FLAGS)
    for part in (config or {}), (overrides or {}):
        unknown = sorted(set(part) - set(DEFAULT_FLAGS))
        if unknown:
            raise ConfigError(f"unknown guided-diffusion flag(s) {', '.join(unknown)}")
        flags.update(part)
    return flags


def _channel_mult(flags: dict) -> tuple:
    cm = flags["channel_mult"]
    if cm in ("", None):
        size = int(flags["image_size"])
        if size not in _CHANNEL_MULT:
            raise ConfigError(f"image_size {size} has no default channel_mult in "
                              "guided-diffusion; give channel_mult")
        return _CHANNEL_MULT[size]
    try:
        return tuple(int(m) for m in (cm.split(",") if isinstance(cm, str) else cm))
    except ValueError as exc:
        raise ConfigError(f"channel_mult must be a comma list of integers, got {cm!r}") from exc


def _attention_levels(flags: dict, n_levels: int) -> list[bool]:
    """Which levels hold attention: guided-diffusion's ``ds = image_size // resolution``."""
    try:
        res = [int(r) for r in str(flags["attention_resolutions"]).split(",") if r.strip()]
    except ValueError as exc:
        raise ConfigError("attention_resolutions must be a comma list of integers, got "
                          f"{flags['attention_resolutions']!r}") from exc
    ds = {int(flags["image_size"]) // r for r in res if r > 0}
    return [2 ** level in ds for level in range(n_levels)]


def _head_dim(flags: dict, channels: list[int], attn: list[bool]) -> int:
    """The one attention head size of every attention layer, else a ConfigError naming them."""
    nhc = int(flags["num_head_channels"])
    up_heads = int(flags["num_heads_upsample"])
    up_heads = int(flags["num_heads"]) if up_heads == -1 else up_heads
    layers = [(f"down level {i}", c, int(flags["num_heads"]))
              for i, (c, a) in enumerate(zip(channels, attn)) if a]
    layers += [("middle block", channels[-1], int(flags["num_heads"]))]
    layers += [(f"up level {i}", c, up_heads) for i, (c, a) in enumerate(zip(channels, attn)) if a]
    dims = {}
    for name, c, heads in layers:
        if nhc != -1:
            if c % nhc:
                raise ConfigError(f"{name}: {c} channels are not a multiple of "
                                  f"num_head_channels {nhc}")
            dims[name] = nhc
        else:
            if heads < 1 or c % heads:
                raise ConfigError(f"{name}: {c} channels cannot be split into {heads} heads")
            dims[name] = c // heads
    if len(set(dims.values())) > 1:
        listed = ", ".join(f"{n}: {d}" for n, d in dims.items())
        raise ConfigError("diffusers' UNet2DModel has a single attention_head_dim, but these "
                          f"flags give attention head sizes {listed} (num_head_channels = -1 "
                          "with a fixed num_heads on layers of different widths); not "
                          "convertible")
    return next(iter(dims.values()))


def unet_kwargs(flags: dict) -> dict:
    """``UNet2DModel`` keyword arguments equivalent to guided-diffusion's ``create_model(flags)``;
    a ConfigError names any flag diffusers cannot express."""
    ch = int(flags["num_channels"])
    mult = _channel_mult(flags)
    channels = [int(m * ch) for m in mult]
    if channels[0] != ch:
        raise ConfigError(f"channel_mult[0] = {mult[0]} (first level {channels[0]} channels, "
                          f"num_channels {ch}): diffusers' UNet2DModel sizes the timestep "
                          "embedding by the first level's width, guided-diffusion by "
                          "num_channels; not convertible (the 512x512 model has this)")
    bad = [c for c in channels if c % 32]
    if bad:
        raise ConfigError(f"level widths {bad} are not multiples of 32 (GroupNorm(32) in "
                          "guided-diffusion)")
    attn = _attention_levels(flags, len(channels))
    updown = bool(flags["resblock_updown"])
    plain_down, plain_up = (("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if updown
                            else ("DownBlock2D", "UpBlock2D"))
    down = tuple("AttnDownBlock2D" if a else plain_down for a in attn)
    up = tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attn))
    return {
        "sample_size": int(flags["image_size"]), "in_channels": 3,
        "out_channels": 6 if flags["learn_sigma"] else 3,
        "block_out_channels": tuple(channels), "layers_per_block": int(flags["num_res_blocks"]),
        "down_block_types": down, "up_block_types": up,
        "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv", "downsample_padding": 1,
        "time_embedding_type": "positional", "flip_sin_to_cos": True, "freq_shift": 0,
        "time_embedding_dim": 4 * ch, "attention_head_dim": _head_dim(flags, channels, attn),
        "norm_num_groups": 32, "attn_norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
        "resnet_time_scale_shift": "scale_shift" if flags["use_scale_shift_norm"] else "default",
        "add_attention": True, "dropout": float(flags["dropout"]),
        "num_class_embeds": NUM_CLASSES if flags["class_cond"] else None,
    }


def scheduler_kwargs(flags: dict) -> dict:
    """``DDPMScheduler`` keyword arguments of guided-diffusion's ``create_gaussian_diffusion``:
    the noise schedule, variance type, prediction type; clipping x0 to [-1, 1] as its samplers'
    ``clip_denoised=True``."""
    T = int(flags["diffusion_steps"])
    if flags["rescale_timesteps"] and T != 1000:
        raise ConfigError("rescale_timesteps with diffusion_steps != 1000 feeds the UNet "
                          "t * 1000 / T; not supported")
    schedule = flags["noise_schedule"]
    if schedule == "linear":
        scale = 1000.0 / T
        sched = {"beta_schedule": "linear", "beta_start": 1e-4 * scale, "beta_end": 0.02 * scale}
    elif schedule == "cosine":
        sched = {"beta_schedule": "squaredcos_cap_v2"}
    else:
        raise ConfigError(f"noise_schedule {schedule!r}: only linear and cosine exist in "
                          "guided-diffusion")
    if flags["learn_sigma"]:
        variance = "learned_range"
    else:
        variance = "fixed_small" if flags["sigma_small"] else "fixed_large"
    return {"num_train_timesteps": T, **sched, "variance_type": variance,
            "prediction_type": "sample" if flags["predict_xstart"] else "epsilon",
            "clip_sample": True, "clip_sample_range": 1.0}


# ---- state dict mapping ------------------------------------------------------------------------
_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def module_map(kwargs: dict) -> list[tuple[str, str, str]]:
    """``[(guided prefix, diffusers prefix, kind)]`` for every module of the UNet, kind one of
    ``plain`` (same parameter names), ``resnet``, ``attention``, ``conv`` (Down/Upsample's conv).
    Follows guided-diffusion's ``UNetModel.__init__`` block numbering."""
    n_levels, n_res = len(kwargs["block_out_channels"]), kwargs["layers_per_block"]
    attn = [t.startswith("Attn") for t in kwargs["down_block_types"]]
    updown = kwargs["downsample_type"] == "resnet"
    m = [("time_embed.0", "time_embedding.linear_1", "plain"),
         ("time_embed.2", "time_embedding.linear_2", "plain"),
         ("input_blocks.0.0", "conv_in", "plain"), ("out.0", "conv_norm_out", "plain"),
         ("out.2", "conv_out", "plain"), ("middle_block.0", "mid_block.resnets.0", "resnet"),
         ("middle_block.1", "mid_block.attentions.0", "attention"),
         ("middle_block.2", "mid_block.resnets.1", "resnet")]
    if kwargs["num_class_embeds"]:
        m.append(("label_emb", "class_embedding", "plain"))
    n = 0
    for level in range(n_levels):
        for j in range(n_res):
            n += 1
            m.append((f"input_blocks.{n}.0", f"down_blocks.{level}.resnets.{j}", "resnet"))
            if attn[level]:
                m.append((f"input_blocks.{n}.1", f"down_blocks.{level}.attentions.{j}",
                          "attention"))
        if level != n_levels - 1:
            n += 1
            dst = f"down_blocks.{level}.downsamplers.0"
            m.append((f"input_blocks.{n}.0.op", f"{dst}.conv", "plain") if not updown
                     else (f"input_blocks.{n}.0", dst, "resnet"))
    n = 0
    for u, level in enumerate(reversed(range(n_levels))):
        for i in range(n_res + 1):
            m.append((f"output_blocks.{n}.0", f"up_blocks.{u}.resnets.{i}", "resnet"))
            if attn[level]:
                m.append((f"output_blocks.{n}.1", f"up_blocks.{u}.attentions.{i}", "attention"))
            if level and i == n_res:
                src, dst = f"output_blocks.{n}.{2 if attn[level] else 1}", f"up_blocks.{u}.upsamplers.0"
                m.append((f"{src}.conv", f"{dst}.conv", "plain") if not updown
                         else (src, dst, "resnet"))
            n += 1
    return m


def _split_qkv(weight, bias, head_dim: int, new_order: bool):
    """guided-diffusion's fused ``qkv`` 1x1 conv ``(3C, C, 1)`` -> q, k, v weights ``(C, C)`` and
    biases ``(C,)`` with diffusers' head-major output channels. Legacy order: per head
    ``[q_h, k_h, v_h]``; new order: ``[q (all heads), k, v]``."""
    c3, c = weight.shape[0], weight.shape[1]
    heads = c3 // (3 * head_dim)
    w, b = weight.reshape(c3, c), bias.reshape(c3)
    if new_order:
        w, b = w.reshape(3, c, c), b.reshape(3, c)
        return [(w[i], b[i]) for i in range(3)]
    w, b = w.reshape(heads, 3, head_dim, c), b.reshape(heads, 3, head_dim)
    return [(w[:, i].reshape(c, c), b[:, i].reshape(c)) for i in range(3)]


def _map_module(sd: dict, src: str, dst: str, kind: str, head_dim: int, new_order: bool,
                used: set) -> dict:
    """The diffusers tensors of one guided-diffusion module (its keys are added to ``used``)."""
    keys = [k for k in sd if k.startswith(src + ".")]
    used.update(keys)
    out = {}
    if kind == "attention":
        get = {k[len(src) + 1:]: sd[k] for k in keys}
        for name, target in (("norm", "group_norm"),):
            for p in ("weight", "bias"):
                if f"{name}.{p}" in get:
                    out[f"{dst}.{target}.{p}"] = get[f"{name}.{p}"]
        if "qkv.weight" in get and "qkv.bias" in get:
            qkv = _split_qkv(get["qkv.weight"], get["qkv.bias"], head_dim, new_order)
            for (w, b), name in zip(qkv, ("to_q", "to_k", "to_v")):
                out[f"{dst}.{name}.weight"], out[f"{dst}.{name}.bias"] = w, b
        if "proj_out.weight" in get and "proj_out.bias" in get:
            w = get["proj_out.weight"]
            out[f"{dst}.to_out.0.weight"] = w.reshape(w.shape[0], -1)
            out[f"{dst}.to_out.0.bias"] = get["proj_out.bias"]
        expected = {"norm.weight", "norm.bias", "qkv.weight", "qkv.bias", "proj_out.weight",
                    "proj_out.bias"}
        used.difference_update(src + "." + k for k in set(get) - expected)
        return out
    for k in keys:
        rest = k[len(src) + 1:]
        if kind == "resnet":
            sub, _, p = rest.rpartition(".")
            if sub not in _RESNET:
                used.discard(k)
                continue
            out[f"{dst}.{_RESNET[sub]}.{p}"] = sd[k]
        else:
            out[f"{dst}.{rest}"] = sd[k]
    return out


def load_checkpoint(checkpoint) -> dict:
    """A guided-diffusion state dict from a ``.pt`` path (``torch.load(weights_only=True)``), a
    ``.safetensors`` path or a dict; float32 tensors. ConfigError names a missing, unreadable or
    non-state-dict file."""
    import torch

    if isinstance(checkpoint, (str, os.PathLike)):
        path = Path(checkpoint)
        if not path.is_file():
            raise ConfigError(f"{path}: guided-diffusion checkpoint not found")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(path))
            else:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"{path}: unreadable checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        where = str(path)
    else:
        sd, where = checkpoint, "checkpoint"
    if not isinstance(sd, dict) or not sd:
        raise ConfigError(f"{where}: not a state dict (got {type(sd).__name__})")
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise ConfigError(f"{where}: not a state dict of tensors (e.g. {bad[0]!r})")
    return {str(k): v.detach().float().contiguous() for k, v in sd.items()}


def _left_over(keys, what: str, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)} {what}: {', '.join(keys[:limit])}{more}"


def convert_state_dict(sd: dict, kwargs: dict, new_attention_order: bool) -> dict:
    """Rename / reshape a guided-diffusion state dict into ``UNet2DModel(**kwargs)``'s keys.
    ConfigError names every checkpoint key left unused."""
    used: set = set()
    out: dict = {}
    for src, dst, kind in module_map(kwargs):
        out.update(_map_module(sd, src, dst, kind, kwargs["attention_head_dim"],
                               new_attention_order, used))
    left = set(sd) - used
    if left:
        raise ConfigError("checkpoint keys not used by the converted UNet (do the flags match "
                          f"the checkpoint?): {_left_over(left, 'keys')}")
    return out


def convert_guided_diffusion(checkpoint, config: str | dict = "256x256_uncond",
                             overrides: dict | None = None):
    """Convert a guided-diffusion checkpoint to ``(UNet2DModel, DDPMScheduler)``.

    Parameters
    ----------
    checkpoint : path of a ``.pt`` (or ``.safetensors``) file, or a state dict.
    config : a preset name (:data:`PRESETS`: ``256x256_uncond``, ``256x256_cond``,
        ``64x64_cond``, ``lsun_256``; ``128x128_cond`` and ``512x512_cond`` are refused, see the
        module docstring) or a dict of guided-diffusion flags (``model_and_diffusion_defaults``
        names; missing ones take guided-diffusion's defaults).
    overrides : flags replacing the preset's.

    The UNet maps (B, 3, H, W) images in [-1, 1] and timesteps (B,) to (B, 3 or 6, H, W)
    exactly as guided-diffusion's ``UNetModel`` (class-conditional models take
    ``class_labels``); the scheduler carries the noise schedule and the variance / prediction
    types. :func:`save_converted` writes both with the flags. Unused checkpoint keys, missing
    weights or shape mismatches are a ConfigError naming the keys.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    flags = resolve_flags(config, overrides)
    kwargs = unet_kwargs(flags)
    sched = DDPMScheduler(**scheduler_kwargs(flags))
    sd = convert_state_dict(load_checkpoint(checkpoint), kwargs,
                            bool(flags["use_new_attention_order"]))
    unet = UNet2DModel(**kwargs)
    expected = unet.state_dict()
    missing = set(expected) - set(sd)
    if missing:
        raise ConfigError("the checkpoint lacks weights of the converted UNet (do the flags "
                          f"match the checkpoint?): {_left_over(missing, 'missing')}")
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in sd.items()
             if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise ConfigError("checkpoint shapes differ from the flags' UNet (checkpoint vs "
                          f"converted): {_left_over(wrong, 'tensors')}")
    unet.load_state_dict(sd, strict=True)
    return unet.eval(), sched


def save_converted(unet, scheduler, out_dir: str | os.PathLike, flags: dict | None = None,
                   source: str = "") -> Path:
    """Write ``out_dir/unet`` (``config.json``, ``diffusion_pytorch_model.safetensors``),
    ``out_dir/scheduler/scheduler_config.json`` (diffusers' ``save_pretrained`` layout, loadable
    by :func:`hiergen.imagenet.forward_backward.load_ddpm`) and ``out_dir/guided_diffusion.json``
    (the flags and source); every file atomically. Returns ``out_dir``."""
    import tempfile

    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="hiergen-convert-") as scratch:
        unet.save_pretrained(Path(scratch) / "unet", safe_serialization=True)
        scheduler.save_pretrained(Path(scratch) / "scheduler")
        for f in sorted(Path(scratch).rglob("*")):
            if f.is_file():
                atomic_write(out / f.relative_to(scratch),
                             lambda tmp, f=f: shutil.copyfile(f, tmp))
    info = {"source": str(source), "flags": flags or {},
            "respacing_hint": (flags or {}).get("timestep_respacing", "")}
    atomic_write(out / "guided_diffusion.json", json.dumps(info, indent=1))
    return out
