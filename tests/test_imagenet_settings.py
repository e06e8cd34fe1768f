"""Run-folder caches keyed on settings: weight fingerprints, forward-backward and probe settings
refused when they differ, labels independent of empty class folders (digits preset), settings
recorded in probe.nc, and two processes on one run folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import save_test_classifier

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("timm")

from hiergen.imagenet.data import save_png, scan_images  # noqa: E402
from hiergen.imagenet.digits import (  # noqa: E402
    export_digits_folder,
    have_preset,
    resolve_preset,
)
from hiergen.imagenet.forward_backward import RespacedDDPM, run_forward_backward  # noqa: E402
from hiergen.imagenet.probe import load_classifier, merge_probe, run_probe  # noqa: E402
from hiergen.imagenet.settings import record_settings, state_dict_fingerprint  # noqa: E402
from hiergen.models.errors import ConfigError  # noqa: E402

needs_preset = pytest.mark.skipif(not have_preset(), reason="digits preset weights not shipped")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_state_dict_fingerprint_sees_every_byte():
    g = torch.Generator().manual_seed(0)
    sd = {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.zeros(3),
          "n": torch.tensor(5), "h": torch.randn(2, generator=g).to(torch.bfloat16)}
    fp = state_dict_fingerprint(sd)
    assert fp == state_dict_fingerprint({k: v.clone() for k, v in reversed(sd.items())})
    changed = dict(sd, **{"a.bias": torch.tensor([0.0, 0.0, 1e-30])})
    assert state_dict_fingerprint(changed) != fp
    renamed = {("b.bias" if k == "a.bias" else k): v for k, v in sd.items()}
    assert state_dict_fingerprint(renamed) != fp
    # same bytes, other dtype or shape: different
    assert state_dict_fingerprint(dict(sd, **{"a.weight": sd["a.weight"].view(4, 3)})) != fp
    assert state_dict_fingerprint(dict(sd, **{"a.weight": sd["a.weight"].view(torch.int32)})) != fp


def test_record_settings_refuses_and_names_every_difference(tmp_path):
    path = tmp_path / "cfg.json"
    s = {"weights": "aa", "eps": 1e-6, "hooks": ("stem", "head"), "name": "x"}
    assert record_settings(path, s, "things", "hint", compare=("weights", "eps", "hooks")) == {
        "weights": "aa", "eps": 1e-6, "hooks": ["stem", "head"], "name": "x"}
    record_settings(path, dict(s, name="y"), "things", "hint", compare=("weights", "eps", "hooks"))
    with pytest.raises(ConfigError) as err:
        record_settings(path, dict(s, weights="bb", eps=1e-5), "things", "use another folder")
    msg = str(err.value)
    assert 'weights: stored "aa", now "bb"' in msg and "eps: stored 1e-06, now 1e-05" in msg
    assert "hooks" not in msg and msg.endswith("use another folder")
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="corrupt settings file"):
        record_settings(path, s, "things", "hint")


def _tiny_unet(seed):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    return unet, DDPMScheduler(num_train_timesteps=50)


def _images(root, n_classes=2, n=2):
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        for i in range(n):
            save_png(rng.uniform(-1, 1, (1, 8, 8)).astype(np.float32), root / str(c) / f"{i}.png")
    return scan_images(root)


def test_forward_backward_refuses_other_weights_dtype_device_and_start_files(tmp_path):
    recs = _images(tmp_path / "imgs")
    unet, sch = _tiny_unet(0)
    s = RespacedDDPM(unet, sch, 5)
    run = tmp_path / "run"
    run_forward_backward(s, recs, [3], run, batch_size=4, progress=False)
    meta = json.loads((run / "fb" / "meta.json").read_text())
    assert meta["ddpm_fingerprint"] == s.fingerprint and meta["dtype"] == "float32"
    assert meta["device_kind"] == "cpu"
    # the same weights loaded again: same fingerprint, resumes (nothing recomputed)
    assert RespacedDDPM(*_tiny_unet(0), 5).fingerprint == s.fingerprint
    assert run_forward_backward(RespacedDDPM(*_tiny_unet(0), 5), recs, [3], run,
                                progress=False)["images"] == 0
    # same architecture, other weights: refused, the stored PNGs are not reused
    other = RespacedDDPM(*_tiny_unet(1), 5)
    with pytest.raises(ConfigError, match="ddpm_fingerprint: stored"):
        run_forward_backward(other, recs, [3], run, progress=False)
    with pytest.raises(ConfigError, match=r'dtype: stored "float32", now "float16"'):
        run_forward_backward(RespacedDDPM(unet, sch, 5, dtype=torch.float16), recs, [3], run,
                             progress=False)
    assert meta["autocast_off_cuda"] is None  # float32: no autocast anywhere
    moved = RespacedDDPM(unet, sch, 5)
    moved.device = torch.device("cuda")  # what a CUDA run records; refused before any compute
    with pytest.raises(ConfigError, match=r'device_kind: stored "cpu", now "cuda"'):
        run_forward_backward(moved, recs, [3], run, progress=False)
    # the same image ids from another folder: refused
    others = _images(tmp_path / "imgs2")
    with pytest.raises(ConfigError, match="was generated from"):
        run_forward_backward(s, others, [3], run, progress=False)
    # in its own folder the other weights give other images
    run_forward_backward(other, recs, [3], tmp_path / "run2", progress=False)
    a = (run / "fb" / "k0003" / "0__0.png").read_bytes()
    assert a != (tmp_path / "run2" / "fb" / "k0003" / "0__0.png").read_bytes()
    for bad in (0, -4):
        with pytest.raises(ConfigError, match=f"batch size must be >= 1, got {bad}"):
            run_forward_backward(s, recs, [3], run, batch_size=bad, progress=False)


def test_cpu_bfloat16_folder_of_an_autocast_less_release_is_refused(tmp_path):
    """Before CPU autocast, a CPU run with dtype bfloat16 recorded bfloat16 but computed float32
    images; its meta.json lacks ``autocast_off_cuda`` and must not be resumed."""
    recs = _images(tmp_path / "imgs")
    unet, sch = _tiny_unet(0)
    bf16 = RespacedDDPM(unet, sch, 5, dtype=torch.bfloat16)
    run = tmp_path / "run"
    run_forward_backward(bf16, recs, [3], run, batch_size=4, progress=False)
    meta_path = run / "fb" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["dtype"] == "bfloat16" and meta["autocast_off_cuda"] is True
    del meta["autocast_off_cuda"]  # what the earlier release wrote
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"autocast_off_cuda: stored null, now true"):
        run_forward_backward(bf16, recs, [3], run, progress=False)


def _shuffled_head(src: Path, dst: Path, a: int, b: int) -> None:
    """A copy of a classifier folder whose head rows (classes) ``a`` and ``b`` are swapped: the
    same architecture, other weights, and predictions a <-> b exchanged."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    shutil.copy(src / "classifier.json", dst / "classifier.json")
    sd = load_file(str(src / "model.safetensors"))
    for key in ("head.fc.weight", "head.fc.bias"):
        t = sd[key].clone()
        t[[a, b]] = t[[b, a]]
        sd[key] = t
    save_file(sd, str(dst / "model.safetensors"))


