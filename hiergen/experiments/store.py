"""A resumable store of sweep points: one small NetCDF file per finished point.

A sweep writes every finished point at once (atomically: to a temporary name, then
``os.replace``), so a killed sweep loses nothing it finished and a rerun skips those points.
The folder keeps a ``config.json`` describing everything that changes the numbers; reusing
a folder with another configuration is refused (:class:`~hiergen.models.errors.ConfigError`)
rather than silently mixing results.

Layout::

    DIR/config.json
    DIR/points/<key>.nc
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import xarray as xr

from hiergen.models.errors import ConfigError


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class PointStore:
    """Folder of finished sweep points.

    Parameters
    ----------
    root : the folder (created if missing).
    config : JSON-able dict of everything that determines the numbers; compared with the
        folder's ``config.json`` when it exists.
    """

    def __init__(self, root: str | os.PathLike[str], config: dict[str, Any]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"output path {self.root} exists and is not a folder")
        self.points = self.root / "points"
        self.points.mkdir(parents=True, exist_ok=True)
        cfg_path = self.root / "config.json"
        text = _canonical(config)
        if cfg_path.exists():
            try:
                old = json.loads(cfg_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"corrupt sweep config {cfg_path}: {exc}") from exc
            if _canonical(old) != text:
                diff = sorted(
                    k for k in set(old) | set(config) if _canonical(old.get(k)) != _canonical(config.get(k))
                )
                raise ConfigError(
                    f"{self.root} holds a sweep with another configuration (differs in: "
                    f"{', '.join(diff)}); use a new output folder or the same settings"
                )
        else:
            tmp = cfg_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(config, sort_keys=True, indent=1))
            os.replace(tmp, cfg_path)
        self.config = config

    def path(self, key: str) -> Path:
        return self.points / f"{key}.nc"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def load(self, key: str) -> xr.Dataset:
        """Read a finished point (fully into memory; the file is closed)."""
        path = self.path(key)
        try:
            with xr.open_dataset(path, engine="h5netcdf") as ds:
                return ds.load()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"corrupt sweep point {path}: {exc}; delete it to recompute") from exc

    def save(self, key: str, ds: xr.Dataset) -> None:
        """Write a point atomically (a killed write leaves no partial file under ``key``)."""
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
