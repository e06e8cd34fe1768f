"""The CNN probe of the paper's Fig. 7b: how a network's hidden representations change under
forward–backward resampling of RHM data.

1. :func:`train_cnn` trains a :class:`TreeCNN` — ``L`` convolutions with filter size ``s``
   and stride ``s`` (so each layer matches one level of the tree), ReLU after each, then a
   linear readout to the classes — on one-hot RHM data ``(batch, v, d)``, until it
   interpolates the training set; test accuracy on held-out data never seen in training.
2. :func:`cnn_probe` runs the forward–backward protocol (noise ``x0`` to level ``t``, draw
   ``x0_hat`` from the exact BP posterior) and records, per noise level, the cosine
   similarity of every layer's post-activations between ``x0`` and ``x0_hat``, the logits'
   cosine similarity, and the class-change rate of the CNN's prediction.

Sizes. CPU default (:data:`CPU_DEFAULT`): RHM v = n_classes = 16, m = 4, s = 2, L = 4
(16 * 4**15, about 1.7e10 distinct data), 48,000 training data, width 256, Adam — reaches
100% test accuracy in 3 epochs, about 1-2 minutes on 2 cores. GPU preset (:data:`GPU_PRESET`): v = n_classes = 32, m = 8, s = 2, L = 3, 300,000
training data, width 512. torch is imported lazily.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hiergen.models.errors import ConfigError
from hiergen.models.grammar import Grammar

CPU_DEFAULT: dict[str, Any] = {
    "rhm": {"v": 16, "n_classes": 16, "m": 4, "s": 2, "L": 4},
    "n_train": 48_000, "n_test": 4_000, "width": 256, "epochs": 40, "batch_size": 128, "lr": 1e-3,
}
GPU_PRESET: dict[str, Any] = {
    "rhm": {"v": 32, "n_classes": 32, "m": 8, "s": 2, "L": 3},
    "n_train": 300_000, "n_test": 20_000, "width": 512, "epochs": 60, "batch_size": 512, "lr": 1e-3,
}

_WEIGHTS = "model.safetensors"
_CONFIG = "config.json"


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the CNN probe needs torch: pip install 'hiergen[torch]'") from exc
    return torch


def _make_model(v: int, n_classes: int, s: int, L: int, width: int) -> Any:
    torch = _torch()
    nn = torch.nn

    class TreeCNN(nn.Module):
        """CNN matching the tree: ``L`` x (Conv1d(kernel s, stride s) + ReLU), then Linear.

        Input ``(batch, v, s**L)`` one-hot; ``forward`` returns logits ``(batch, n_classes)``;
        ``activations`` returns the post-ReLU activations of each layer, layer ``k`` of shape
        ``(batch, width, s**(L-k))``, plus the logits.
        """

        def __init__(self) -> None:
            super().__init__()
            self.config = {"v": v, "n_classes": n_classes, "s": s, "L": L, "width": width}
            chans = [v] + [width] * L
            self.convs = nn.ModuleList(
                nn.Conv1d(chans[k], chans[k + 1], kernel_size=s, stride=s) for k in range(L)
            )
            self.readout = nn.Linear(width, n_classes)

        def activations(self, x: Any) -> tuple[list[Any], Any]:
            acts = []
            for conv in self.convs:
                x = torch.relu(conv(x))
                acts.append(x)
            return acts, self.readout(x.flatten(1))

        def forward(self, x: Any) -> Any:
            return self.activations(x)[1]

    return TreeCNN()


def TreeCNN(v: int, n_classes: int, s: int, L: int, width: int = 256) -> Any:  # noqa: N802
    """Build the tree-matched CNN (a ``torch.nn.Module``; see :func:`_make_model`)."""
    for name, val in (("v", v), ("n_classes", n_classes), ("s", s), ("L", L), ("width", width)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ConfigError(f"TreeCNN {name} must be a positive integer, got {val!r}")
    return _make_model(int(v), int(n_classes), int(s), int(L), int(width))


def _check_grammar(grammar: Grammar) -> None:
    if not isinstance(grammar, Grammar):
        raise ConfigError(f"need a Grammar, got {type(grammar).__name__}")
    if len(set(grammar.branching)) != 1 or len(set(grammar.vocab_sizes[1:])) != 1:
        raise ConfigError("the tree CNN needs one branching factor and one alphabet below the root")


def _one_hot(leaves: np.ndarray, v: int, device: Any) -> Any:
    """``(n, d)`` int leaves -> ``(n, v, d)`` float32 torch tensor."""
    torch = _torch()
    x = torch.as_tensor(np.ascontiguousarray(leaves), dtype=torch.long, device=device)
    return torch.nn.functional.one_hot(x, v).permute(0, 2, 1).float().contiguous()


def _unseen(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Mask of ``test`` rows not present in ``train`` (both ``(n, d)`` ints)."""
    seen = {row.tobytes() for row in np.ascontiguousarray(train, dtype=np.int64)}
    return np.array([row.tobytes() not in seen for row in np.ascontiguousarray(test, dtype=np.int64)],
                    dtype=bool)


