"""Fingerprints of weights and settings, and the settings records that keep run-folder caches
(generated images, whitening statistics, probe parts) from mixing results of different settings.

* :func:`state_dict_fingerprint` - sha256 over the names, dtypes, shapes and bytes of every tensor
  of a model's state dict: two checkpoints with the same architecture but different weights get
  different fingerprints, whatever file or hub id they came from.
* :func:`json_fingerprint` - sha256 of a JSON-able value (sorted keys).
* :func:`record_settings` - under an inter-process lock, write a settings file the first time and
  afterwards compare: any differing setting raises :class:`ConfigError` naming each one with its
  stored and its new value (results are never silently mixed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hiergen._files import atomic_write, file_lock
from hiergen.models.errors import ConfigError


def state_dict_fingerprint(state_dict: dict) -> str:
    """sha256 hex digest of a state dict: tensor names, dtypes, shapes and raw bytes (any dtype,
    any device; the bytes are viewed as uint8, not converted)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}|{t!r}|".encode())
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def json_fingerprint(value: Any) -> str:
    """sha256 hex digest of ``value`` as canonical JSON (sorted keys; non-JSON values by str)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def canonical(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, ...), for comparisons."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def differing(old: dict, new: dict, keys: Sequence[str] | None = None) -> list[str]:
    """Names of the settings (``keys``, default: all of both) whose values differ."""
    names = keys if keys is not None else sorted(set(old) | set(new))
    return [k for k in names if canonical(old.get(k)) != canonical(new.get(k))]


def mismatch_message(path: Path, old: dict, new: dict, names: Sequence[str], what: str,
                     hint: str) -> str:
    """A one-paragraph error naming every differing setting with its stored and new value."""
    parts = [f"{k}: stored {_short(old.get(k))}, now {_short(new.get(k))}" for k in names]
    return (f"{path}: the {what} here were made with other settings ({'; '.join(parts)}); "
            f"{hint}")


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file guarding ``path``: ``.<name>.lock`` beside it."""
    p = Path(path)
    return p.with_name(f".{p.name}.lock")


def read_json(path: Path) -> dict:
    """A JSON settings file; a corrupt one is a :class:`ConfigError` naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable or corrupt settings file ({exc}); delete the "
                          "folder it belongs to and rerun") from exc


def record_settings(path: str | os.PathLike, settings: dict, what: str, hint: str,
                    compare: Sequence[str] | None = None,
                    merge: Callable[[dict, dict], dict] | None = None) -> dict:
    """Write ``settings`` to the JSON file ``path``, or check them against the stored ones.

    Under :func:`hiergen._files.file_lock`: when ``path`` exists, the settings named in
    ``compare`` (default: all) must equal the stored ones, else :class:`ConfigError` names every
    difference (``what``: what the folder holds, ``hint``: how to proceed). ``merge(old, new)``
    returns the record to store when both agree (default: the old one is kept). Returns the
    stored record.
    """
    path = Path(path)
    new = canonical(settings)
    with file_lock(lock_path(path)):
        if path.exists():
            old = read_json(path)
            names = differing(old, new, compare)
            if names:
                raise ConfigError(mismatch_message(path, old, new, names, what, hint))
            merged = canonical(merge(old, new)) if merge is not None else old
            if merged != old:
                atomic_write(path, json.dumps(merged, indent=1, sort_keys=True))
            return merged
        atomic_write(path, json.dumps(new, indent=1, sort_keys=True))
        return new
