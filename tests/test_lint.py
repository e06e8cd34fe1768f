"""The code base is ruff clean (the rules in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean() -> None:
    pytest.importorskip("ruff")
    from ruff.__main__ import find_ruff_bin

    exe = find_ruff_bin() if shutil.which("ruff") is None else shutil.which("ruff")
    res = subprocess.run([exe, "check", "--no-cache", "--quiet", str(ROOT)], capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == 0, f"ruff found problems:\n{res.stdout}{res.stderr}"
