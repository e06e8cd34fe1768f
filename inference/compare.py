"""Run several inference backends on the same grammar and evidence, and tabulate them.

One row per backend: wall time, error against exact belief propagation (max |Δ marginal|
overall and per level, max |Δ log-evidence| where the backend has one), and class
accuracy — against the true classes when given, else against BP's most probable class.
A backend that refuses the problem (too large, missing dependency) gets a row with its
error message instead of stopping the comparison.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hiergen.inference.registry import available_backends, backend_kind, run
from hiergen.models.errors import BackendError, HiergenError
from hiergen.models.grammar import Grammar

DEFAULT_BACKENDS = ("bp", "pgmpy", "numpyro", "numpyro-sample", "mcmc", "meanfield-vi")


def compare_backends(
    grammar: Grammar,
    evidence: Any,
    backends: Sequence[str] = DEFAULT_BACKENDS,
    truth: Any = None,
    *,
    log: bool | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    reference: Any = None,
    progress: bool = True,
) -> Any:
    """Compare backends on one question; returns a ``pandas.DataFrame`` (one row each).

    Parameters
    ----------
    grammar, evidence, log : as for :func:`hiergen.inference.registry.run`.
    backends : registry names (unknown names raise BackendError before anything runs).
    truth : optional ``(B,)`` true classes (or a ``TreeSample``, whose labels are used).
    options : per-backend constructor options, e.g. ``{"mcmc": {"num_samples": 2000}}``.
    reference : optional precomputed exact BP :class:`Posterior` (else BP is run).
    progress : show which backend is running and how long each took (standard error).

    Columns: ``backend, kind, seconds, max_abs_dmarginal, dmarginal_level_{l}`` (one per
    level), ``abs_dlog_evidence`` (max over items; NaN where none), ``class_accuracy``,
    ``bp_class_accuracy`` (BP's own accuracy against the same target), ``target``
    (``"truth"`` or ``"bp-argmax"``), ``n_items`` and ``error`` (empty when it ran).
    """
    import pandas as pd

    backends = list(backends)
    unknown = [b for b in backends if b not in available_backends()]
    if unknown:
        raise BackendError(
            f"unknown backend(s) {unknown}; available: {', '.join(available_backends())}"
        )
    options = dict(options or {})
    ref = reference if reference is not None else run(grammar, evidence, "bp", log=log)
    labels = getattr(truth, "labels", truth)
    target_name = "truth" if labels is not None else "bp-argmax"
    target = np.asarray(labels) if labels is not None else ref.class_probs.argmax(-1)
    if target.shape != (ref.batch_size,):
        raise BackendError(f"truth must have shape ({ref.batch_size},), got {target.shape}")
    bp_acc = float((ref.class_probs.argmax(-1) == target).mean())
    rows = []
    from hiergen._progress import progress_bar

    bar = progress_bar(backends, enabled=progress, desc="backends", unit="backend")
    for name in bar:
        bar.set_postfix_str(f"running {name}")
        row: dict[str, Any] = {"backend": name, "kind": backend_kind(name), "target": target_name,
                               "n_items": ref.batch_size, "bp_class_accuracy": bp_acc, "error": ""}
        try:
            post = ref if (name == "bp" and reference is None and not options.get("bp")) else run(
                grammar, evidence, name, log=log, **options.get(name, {}))
        except HiergenError as exc:
            row.update(seconds=np.nan, max_abs_dmarginal=np.nan, abs_dlog_evidence=np.nan,
                       class_accuracy=np.nan, error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            continue
        row.update(_scores(post, ref, target))
        rows.append(row)
    bar.close()
    df = pd.DataFrame(rows)
    first = ["backend", "kind", "seconds", "max_abs_dmarginal", "abs_dlog_evidence",
             "class_accuracy", "bp_class_accuracy", "target", "n_items"]
    rest = [c for c in df.columns if c not in first and c != "error"]
    return df[first + rest + ["error"]]


def _scores(post: Any, ref: Any, target: np.ndarray) -> dict[str, Any]:
    """One backend's errors against the exact BP posterior ``ref``; ``target`` ``(B,)`` classes."""
    per_level = [float(np.nanmax(np.abs(a - b))) if a.size else np.nan
                 for a, b in zip(post.marginals, ref.marginals)]
    row: dict[str, Any] = {f"dmarginal_level_{lev}": e for lev, e in enumerate(per_level)}
    with np.errstate(invalid="ignore"):
        dle = np.abs(np.asarray(post.log_evidence) - ref.log_evidence)
    row.update(
        seconds=float(post.seconds),
        max_abs_dmarginal=float(np.nanmax(per_level)),
        abs_dlog_evidence=float(np.nanmax(dle)) if np.isfinite(dle).any() else np.nan,
        class_accuracy=float((post.class_probs.argmax(-1) == target).mean()),
    )
    if "rhat_class" in post.extra:
        with np.errstate(all="ignore"):
            r = np.asarray(post.extra["rhat_class"], dtype=float)
            row["rhat_class_max"] = float(np.nanmax(r)) if np.isfinite(r).any() else np.nan
    return row


def format_comparison(df: Any) -> str:
    """A readable fixed-width table of the main columns."""
    cols = ["backend", "kind", "seconds", "max_abs_dmarginal", "abs_dlog_evidence",
            "class_accuracy", "rhat_class_max"]
    cols = [c for c in cols if c in df.columns]
    text = df[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}", na_rep="-")
    errors = [f"  {r.backend}: {r.error}" for r in df.itertuples() if r.error]
    if errors:
        text += "\nbackends that did not run:\n" + "\n".join(errors)
    return text


def save_comparison(df: Any, out_dir: str | Path, name: str = "comparison",
                    meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<name>.csv`` and ``<name>.json`` (records plus ``meta``) under ``out_dir``."""
    from hiergen._files import atomic_write, ensure_dir

    out = ensure_dir(out_dir)
    csv = out / f"{name}.csv"
    js = out / f"{name}.json"
    atomic_write(csv, df.to_csv(index=False))
    records = json.loads(df.to_json(orient="records"))
    atomic_write(js, json.dumps({"meta": dict(meta or {}), "rows": records}, indent=2))
    return {"csv": csv, "json": js}


__all__ = ["compare_backends", "format_comparison", "save_comparison", "DEFAULT_BACKENDS"]