@needs_preset
def test_digits_empty_class_folder_and_swapped_classifier(tmp_path):
    """Labels come from folder names whatever folders are empty (accuracy stays ~0.98); another
    classifier of the same architecture is never served from the first one's cache."""
    folder = export_digits_folder(tmp_path / "imgs", split="test", n_per_class=8, seed=0)
    for f in (folder / "3").iterdir():
        f.unlink()
    recs = scan_images(folder)
    assert {r.class_name: r.label for r in recs} == {str(c): c for c in range(10) if c != 3}
    from hiergen.imagenet.forward_backward import load_ddpm

    sampler = RespacedDDPM(*load_ddpm(resolve_preset("digits", "ddpm")), 10)
    run = tmp_path / "run"
    run_forward_backward(sampler, recs, [], run, batch_size=72, progress=False)  # k = 0 only
    clf_dir = Path(resolve_preset("digits", "classifier"))
    clf = load_classifier(clf_dir)
    run_probe(run, clf, batch_size=72, progress=False)
    ds = merge_probe(run)
    # oracle: the digits' own targets (folder name = digit)
    assert ds.attrs["top1_accuracy"] >= 0.9  # 0.22 when labels shifted past the empty folder
    assert ds.attrs["classifier_weights"] == clf.fingerprint
    assert ds.attrs["whitening_eps"] == 1e-6 and ds.attrs["device_kind"] == "cpu"
    assert ds.attrs["dtype"] == "float32" and ds.attrs["ddpm_fingerprint"] == sampler.fingerprint
    assert json.loads(ds.attrs["probe_settings"])["hooks"] == list(ds["layer"].values)
    # same architecture, classes 0 and 1 swapped in the head
    _shuffled_head(clf_dir, tmp_path / "swapped", 0, 1)
    swapped = load_classifier(tmp_path / "swapped")
    assert swapped.fingerprint != clf.fingerprint
    with pytest.raises(ConfigError, match="classifier_weights: stored"):
        run_probe(run, swapped, batch_size=72, progress=False)
    st = run_probe(run, swapped, batch_size=72, progress=False, name="swapped")
    assert st["images"] == len(recs)  # recomputed, not reused
    ds2 = merge_probe(run, name="swapped")
    assert (run / "swapped.nc").is_file() and (run / "probe.nc").is_file()
    top1, top1_swapped = ds["top1_start"].values, ds2["top1_start"].values
    np.testing.assert_array_equal(top1_swapped,
                                  np.where(top1 == 0, 1, np.where(top1 == 1, 0, top1)))
    n01 = np.isin(ds["label"].values, [0, 1]).mean()
    assert ds2.attrs["top1_accuracy"] == pytest.approx(ds.attrs["top1_accuracy"] - n01,
                                                        abs=0.03)


