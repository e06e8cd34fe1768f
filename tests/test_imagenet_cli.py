"""`hiergen imagenet ...` and examples/imagenet_fig2.py in reduced size on the digits preset."""

from __future__ import annotations

import importlib.util
import json
import os
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
    (tmp_path / "r2").mkdir()
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


BAD_NUMBERS = [
    ("forward-backward", "--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("forward-backward", "--batch-size", "-4", "--batch-size must be >= 1, got -4"),
    ("forward-backward", "--threads", "-1", "--threads must be >= 1, got -1"),
    ("forward-backward", "--steps", "0", "--steps must be >= 1, got 0"),
    ("forward-backward", "--n-k", "1", "--n-k must be >= 2, got 1"),
    ("forward-backward", "--n-per-class", "0", "--n-per-class must be >= 1, got 0"),
    ("forward-backward", "--seed", "-1", "--seed must be >= 0, got -1"),
    ("forward-backward", "--subset-seed", "-2", "--subset-seed must be >= 0, got -2"),
    ("forward-backward", "--num-shards", "0", "--num-shards must be >= 1, got 0"),
    ("forward-backward", "--shard-index", "-1", "--shard-index must be >= 0, got -1"),
    ("probe", "--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("probe", "--batch-size", "-4", "--batch-size must be >= 1, got -4"),
    ("probe", "--threads", "-1", "--threads must be >= 1, got -1"),
    ("probe", "--num-shards", "0", "--num-shards must be >= 1, got 0"),
    ("probe", "--whitening-eps", "0", "--whitening-eps must be > 0, got 0.0"),
    ("plot", "--n-grid-images", "0", "--n-grid-images must be >= 1, got 0"),
    ("train-digits", "--ddpm-steps", "0", "--ddpm-steps must be >= 1, got 0"),
    ("train-digits", "--classifier-epochs", "-1", "--classifier-epochs must be >= 1, got -1"),
    ("train-digits", "--threads", "0", "--threads must be >= 1, got 0"),
    ("train-digits", "--seed", "-3", "--seed must be >= 0, got -3"),
]


@pytest.mark.parametrize("what,option,value,message", BAD_NUMBERS)
def test_cli_bad_numbers_exit_2(tmp_path, capsys, what, option, value, message):
    code = main(["imagenet", what, "--out", str(tmp_path / "r"), option, value])
    err = capsys.readouterr().err
    assert code == 2 and err == f"hiergen: error: {message}\n"
    assert not (tmp_path / "r").exists()  # refused before anything is written


@pytest.mark.parametrize("what", ["forward-backward", "probe", "plot", "train-digits"])
def test_cli_out_that_is_a_file_or_under_a_file(tmp_path, capsys, what):
    (tmp_path / "file").write_text("x")
    code = main(["imagenet", what, "--out", str(tmp_path / "file")])
    assert code == 2
    assert capsys.readouterr().err == f"hiergen: error: --out {tmp_path / 'file'}: is a file, " \
                                      "not a folder\n"
    assert (tmp_path / "file").read_text() == "x"
    code = main(["imagenet", what, "--out", str(tmp_path / "file" / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"hiergen: error: --out {tmp_path / 'file' / 'sub'}: ")


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only folders")
def test_cli_unwritable_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code = main(["imagenet", "forward-backward", "--out", str(ro)])
    finally:
        ro.chmod(0o700)
    assert code == 2 and "cannot write there" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["forward-backward", "probe"])
def test_cli_bad_device(tmp_path, capsys, what):
    code = main(["imagenet", what, "--out", str(tmp_path), "--device", "foo"])
    assert code == 2
    assert capsys.readouterr().err == "hiergen: error: --device 'foo': not a torch device " \
                                      "(cpu, cuda, cuda:1, mps, ...)\n"
    if not torch.cuda.is_available():
        code = main(["imagenet", what, "--out", str(tmp_path), "--device", "cuda"])
        assert code == 2 and "CUDA is not available" in capsys.readouterr().err
    else:
        n = torch.cuda.device_count()
        code = main(["imagenet", what, "--out", str(tmp_path), "--device", f"cuda:{n}"])
        assert code == 2 and f"only {n} CUDA device(s)" in capsys.readouterr().err


def test_cli_probe_needs_a_run_and_a_plain_name(tmp_path, capsys):
    code = main(["imagenet", "probe", "--out", str(tmp_path / "none")])
    assert code == 2 and "folder not found (run forward-backward first)" in capsys.readouterr().err
    code = main(["imagenet", "probe", "--out", str(tmp_path), "--name", "../up"])
    assert code == 2 and "probe name '../up'" in capsys.readouterr().err
    code = main(["imagenet", "probe", "--out", str(tmp_path)])
    assert code == 2 and "no forward-backward run found" in capsys.readouterr().err


@needs_preset
def test_cli_empty_class_folder_and_classes_file(tmp_path, capsys):
    """Through the CLI: an empty class folder keeps the labels (the probe's top-1 accuracy stays
    high); a classes file fixes the order when folders are missing altogether."""
    from hiergen.imagenet.digits import export_digits_folder

    imgs = export_digits_folder(tmp_path / "imgs", split="test", n_per_class=3, seed=0)
    for f in (imgs / "0").iterdir():
        f.unlink()
    run = tmp_path / "run"
    common = ["--out", str(run), "--threads", "1", "--no-progress", "--batch-size", "27"]
    assert main(["imagenet", "forward-backward", "--images", str(imgs), "--steps", "4",
                 "--ks", "0", *common]) == 0
    assert main(["imagenet", "probe", *common]) == 0
    import xarray as xr

    with xr.open_dataset(run / "probe.nc") as ds:
        assert sorted(set(ds["label"].values.tolist())) == list(range(1, 10))
        assert ds.attrs["top1_accuracy"] >= 0.85  # 27 digits; ~0.1 with shifted labels
    # the empty folder removed entirely: a classes file keeps digit d at label d
    (imgs / "0").rmdir()
    (tmp_path / "classes.txt").write_text("\n".join(str(d) for d in range(10)))
    run2 = tmp_path / "run2"
    assert main(["imagenet", "forward-backward", "--images", str(imgs), "--steps", "4",
                 "--ks", "0", "--classes", str(tmp_path / "classes.txt"), "--out", str(run2),
                 "--no-progress"]) == 0
    labels = {r["class_name"]: r["label"]
              for r in json.loads((run2 / "fb" / "images.json").read_text())}
    assert labels == {str(d): d for d in range(1, 10)}