def _accuracy(model: Any, x: Any, y: Any, batch: int = 4096) -> float:
    torch = _torch()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / max(1, x.shape[0])


def _train_test_data(grammar: Grammar, n_train: int, n_test: int, seed: int, dev: Any) -> tuple[Any, ...]:
    """One-hot training and test data ``(n, v, d)`` with labels ``(n,)`` for :func:`train_cnn`;
    test samples that also occur in the training set are dropped."""
    torch = _torch()
    v, L = grammar.vocab_sizes[-1], grammar.L
    seq = np.random.SeedSequence(entropy=[seed, L], spawn_key=(7,))
    s_train, s_test = (int(c.generate_state(1)[0]) for c in seq.spawn(2))
    train = grammar.sample(n_train, seed=s_train)
    test = grammar.sample(n_test, seed=s_test)
    keep = _unseen(train.leaves, test.leaves)
    if not keep.any():
        raise ConfigError("every test sample also occurs in the training set: the grammar is too small")
    x_tr, y_tr = _one_hot(train.leaves, v, dev), torch.as_tensor(train.labels, device=dev)
    x_te = _one_hot(test.leaves[keep], v, dev)
    y_te = torch.as_tensor(test.labels[keep], device=dev)
    return x_tr, y_tr, x_te, y_te