SPEC = {"timm_class": "timm.models.convnext.ConvNeXt",
        "kwargs": {"in_chans": 1, "num_classes": 3, "depths": [1, 1, 1, 1], "dims": [4, 8, 8, 8],
                   "patch_size": 1, "kernel_sizes": 3}}


def _classifier(folder: Path, seed: int):
    save_test_classifier(folder, SPEC, seed=seed)
    return load_classifier(folder)


@pytest.fixture
def tiny_run(tmp_path):
    recs = _images(tmp_path / "imgs", n_classes=3, n=2)
    run = tmp_path / "run"
    run_forward_backward(RespacedDDPM(*_tiny_unet(0), 4), recs, [2], run, batch_size=3,
                         progress=False)
    return run


def test_probe_refuses_other_settings(tmp_path, tiny_run):
    clf = _classifier(tmp_path / "a", 0)
    first = run_probe(tiny_run, clf, batch_size=3, progress=False)
    assert first["images"] == 6 * 2
    ds = merge_probe(tiny_run)
    cases = [
        (dict(whitening_eps=1e-3), "whitening_eps: stored 1e-06, now 0.001"),
        (dict(hook_names=["stem", "head"]), "hooks: stored"),
        (dict(device="meta"), 'device_kind: stored "cpu", now "meta"'),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            run_probe(tiny_run, clf, batch_size=3, progress=False, **kwargs)
    clf.model.double()  # a float64 classifier: other numbers, refused
    clf._fingerprint = None
    with pytest.raises(ConfigError, match='dtype: stored "float32", now "float64"'):
        run_probe(tiny_run, clf, batch_size=3, progress=False)
    # the same weights from another folder (another name) resume: nothing recomputed
    shutil.copytree(tmp_path / "a", tmp_path / "a_copy")
    same = load_classifier(tmp_path / "a_copy")
    assert run_probe(tiny_run, same, batch_size=3, progress=False)["images"] == 0
    # other weights under another probe name: recomputed, other numbers
    other = _classifier(tmp_path / "b", 1)
    assert run_probe(tiny_run, other, batch_size=3, progress=False, name="b")["images"] == 12
    ds_b = merge_probe(tiny_run, name="b")
    assert not np.allclose(ds_b["logits"].values, ds["logits"].values)
    assert ds_b.attrs["classifier_weights"] == other.fingerprint != clf.fingerprint
    # a grown image list changes the chunks: refused, never mixed
    more = _images(tmp_path / "imgs", n_classes=4, n=2)
    run_forward_backward(RespacedDDPM(*_tiny_unet(0), 4), more, [2], tiny_run, batch_size=3,
                         progress=False)
    with pytest.raises(ConfigError, match="n_images: stored 6, now 8"):
        run_probe(tiny_run, same, batch_size=3, progress=False)
    # an older probe folder (layers.json, no settings record) is not trusted
    old = tiny_run / "old"
    (old / "parts").mkdir(parents=True)
    (old / "layers.json").write_text("{}")
    with pytest.raises(ConfigError, match="older hiergen without a settings record"):
        run_probe(tiny_run, same, batch_size=3, progress=False, name="old")
    for bad in ("", "../x", "fb", "a/b"):
        with pytest.raises(ConfigError, match="probe name"):
            run_probe(tiny_run, same, progress=False, name=bad)
    for bad in (0, -4):
        with pytest.raises(ConfigError, match="batch size must be >= 1"):
            run_probe(tiny_run, same, batch_size=bad, progress=False)


def test_probe_takes_labels_from_the_run(tmp_path, tiny_run):
    """A corrected label (e.g. after fixing a class list) needs no re-probing."""
    clf = _classifier(tmp_path / "a", 0)
    run_probe(tiny_run, clf, batch_size=3, progress=False)
    images = tiny_run / "fb" / "images.json"
    recs = json.loads(images.read_text())
    for r in recs:
        r["label"] = 2 - r["label"]
    images.write_text(json.dumps(recs))
    ds = merge_probe(tiny_run)
    assert {str(i): int(v) for i, v in zip(ds["image"].values, ds["label"].values)} == {
        r["id"]: r["label"] for r in recs}


def _hiergen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hiergen", "imagenet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


@pytest.mark.slow
def test_two_processes_on_one_run_folder(tmp_path):
    """Two processes forward-backward and probe the same folder at once: the files equal a
    single process's; two probes with different weights under one name: one is refused."""
    recs = _images(tmp_path / "imgs", n_classes=3, n=3)
    unet, sch = _tiny_unet(0)
    unet.save_pretrained(tmp_path / "ddpm" / "unet")
    sch.save_pretrained(tmp_path / "ddpm" / "scheduler")
    _classifier(tmp_path / "a", 0)
    _classifier(tmp_path / "b", 1)
    ref = tmp_path / "ref"
    run_forward_backward(RespacedDDPM(unet, sch, 4), recs, [2, 4], ref, batch_size=2,
                         progress=False)
    run_probe(ref, load_classifier(tmp_path / "a"), batch_size=2, progress=False)
    run = tmp_path / "run"
    common = ["--out", str(run), "--threads", "1", "--no-progress", "--batch-size", "2"]
    fb = ["forward-backward", "--ddpm", str(tmp_path / "ddpm"), "--images", str(tmp_path / "imgs"),
          "--steps", "4", "--ks", "2,4", *common]
    procs = [_hiergen(*fb) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    files = sorted(p.relative_to(ref) for p in (ref / "fb").rglob("*.png"))
    assert files == sorted(p.relative_to(run) for p in (run / "fb").rglob("*.png"))
    for f in files:
        np.testing.assert_array_equal(_pixels(run / f), _pixels(ref / f))
    procs = [_hiergen("probe", "--classifier", str(tmp_path / "a"), *common) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    import xarray as xr

    with xr.open_dataset(run / "probe.nc") as got, xr.open_dataset(ref / "probe.nc") as want:
        for var in ("cosine", "nl2", "logits", "label"):
            np.testing.assert_allclose(got[var].values, want[var].values, rtol=1e-6, atol=1e-6)
    assert not list(run.rglob("*.tmp"))
    procs = [_hiergen("probe", "--classifier", str(tmp_path / c), "--name", "ab", *common)
             for c in ("a", "b")]
    codes = [p.wait(timeout=300) for p in procs]
    errs = [p.stderr.read() for p in procs]
    assert sorted(codes) == [0, 2], errs
    loser = errs[codes.index(2)]
    assert loser.startswith("hiergen: error: ") and "classifier_weights: stored" in loser
    assert "Traceback" not in loser


def test_probe_fingerprint_of_runs_without_autocast_key_is_unchanged():
    """A float32 run's probe keeps the settings fingerprint of the release before
    ``autocast_off_cuda`` existed (its probes are not refused after an upgrade); a CPU
    bfloat16 run's differs."""
    from hiergen.imagenet.probe import _fb_settings
    from hiergen.imagenet.settings import json_fingerprint

    before = ("n_steps", "seed", "image_size", "channels", "timesteps", "variance_type",
              "prediction_type", "ddpm_fingerprint", "dtype", "device_kind")
    meta = {k: f"value of {k}" for k in before}
    assert json_fingerprint(_fb_settings(meta)) == json_fingerprint(meta)
    assert json_fingerprint(_fb_settings({**meta, "autocast_off_cuda": None})) == json_fingerprint(meta)
    assert json_fingerprint(_fb_settings({**meta, "autocast_off_cuda": True})) != json_fingerprint(meta)
