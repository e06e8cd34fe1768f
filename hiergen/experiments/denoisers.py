"""Learned diffusion denoisers on grammar data, to compare with the exact BP denoiser.

A denoiser sees a noisy datum and the noise level and outputs, for every leaf, a
distribution over the ``v`` leaf symbols (a softmax). Trained with the cross-entropy to the
clean leaves ``x0``, its optimum is the posterior leaf marginal ``p(x0_i | x_t)`` — exactly
what belief propagation computes (:mod:`hiergen.experiments.denoiser_compare` measures how
close it gets).

Diffusions (the same processes as :mod:`hiergen.models.noise`):

- ``"gaussian"``: DDPM diffusion of one-hot leaves, ``x_t = sqrt(abar_t) onehot(x0) +
  sqrt(1 - abar_t) xi`` with the linear schedule of :class:`~hiergen.models.noise.DDPMSchedule`
  (T = 1000); training times ``t`` uniform in ``1..T``. Input features per leaf: ``x_t``
  itself and the leaf-local posterior ``softmax(sqrt(abar_t) x_t / (1 - abar_t))`` (the exact
  leaf likelihood of the noise model under a uniform prior: a fixed preconditioning of the
  input, like EDM's input scaling; it carries no knowledge of the grammar), ``2 v``
  channels; time embedding of ``t / T``.
- ``"masking"``: absorbing-state discrete diffusion: each leaf is replaced by a mask symbol
  with probability ``p`` (the "time", uniform in ``[0, 1]`` in training). Input: one-hot over
  ``v + 1`` symbols (the last is the mask). Unmasked leaves are copied to the output (their
  posterior is a point mass), so the loss is the cross-entropy on the masked leaves.

Architectures (:func:`make_denoiser`):

- ``"cnn"``: a U-Net matched to the tree: a 1x1 input convolution, ``L`` convolutions of
  filter size = stride = ``s`` down to the root (each layer sees one level of the tree), then
  ``L`` transposed convolutions (filter = stride = ``s``) back up to the leaves, each
  concatenated with the skip connection of the same level; the time embedding is added at
  every level; SiLU activations.
- ``"transformer"``: ``torch.nn.TransformerEncoder`` (pre-norm, no dropout, 4 heads) over the
  ``d`` leaves with learned position embeddings and the time embedding added to every token.

Training (:func:`train_denoiser`): a fixed training set of ``P`` clean data drawn from the
grammar (the main knob), fresh noise and times every step, minibatches of ``batch_size``
indices drawn with replacement, Adam with constant learning rate and gradient clipping at 1.
All randomness after initialisation (batch indices, times, noise) comes from one seeded
``torch.Generator``; initialisation from ``torch.manual_seed(seed)``.

Checkpoints and resuming: with ``out``, the model weights, the Adam state and the
generator's state are written every ``checkpoint_every`` steps (and at the end) to one file
``out/denoiser.safetensors`` (atomic; its metadata carries the configuration, the step and the
loss history; ``out/config.json`` is a readable copy). Rerunning the same call resumes from
the last checkpoint; the result is bit-identical to an uninterrupted run on the same machine
with the same number of torch threads (granularity: ``checkpoint_every`` steps; a killed run
loses at most the steps since its last checkpoint, which the rerun recomputes identically).
Asking for more ``steps`` than a finished checkpoint has continues its training; other
settings are refused with a :class:`ConfigError`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from hiergen.models.errors import ConfigError
from hiergen.models.grammar import Grammar

ARCHS = ("cnn", "transformer")
DIFFUSIONS = ("gaussian", "masking")
WEIGHTS = "denoiser.safetensors"
CONFIG = "config.json"

#: CPU sizes (a few minutes on 2 cores for three values of P): RHM v = n_classes = 8, m = 2,
#: s = 2, L = 3 (d = 8 leaves, 1024 distinct data)
CPU_DEFAULT: dict[str, Any] = {
    "rhm": {"v": 8, "n_classes": 8, "m": 2, "s": 2, "L": 3},
    "width": 64, "layers": 2, "steps": 1500, "batch_size": 128, "lr": 2e-3,
}
#: GPU sizes: RHM v = n_classes = 16, m = 4, s = 2, L = 4 (d = 16, ~1.7e10 data)
GPU_PRESET: dict[str, Any] = {
    "rhm": {"v": 16, "n_classes": 16, "m": 4, "s": 2, "L": 4},
    "width": 256, "layers": 4, "steps": 20000, "batch_size": 512, "lr": 1e-3,
}


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the denoisers need torch: pip install 'hiergen[torch]'") from exc
    return torch


def _pos_int(value: Any, name: str, minimum: int = 1) -> int:
    from hiergen.models._validate import check_int

    return check_int(value, name, minimum, error=ConfigError)


def _pos_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------- models
def _time_features(u: Any, n: int = 16) -> Any:
    """Sinusoidal features of times ``u`` ``(B,)`` in ``[0, 1]``: ``(B, 2 n)``."""
    torch = _torch()
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), n, device=u.device))
    ang = u[:, None] * freqs[None, :] * math.pi
    return torch.cat([torch.sin(ang), torch.cos(ang)], 1)


def _build(config: dict[str, Any]) -> Any:
    """The denoiser module of ``config`` (tree U-Net or transformer).

    Longer than 80 lines on purpose: the ``nn.Module`` classes are defined inside, so that
    torch is imported only when a denoiser is built (``import hiergen`` stays light)."""
    torch = _torch()
    from hiergen.models.noise import DDPMSchedule

    nn = torch.nn
    v, d, s, L = config["v"], config["d"], config["s"], config["L"]
    width, layers, arch = config["width"], config["layers"], config["arch"]
    c_in = 2 * v if config["diffusion"] == "gaussian" else v + 1

    class TimeMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(32, width), nn.SiLU(), nn.Linear(width, width))

        def forward(self, u: Any) -> Any:
            return self.net(_time_features(u))

    class TreeUNet(nn.Module):
        """Tree-matched U-Net: ``(B, c_in, d)`` features + ``(B, width)`` time embedding ->
        ``(B, v, d)`` logits."""

        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Conv1d(c_in, width, 1)
            self.down = nn.ModuleList(nn.Conv1d(width, width, s, stride=s) for _ in range(L))
            self.up = nn.ModuleList(nn.ConvTranspose1d(width, width, s, stride=s) for _ in range(L))
            self.merge = nn.ModuleList(nn.Conv1d(2 * width, width, 1) for _ in range(L))
            self.temb = nn.ModuleList(nn.Linear(width, width) for _ in range(2 * L + 1))
            self.mid = nn.Conv1d(width, width, 1)
            self.out = nn.Conv1d(width, v, 1)

        def forward(self, x: Any, emb: Any) -> Any:
            act = nn.functional.silu
            h = act(self.inp(x))
            skips = [h]
            for k, conv in enumerate(self.down):
                h = act(conv(h) + self.temb[k](emb)[:, :, None])
                skips.append(h)
            h = act(self.mid(h) + self.temb[L](emb)[:, :, None])
            for k in range(L):
                h = act(self.up[k](h) + self.temb[L + 1 + k](emb)[:, :, None])
                h = act(self.merge[k](torch.cat([h, skips[L - 1 - k]], 1)))
            return self.out(h)

    class Transformer(nn.Module):
        """Transformer encoder over the leaves: ``(B, c_in, d)`` -> ``(B, v, d)`` logits."""

        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(c_in, width)
            self.pos = nn.Parameter(torch.randn(d, width) * 0.02)
            layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True,
                                               norm_first=True, activation="gelu")
            self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(width)
            self.out = nn.Linear(width, v)

        def forward(self, x: Any, emb: Any) -> Any:
            h = self.inp(x.transpose(1, 2)) + self.pos[None] + emb[:, None, :]
            return self.out(self.norm(self.enc(h))).transpose(1, 2)

    class Denoiser(nn.Module):
        """``forward(obs, t)`` -> leaf log-probabilities ``(B, d, v)`` (see the module doc)."""

        def __init__(self) -> None:
            super().__init__()
            self.config = dict(config)
            self.time = TimeMLP()
            self.body = TreeUNet() if arch == "cnn" else Transformer()
            abar = DDPMSchedule().alphas_cumprod
            self.register_buffer("abar", torch.as_tensor(abar, dtype=torch.float32), persistent=False)

        def features(self, obs: Any, t: Any) -> tuple[Any, Any]:
            """Network input ``(B, c_in, d)`` and normalised time ``(B,)``."""
            if config["diffusion"] == "masking":
                x = nn.functional.one_hot(obs.long(), v + 1).float()
                return x.transpose(1, 2), t.float()
            ab = _interp_abar(self.abar, t)[:, None, None]
            llk = obs * (ab.sqrt() / (1.0 - ab).clamp_min(1e-6))
            x = torch.cat([obs, torch.softmax(llk, -1)], -1)
            return x.transpose(1, 2), t.float() / (self.abar.numel() - 1)

        def forward(self, obs: Any, t: Any) -> Any:
            x, u = self.features(obs, t)
            logits = self.body(x, self.time(u)).transpose(1, 2)  # (B, d, v)
            if config["diffusion"] == "masking":  # unmasked leaves: copy the observation
                seen = obs < v
                keep = nn.functional.one_hot(obs.clamp_max(v - 1).long(), v).bool()
                logits = torch.where(seen[..., None], torch.where(keep, 0.0, -math.inf), logits)
            return torch.log_softmax(logits, -1)

    return Denoiser()


def _interp_abar(abar: Any, t: Any) -> Any:
    """``abar_t`` for float times ``t`` ``(B,)`` (log-linear interpolation, as DDPMSchedule)."""
    torch = _torch()
    t = t.float().clamp(0, abar.numel() - 1)
    lo = t.floor().long().clamp_max(abar.numel() - 2)
    w = t - lo.float()
    la = torch.log(abar)
    return torch.exp(la[lo] * (1 - w) + la[lo + 1] * w)


def make_denoiser(grammar: Grammar, arch: str = "cnn", diffusion: str = "gaussian",
                  width: int = CPU_DEFAULT["width"], layers: int = CPU_DEFAULT["layers"]) -> Any:
    """A denoiser (``torch.nn.Module``) for ``grammar``'s leaves.

    ``model(obs, t)`` returns leaf log-probabilities ``(B, d, v)``; ``obs`` is ``x_t``
    ``(B, d, v)`` float for ``"gaussian"`` (``t``: DDPM times ``(B,)``), or tokens ``(B, d)``
    with ``v`` for a masked leaf for ``"masking"`` (``t``: masking probabilities ``(B,)``).
    ``layers``: transformer layers (the CNN has ``L`` down and ``L`` up layers).
    """
    _check_grammar(grammar)
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if diffusion not in DIFFUSIONS:
        raise ConfigError(f"unknown diffusion {diffusion!r}; choose one of {', '.join(DIFFUSIONS)}")
    width = _pos_int(width, "width")
    if arch == "transformer" and width % 4:
        raise ConfigError(f"the transformer's width must be a multiple of 4 heads, got {width}")
    config = {"arch": arch, "diffusion": diffusion, "width": width, "layers": _pos_int(layers, "layers"),
              "v": grammar.vocab_sizes[-1], "d": grammar.d, "s": grammar.branching[0], "L": grammar.L}
    return _build(config)


def _check_grammar(grammar: Grammar) -> None:
    if not isinstance(grammar, Grammar):
        raise ConfigError(f"need a Grammar, got {type(grammar).__name__}")
    if len(set(grammar.branching)) != 1:
        raise ConfigError("the denoisers need one branching factor at every level")


# ----------------------------------------------------------------------------- noise
def noisy_batch(x0: Any, diffusion: str, v: int, gen: Any, abar: Any) -> tuple[Any, Any]:
    """Noise clean leaves ``x0`` ``(B, d)`` (long tensor) at random times drawn from ``gen``.

    Returns ``(obs, t)``: Gaussian: ``x_t`` ``(B, d, v)`` and integer times in ``1..T``
    ``(B,)``; masking: tokens ``(B, d)`` (``v`` = masked) and probabilities ``(B,)``.
    """
    torch = _torch()
    B = x0.shape[0]
    if diffusion == "gaussian":
        T = abar.numel() - 1
        t = torch.randint(1, T + 1, (B,), generator=gen)
        ab = abar[t][:, None, None]
        xi = torch.randn((*x0.shape, v), generator=gen)
        obs = ab.sqrt() * torch.nn.functional.one_hot(x0, v).float() + (1 - ab).sqrt() * xi
        return obs, t.float()
    p = torch.rand((B,), generator=gen)
    mask = torch.rand(x0.shape, generator=gen) < p[:, None]
    return torch.where(mask, torch.full_like(x0, v), x0), p


def _loss(model: Any, x0: Any, obs: Any, t: Any) -> Any:
    """Mean cross-entropy of the leaf distributions to ``x0`` (masking: masked leaves only)."""
    logp = model(obs, t)  # (B, d, v)
    nll = -logp.gather(-1, x0[..., None])[..., 0]
    if model.config["diffusion"] == "masking":
        masked = obs == model.config["v"]
        return (nll * masked).sum() / masked.sum().clamp_min(1)
    return nll.mean()


# ----------------------------------------------------------------------------- checkpoints
def _settings(grammar: Grammar, model_cfg: dict[str, Any], P: int, batch_size: int, lr: float,
              seed: int, checkpoint_every: int) -> dict[str, Any]:
    from hiergen.experiments.sweeps import _fingerprint

    return {"model": model_cfg, "P": P, "batch_size": batch_size, "lr": lr, "seed": seed,
            "checkpoint_every": checkpoint_every, "grammar_fingerprint": _fingerprint(grammar),
            "grammar": getattr(grammar, "params", None) or repr(grammar)}


def save_state(folder: str | Path, model: Any, opt: Any | None, gen: Any | None,
               meta: dict[str, Any]) -> Path:
    """Write weights (+ Adam state and generator state when given) and ``meta`` (JSON, in the
    safetensors metadata and as ``config.json``) atomically. Returns the weights file."""
    from safetensors.torch import save_file

    from hiergen._files import atomic_write, ensure_dir

    folder = ensure_dir(folder)
    tensors = {f"model.{k}": t.detach().cpu().contiguous() for k, t in model.state_dict().items()}
    groups = None
    if opt is not None:
        sd = opt.state_dict()
        for i, st in sd["state"].items():
            for k, t in st.items():
                tensors[f"optim.{i}.{k}"] = t.detach().cpu().contiguous()
        groups = sd["param_groups"]
    if gen is not None:
        tensors["rng.state"] = gen.get_state()
    text = json.dumps({**meta, "param_groups": groups})
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"hiergen": text}))
    atomic_write(folder / CONFIG, json.dumps({**meta, "param_groups": groups}, indent=1))
    return folder / WEIGHTS


def _read_state(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = folder / WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["hiergen"])
        tensors = load_file(str(path))
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise ConfigError(f"cannot read denoiser checkpoint {path}: {exc}") from exc
    return meta, tensors


def load_denoiser(folder: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`train_denoiser`: ``(model, meta)``; ``meta`` has
    ``settings``, ``step``, ``losses`` and ``info``."""
    folder = Path(folder)
    meta, tensors = _read_state(folder)
    model = _build(meta["settings"]["model"])
    _load_model(model, tensors, folder)
    return model.to(device).eval(), meta