def train_cnn(
    grammar: Grammar,
    n_train: int = CPU_DEFAULT["n_train"],
    n_test: int = CPU_DEFAULT["n_test"],
    width: int = CPU_DEFAULT["width"],
    epochs: int = CPU_DEFAULT["epochs"],
    batch_size: int = CPU_DEFAULT["batch_size"],
    lr: float = CPU_DEFAULT["lr"],
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = 2,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train a :class:`TreeCNN` on ``grammar`` data (Adam, cross-entropy).

    Training stops at interpolation (100% training accuracy, checked after every epoch) or
    after ``epochs``. The test set has ``n_test`` fresh samples minus any that also occur in
    the training set. Reproducible: data from numpy seeds, initialisation and shuffling from
    ``torch.manual_seed(seed)`` / a seeded ``torch.Generator`` (CPU).

    Returns ``(model, info)``; ``info``: ``train_acc``, ``test_acc``, ``n_test_unseen``,
    ``epochs``, ``seconds``, the sizes and the grammar's parameters.
    """
    torch = _torch()
    from hiergen._progress import progress_bar

    _check_grammar(grammar)
    for name, val in (("n_train", n_train), ("n_test", n_test), ("epochs", epochs),
                      ("batch_size", batch_size)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ConfigError(f"{name} must be a positive integer, got {val!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    v, s, L = grammar.vocab_sizes[-1], grammar.branching[0], grammar.L
    x_tr, y_tr, x_te, y_te = _train_test_data(grammar, int(n_train), int(n_test), seed, dev)

    torch.manual_seed(seed)
    model = TreeCNN(v, grammar.n_classes, s, L, width).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    train_acc = 0.0
    epochs_run = 0
    bar = progress_bar(range(int(epochs)), enabled=progress, desc="train CNN")
    for _ in bar:
        epochs_run += 1
        model.train()
        perm = torch.randperm(x_tr.shape[0], generator=gen).to(dev)
        for i in range(0, x_tr.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
        model.eval()
        train_acc = _accuracy(model, x_tr, y_tr)
        bar.set_postfix(loss=f"{float(loss.detach()):.3g}", train_acc=f"{train_acc:.4f}", refresh=False)
        if train_acc >= 1.0:
            break
    bar.close()
    model.eval()
    info = {
        "train_acc": train_acc,
        "test_acc": _accuracy(model, x_te, y_te),
        "n_test_unseen": int(x_te.shape[0]),
        "epochs": epochs_run,
        "seconds": time.perf_counter() - t0,
        "n_train": int(n_train), "width": int(width), "batch_size": int(batch_size), "lr": float(lr),
        "seed": int(seed), "device": str(dev),
        "grammar": getattr(grammar, "params", None) or {"vocab_sizes": list(grammar.vocab_sizes)},
    }
    return model, info


def save_checkpoint(model: Any, folder: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write ``folder/model.safetensors`` (weights) and ``folder/config.json`` (architecture +
    ``info``). Returns the folder."""
    from safetensors.torch import save_file

    from hiergen._files import atomic_write, ensure_dir

    folder = ensure_dir(folder)
    state = {k: t.detach().cpu().contiguous() for k, t in model.state_dict().items()}
    atomic_write(folder / _WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    atomic_write(folder / _CONFIG, json.dumps({"model": model.config, "info": info or {}}, indent=1))
    return folder


def load_checkpoint(folder: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(model, info)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        cfg = json.loads((folder / _CONFIG).read_text())
        state = load_file(str(folder / _WEIGHTS), device=str(device))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ConfigError(f"cannot read CNN checkpoint in {folder}: {exc}") from exc
    model = TreeCNN(**cfg["model"]).to(device)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {folder} does not match its config: {exc}") from exc
    model.eval()
    return model, cfg.get("info", {})


def cosine_similarity(a: Any, b: Any) -> Any:
    """Per-sample cosine similarity of ``(n, ...)`` tensors (flattened): ``(n,)``.

    Two all-zero vectors count as identical (1); one all-zero vector against a non-zero one
    gives 0.
    """
    torch = _torch()
    a, b = a.flatten(1).double(), b.flatten(1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(1) / (na * nb).clamp_min(1e-300)
    both_zero = (na == 0) & (nb == 0)
    return torch.where(both_zero, torch.ones_like(cos), cos)


def cnn_probe(
    model: Any,
    grammar: Grammar,
    times: Any,
    n_samples: int = 1000,
    noise: str = "gaussian",
    seed: int = 1,
    backend: str = "numpy",
    device: str = "cpu",
    whiten: bool = True,
    progress: bool = True,
) -> xr.Dataset:
    """Forward–backward probe of a trained :class:`TreeCNN` (the paper's Fig. 7b).

    For each noise level ``t`` in ``times``: ``n_samples`` fresh data ``x0`` (the same at every
    ``t``), their evidence at level ``t`` and one exact BP posterior sample ``x0_hat`` each
    (seeded as in :func:`~hiergen.experiments.sweeps.forward_backward`).
    ``whiten`` (default, as in the paper's image protocol): standardise every channel of every
    layer (and every logit) with its mean and standard deviation over the clean data before
    the cosine similarity, so unrelated inputs score about 0 instead of the positive overlap
    of raw ReLU outputs; ``whiten=False`` compares raw post-activations.

    Returns an ``xarray.Dataset`` over ``time`` and ``layer`` (``1..L``): ``cos_sim`` /
    ``cos_sim_se`` (post-activation cosine similarity between ``x0`` and ``x0_hat``, mean and
    standard error over samples); over ``time``: ``logits_cos`` (+ ``_se``), ``class_change``
    (+ ``_se``; the CNN's predicted class differs), ``class_change_bp`` (the true class of
    ``x0_hat`` differs from that of ``x0``), and ``cnn_acc_x0`` (CNN accuracy on ``x0``).
    """
    torch = _torch()
    from hiergen._progress import progress_bar
    from hiergen.experiments.sweeps import draw_data, forward_backward_point
    from hiergen.inference.bp import BeliefPropagation
    from hiergen.models.noise import make_noise

    times = _check_probe_args(model, grammar, times, n_samples, noise)
    dev = torch.device(device)
    model = model.to(dev).eval()
    v, L = grammar.vocab_sizes[-1], grammar.L
    bp = BeliefPropagation(grammar, backend=backend)
    proc = make_noise(noise, v)
    data = draw_data(grammar, int(n_samples), seed)
    names = ["cos_sim", "logits_cos", "class_change", "class_change_bp", "cnn_acc_x0"]
    norm = _whitening(model, data, v, dev) if whiten else None

    def feats(leaves: np.ndarray) -> tuple[list[Any], Any]:
        with torch.no_grad():
            acts, logits = model.activations(_one_hot(leaves, v, dev))
        if norm is not None:
            acts = [(a - mu) / sd for a, (mu, sd) in zip(acts, norm[:-1])]
            logits = (logits - norm[-1][0]) / norm[-1][1]
        return acts, logits

    res = {k: [] for k in names}
    for ti in progress_bar(range(len(times)), enabled=progress, desc="CNN probe"):
        acc: dict[str, list[np.ndarray]] = {k: [] for k in names}

        def on_sample(x0: Any, x_hat: Any, acc: dict[str, list[np.ndarray]] = acc) -> None:
            a0, l0 = feats(x0.leaves)
            a1, l1 = feats(x_hat.leaves)
            acc["cos_sim"].append(np.stack([cosine_similarity(p, q).cpu().numpy() for p, q in zip(a0, a1)], 1))
            acc["logits_cos"].append(cosine_similarity(l0, l1).cpu().numpy())
            p0, p1 = l0.argmax(1).cpu().numpy(), l1.argmax(1).cpu().numpy()
            acc["class_change"].append((p0 != p1).astype(float))
            acc["class_change_bp"].append((x0.labels != x_hat.labels).astype(float))
            acc["cnn_acc_x0"].append((p0 == x0.labels).astype(float))

        forward_backward_point(bp, proc, data, float(times[ti]), seed=seed, ti=ti, on_sample=on_sample)
        for k in names:
            x = np.concatenate(acc[k], 0)
            res[k].append((x.mean(0), x.std(0, ddof=1) / math.sqrt(x.shape[0])))
    ds = _probe_dataset(res, times, L)
    ds.attrs.update({"noise": noise, "n_samples": int(n_samples), "seed": int(seed), "L": L,
                     "whiten": int(bool(whiten)),
                     "n_classes": grammar.n_classes, "grammar": repr(grammar)})
    return ds


def _check_probe_args(model: Any, grammar: Grammar, times: Any, n_samples: Any, noise: str) -> np.ndarray:
    """Validate :func:`cnn_probe`'s inputs (the model must match the grammar); returns the
    checked ``times`` ``(n_t,)``."""
    from hiergen.experiments.sweeps import _check_noise, _check_times

    _check_grammar(grammar)
    cfg = getattr(model, "config", None)
    want = {"v": grammar.vocab_sizes[-1], "n_classes": grammar.n_classes, "s": grammar.branching[0],
            "L": grammar.L}
    if cfg is None or any(cfg[k] != want[k] for k in want):
        raise ConfigError(f"model {cfg} does not match the grammar {want}")
    _check_noise(noise)
    times = _check_times(times, noise)
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 2:
        raise ConfigError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    return times


def _probe_dataset(res: dict[str, list[tuple[np.ndarray, np.ndarray]]], times: np.ndarray,
                   L: int) -> xr.Dataset:
    """Stack the per-time ``(mean, standard error)`` pairs of :func:`cnn_probe` into a
    Dataset over ``time`` ``(n_t,)`` and ``layer`` ``(L,)``."""
    ds = xr.Dataset(coords={"time": times, "layer": np.arange(1, L + 1)})
    for k, pairs in res.items():
        mean = np.stack([m for m, _ in pairs], 0)
        se = np.stack([e for _, e in pairs], 0)
        dims = ("time", "layer") if mean.ndim == 2 else ("time",)
        ds[k] = (dims, mean)
        if k != "cnn_acc_x0":
            ds[k + "_se"] = (dims, se)
    ds["cos_sim"].attrs["long_name"] = "cosine similarity of post-activations, x0 vs x0_hat"
    ds["logits_cos"].attrs["long_name"] = "cosine similarity of logits, x0 vs x0_hat"
    ds["class_change"].attrs["long_name"] = "CNN-predicted class of x0_hat differs from that of x0"
    ds["class_change_bp"].attrs["long_name"] = "true class of x0_hat differs from that of x0"
    ds["layer"].attrs["long_name"] = "CNN layer k (sees s**k leaves; matches tree level L-k)"
    return ds


def _whitening(model: Any, data: Any, v: int, dev: Any) -> list[tuple[Any, Any]]:
    """Per-channel ``(mean, std)`` of every layer's activations (shapes ``(1, C, 1)``) and of
    the logits (``(1, n_classes)``) over the clean data blocks ``data``."""
    torch = _torch()
    sums: list[Any] = []
    count = 0
    with torch.no_grad():
        for x0 in data:
            acts, logits = model.activations(_one_hot(x0.leaves, v, dev))
            outs = [a.double().transpose(0, 1).flatten(1) for a in acts] + [logits.double().T]
            if not sums:
                sums = [[o.sum(1), (o * o).sum(1), o.shape[1]] for o in outs]
            else:
                for acc, o in zip(sums, outs):
                    acc[0] += o.sum(1)
                    acc[1] += (o * o).sum(1)
                    acc[2] += o.shape[1]
            count += 1
    stats = []
    for k, (s1, s2, n) in enumerate(sums):
        mu = s1 / n
        sd = (s2 / n - mu * mu).clamp_min(0).sqrt()
        sd = torch.where(sd > 1e-8, sd, torch.ones_like(sd))  # dead channels stay 0
        shape = (1, -1) if k == len(sums) - 1 else (1, -1, 1)
        stats.append((mu.float().reshape(shape), sd.float().reshape(shape)))
    return stats


def plot_probe(ds: xr.Dataset) -> Any:
    """Fig. 7b: cosine similarity per layer (+ logits) and class-change rate vs noise level."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    t = ds["time"].values
    L = ds.sizes["layer"]
    cmap = colormaps["viridis"]
    for k in range(L):
        y, e = ds["cos_sim"].isel(layer=k).values, ds["cos_sim_se"].isel(layer=k).values
        c = cmap(0.9 * k / max(L, 1))
        ax1.plot(t, y, color=c, label=f"layer {k + 1}")
        ax1.fill_between(t, y - e, y + e, color=c, alpha=0.25, lw=0)
    ax1.plot(t, ds["logits_cos"].values, color="k", ls="--", label="logits")
    ax1.set_ylabel("cosine similarity x0 vs x0_hat")
    ax1.legend(fontsize=8)
    ax2.plot(t, ds["class_change"].values, label="CNN prediction changed")
    ax2.plot(t, ds["class_change_bp"].values, ls=":", label="true class changed (BP)")
    ax2.set_ylabel("class-change rate")
    ax2.legend(fontsize=8)
    xl = {"gaussian": "diffusion time t", "uniform": "corruption eps"}.get(ds.attrs.get("noise"), "noise level")
    for ax in (ax1, ax2):
        ax.set_xlabel(xl)
    return fig
