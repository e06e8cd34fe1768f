"""A resumable store of sweep points, safe for several processes: one NetCDF file per point.

A sweep writes every finished point at once, atomically (:func:`hiergen._files.atomic_write`:
a temporary file with a name unique to the writer, then ``os.replace``), so a killed sweep
loses nothing it finished and a rerun skips those points. The store is the source of truth:
result files are assembled from its points.

Several processes may work on one folder at the same time. A process *claims* a point with
an inter-process lock (``DIR/.locks/<key>.lock``, an OS ``flock`` that disappears with its
holder, even after ``kill -9``) before computing it, and re-checks whether the point exists
once it holds the claim; two identical runs therefore split the points between them and
each point is computed once (:meth:`PointStore.claim`).

The folder keeps a ``config.json`` describing everything that changes the numbers (grammar,
noise, times, sample size, BP backend, resolved dtype, device kind, hiergen version...);
reusing a folder with another configuration is refused
(:class:`~hiergen.models.errors.ConfigError` naming the differing keys) rather than silently
mixing results.

Layout::

    DIR/config.json
    DIR/points/<key>.nc
    DIR/.locks/<key>.lock, config.lock, <result file>.lock   (empty lock files)

Files named ``.*.tmp`` are unfinished writes (of a killed process); readers never look at them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from hiergen._files import TMP_SUFFIX, atomic_write, ensure_dir, file_lock, try_file_lock
from hiergen.models.errors import ConfigError

CONFIG_FILE = "config.json"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _to_netcdf(ds: xr.Dataset, path: Path) -> None:
    ds.to_netcdf(path, engine="h5netcdf")


def write_netcdf(path: str | os.PathLike[str], ds: xr.Dataset) -> Path:
    """Write ``ds`` to ``path`` (h5netcdf) atomically, under a temporary name unique to
    this call; file-system errors become :class:`ConfigError`."""
    return atomic_write(path, lambda tmp: _to_netcdf(ds, tmp))


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Sorted keys whose values differ between two configurations (missing counts as differing)."""
    return sorted(k for k in set(old) | set(new) if _canonical(old.get(k)) != _canonical(new.get(k)))


class PointStore:
    """Folder of finished sweep points, shared safely between processes.

    Parameters
    ----------
    root : the folder (created if missing; a :class:`ConfigError` if it is a file or
        cannot be created).
    config : JSON-able dict of everything that determines the numbers; written to
        ``root/config.json`` by the first process, compared with it by every later one
        (under a lock, so two processes starting together agree).
    """

    def __init__(self, root: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"output path {self.root} exists and is not a folder")
        ensure_dir(self.root)
        self.points = ensure_dir(self.root / "points")
        self.locks = ensure_dir(self.root / ".locks")
        self.config = dict(config)
        with file_lock(self.locks / "config.lock"):
            self._check_or_write_config()

    # ------------------------------------------------------------------ configuration
    def _check_or_write_config(self) -> None:
        cfg_path = self.root / CONFIG_FILE
        if not cfg_path.exists():
            if any(self.keys()):
                raise ConfigError(
                    f"{self.points} holds sweep points but {cfg_path} is missing: their settings "
                    "are unknown; use a new output folder"
                )
            atomic_write(cfg_path, json.dumps(self.config, sort_keys=True, indent=1) + "\n")
            return
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"corrupt sweep config {cfg_path}: {exc}") from exc
        if not isinstance(old, dict):
            raise ConfigError(f"corrupt sweep config {cfg_path}: not a JSON object")
        diff = config_differences(old, self.config)
        if diff:
            detail = "; ".join(
                f"{k}: folder has {_short(old.get(k))}, this run {_short(self.config.get(k))}"
                for k in diff
            )
            raise ConfigError(
                f"{self.root} holds a sweep with another configuration (differs in: "
                f"{', '.join(diff)}; {detail}); use a new output folder or the same settings"
            )

    # ------------------------------------------------------------------ points
    def path(self, key: str) -> Path:
        """The file of point ``key``."""
        return self.points / f"{key}.nc"

    def has(self, key: str) -> bool:
        """Whether point ``key`` is finished (its file exists; writes are atomic)."""
        return self.path(key).is_file()

    def keys(self) -> Iterator[str]:
        """Keys of the finished points (unfinished ``.*.tmp`` writes are skipped)."""
        for p in sorted(self.points.glob("*.nc")):
            if not p.name.startswith(".") and not p.name.endswith(TMP_SUFFIX):
                yield p.stem

    def load(self, key: str, expect: Mapping[str, Any] | None = None) -> xr.Dataset:
        """Read a finished point (fully into memory; the file is closed).

        ``expect``: attributes the point must carry (e.g. the grammar fingerprint); a point
        that does not match, or a file that cannot be read, is a :class:`ConfigError`
        naming the file.
        """
        path = self.path(key)
        try:
            with xr.open_dataset(path, engine="h5netcdf") as ds:
                ds = ds.load()
        except Exception as exc:  # h5py/h5netcdf raise OSError, ValueError, KeyError...
            raise ConfigError(
                f"corrupt sweep point {path}: {type(exc).__name__}: {exc}; delete it to recompute"
            ) from exc
        for name, value in (expect or {}).items():
            if _canonical(ds.attrs.get(name)) != _canonical(value):
                raise ConfigError(
                    f"sweep point {path} has {name}={ds.attrs.get(name)!r}, this run expects "
                    f"{value!r}; it was computed with other settings: use a new output folder"
                )
        return ds

    def save(self, key: str, ds: xr.Dataset) -> Path:
        """Write a point atomically (a killed write leaves no partial file under ``key``)."""
        return write_netcdf(self.path(key), ds)

    # ------------------------------------------------------------------ locks
    @contextlib.contextmanager
    def claim(self, key: str, wait: bool = False) -> Iterator[bool]:
        """Claim point ``key`` for this process while the ``with`` block runs.

        Yields ``True`` when this process holds the claim (re-check :meth:`has` then: another
        process may have finished the point meanwhile), ``False`` when another live process
        holds it (only with ``wait=False``; with ``wait=True`` it waits for that process).
        The claim of a process that died is free again at once.
        """
        lock = self.locks / f"{key}.lock"
        if wait:
            with file_lock(lock):
                yield True
        else:
            with try_file_lock(lock) as got:
                yield got

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Inter-process lock ``DIR/.locks/<name>.lock`` (waits for other holders)."""
        return file_lock(self.locks / f"{name}.lock")


def _short(value: Any, width: int = 60) -> str:
    text = _canonical(value)
    return text if len(text) <= width else text[: width - 3] + "..."
