"""`hiergen imagenet ...` and examples/imagenet_fig2.py in reduced size on the digits preset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("timm")

from hiergen.cli import main  # noqa: E402
from hiergen.imagenet.digits import have_preset  # noqa: E402

needs_preset = pytest.mark.skipif(not have_preset(),
                                  reason="digits preset weights not shipped")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "imagenet_fig2.py"


@needs_preset
def test_cli_forward_backward_probe_plot(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--out", str(run), "--threads", "1", "--no-progress", "--batch-size", "10"]
    assert main(["imagenet", "forward-backward", "--n-per-class", "1", "--steps", "10",
                 "--ks", "5,10", *common]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["forward_backward"]["images"] == 20 and out["ks"] == [5, 10]
    assert len(list((run / "fb").rglob("*.png"))) == 30
    assert main(["imagenet", "probe", *common]) == 0
    assert (run / "probe.nc").is_file()
    assert main(["imagenet", "plot", "--out", str(run)]) == 0
    assert (run / "fig2.png").stat().st_size > 1000
    # resuming: nothing recomputed
    capsys.readouterr()
    assert main(["imagenet", "forward-backward", "--n-per-class", "1", "--steps", "10",
                 "--ks", "5,10", *common]) == 0
    assert json.loads(capsys.readouterr().out.strip())["forward_backward"]["images"] == 0


def test_cli_errors_name_the_path(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["imagenet", "forward-backward", "--images", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "empty: no images found" in capsys.readouterr().err
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "x.png").write_bytes(b"png?")
    code = main(["imagenet", "forward-backward", "--images", str(tmp_path / "imgs"),
                 "--ddpm", str(tmp_path / "missing"), "--out", str(tmp_path / "r"),
                 "--no-progress"])
    assert code == 2 and "missing: DDPM checkpoint folder not found" in capsys.readouterr().err
    code = main(["imagenet", "probe", "--out", str(tmp_path / "r2"), "--no-progress",
                 "--classifier", str(tmp_path / "noclf")])
    assert code == 2 and "noclf: classifier folder not found" in capsys.readouterr().err


@needs_preset
def test_example_runs_reduced(tmp_path):
    spec = importlib.util.spec_from_file_location("imagenet_fig2", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--out", str(tmp_path), "--n-per-class", "1", "--steps", "10", "--n-k", "3",
                     "--no-progress"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ks"] == [0, 5, 10] and summary["class_change"][0] == 0.0
    assert (tmp_path / "fig2.png").is_file() and (tmp_path / "probe.nc").is_file()