def _load_model(model: Any, tensors: dict[str, Any], folder: Path) -> None:
    state = {k[len("model."):]: t for k, t in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {folder} does not match its config: {exc}") from exc


def _restore(folder: Path, settings: dict[str, Any], model: Any, opt: Any, gen: Any) -> dict[str, Any]:
    """Load a checkpoint of the same settings into ``model``, ``opt``, ``gen``; its meta."""
    from hiergen.experiments.store import config_differences

    meta, tensors = _read_state(folder)
    diff = config_differences(meta["settings"], settings)
    if diff:
        raise ConfigError(
            f"{folder} holds a denoiser trained with other settings ({', '.join(diff)}); "
            "use another --out folder or delete it"
        )
    _load_model(model, tensors, folder)
    state: dict[int, dict[str, Any]] = {}
    for k, t in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = t
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["rng.state"])
    return meta


# ----------------------------------------------------------------------------- training
def training_data(grammar: Grammar, P: int, seed: int) -> Any:
    """The fixed training set of ``P`` clean data of ``(grammar, seed)`` (a TreeSample)."""
    seq = np.random.SeedSequence(entropy=[int(seed), grammar.L], spawn_key=(11,))
    return grammar.sample(int(P), seed=int(seq.generate_state(1)[0]))


def train_denoiser(
    grammar: Grammar,
    P: int,
    *,
    arch: str = "cnn",
    diffusion: str = "gaussian",
    width: int = CPU_DEFAULT["width"],
    layers: int = CPU_DEFAULT["layers"],
    steps: int = CPU_DEFAULT["steps"],
    batch_size: int = CPU_DEFAULT["batch_size"],
    lr: float = CPU_DEFAULT["lr"],
    seed: int = 0,
    out: str | Path | None = None,
    checkpoint_every: int = 500,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train a denoiser on ``P`` clean data of ``grammar`` (see the module doc).

    ``threads``: ``torch.set_num_threads`` before training (default: leave it). The CPU
    sizes are small enough that one thread is fastest; several threads on a busy machine can
    be many times slower (oversubscription).

    Returns ``(model, meta)``: the model in eval mode and ``meta`` with ``settings``,
    ``step`` (optimiser steps done), ``losses`` (mean training loss per
    ``checkpoint_every`` steps) and ``info`` (``seconds``, ``resumed_from``).
    """
    torch = _torch()
    from hiergen._progress import progress_bar

    P = _pos_int(P, "training-set size P")
    steps, batch_size = _pos_int(steps, "steps"), _pos_int(batch_size, "batch_size")
    checkpoint_every = _pos_int(checkpoint_every, "checkpoint_every")
    seed = _pos_int(seed, "seed", 0)
    lr = _pos_float(lr, "lr")
    if threads is not None:
        torch.set_num_threads(_pos_int(threads, "threads"))
    torch.manual_seed(seed)
    model = make_denoiser(grammar, arch, diffusion, width, layers)
    settings = _settings(grammar, model.config, P, batch_size, lr, seed, checkpoint_every)
    dev = torch.device(device)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    meta: dict[str, Any] = {"settings": settings, "step": 0, "losses": [], "info": {}}
    folder = Path(out) if out is not None else None
    if folder is not None and (folder / WEIGHTS).exists():
        meta = _restore(folder, settings, model, opt, gen)
        meta.pop("param_groups", None)
    resumed_from = meta["step"]
    x0_all = torch.as_tensor(training_data(grammar, P, seed).leaves, dtype=torch.long)
    abar = model.abar.cpu()
    t0 = time.perf_counter()
    bar = progress_bar(total=steps, initial=min(meta["step"], steps), enabled=progress,
                       desc=f"train {arch} denoiser (P={P})", unit="step")
    model.train()
    running = []
    while meta["step"] < steps:
        idx = torch.randint(P, (batch_size,), generator=gen)
        x0 = x0_all[idx]
        obs, t = noisy_batch(x0, diffusion, model.config["v"], gen, abar)
        loss = _loss(model, x0.to(dev), obs.to(dev), t.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(float(loss.detach()))
        meta["step"] += 1
        bar.update(1)
        if meta["step"] % checkpoint_every == 0 or meta["step"] == steps:
            meta["losses"].append(float(np.mean(running)))
            running = []
            bar.set_postfix(loss=f"{meta['losses'][-1]:.4g}", refresh=False)
            if folder is not None:
                meta["info"] = {"seconds": time.perf_counter() - t0, "resumed_from": resumed_from}
                save_state(folder, model, opt, gen, meta)
    bar.close()
    meta["info"] = {**meta.get("info", {}), "seconds": time.perf_counter() - t0,
                    "resumed_from": resumed_from}
    return model.eval(), meta


def leaf_log_probs(model: Any, obs: Any, t: float, batch: int = 4096) -> np.ndarray:
    """The model's leaf log-probabilities ``(n, d, v)`` (float64 numpy) for observations
    ``obs`` (``x_t`` ``(n, d, v)`` or tokens ``(n, d)``, see :func:`make_denoiser`) at noise
    level ``t`` (the same for all)."""
    torch = _torch()
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(obs), batch):
            o = torch.as_tensor(np.asarray(obs[i:i + batch]), device=dev)
            o = o.float() if model.config["diffusion"] == "gaussian" else o.long()
            tt = torch.full((o.shape[0],), float(t), device=dev)
            out.append(model(o, tt).double().cpu().numpy())
    return np.concatenate(out, 0)
