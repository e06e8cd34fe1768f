"""The README's Quick start runs as written and prints the values its comments show."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_quick_start_prints_what_the_readme_says() -> None:
    code = _quick_start()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README quick start", "exec"), {})
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines

    f, d, log10_n = lines[0].split()
    assert (float(f), int(d)) == (0.25, 256)
    assert log10_n.startswith(re.search(r"# 0\.25 256 ([\d.]+)\.\.\.", code).group(1))

    shown = ast.literal_eval(re.search(r"^# (\[[\d., ]+\])$", code, re.M).group(1))
    np.testing.assert_allclose(ast.literal_eval(lines[1]), shown, atol=1.5e-3)

    accuracy, changed = (float(re.search(rf"# ({x}): ", code).group(1)) for x in (r"0\.\d+", r"0\.0\d+"))
    assert abs(float(lines[2]) - accuracy) < 2e-3
    # the class change comes from posterior samples: the same seed, but allow another sampler
    assert abs(float(lines[3]) - changed) < 0.02
