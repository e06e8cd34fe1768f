"""Options shared by several sub-commands (one definition, same names and help everywhere)."""

from __future__ import annotations

import argparse
from typing import Any

#: pass as a default to make the option required
REQUIRED: Any = object()

_RHM_HELP = {
    "v": "RHM vocabulary size per level below the root",
    "n_classes": "RHM number of classes (root symbols)",
    "m": "RHM production rules per symbol",
    "s": "RHM branching factor (children per node)",
    "L": "RHM depth (levels below the class)",
}


def add_rhm_options(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Add ``--v --n-classes --m --s`` (and ``--L`` when given) with these ``defaults``
    (an int, ``None`` for "not set", or :data:`REQUIRED`), in that order."""
    unknown = set(defaults) - set(_RHM_HELP)
    if unknown:  # pragma: no cover - programming error
        raise TypeError(f"unknown RHM options {sorted(unknown)}")
    for key in ("v", "n_classes", "m", "s", "L"):
        if key not in defaults:
            continue
        flag = "--" + key.replace("_", "-")
        default = defaults[key]
        if default is REQUIRED:
            parser.add_argument(flag, type=int, required=True, help=_RHM_HELP[key])
        else:
            parser.add_argument(flag, type=int, default=default, help=_RHM_HELP[key])


def add_scheduler_options(p: argparse.ArgumentParser) -> None:
    """``--scheduler`` and ``--workers`` (points as Dask tasks; see docs/scale_out.md)."""
    p.add_argument(
        "--scheduler", default=None,
        help="run the points as Dask tasks: 'local' (a cluster of worker processes on this "
             "machine), a scheduler address tcp://host:8786, or a scheduler file *.json "
             "(default: serial, in this process)",
    )
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of --scheduler local (default: one per core)")
