"""Classifier probing: hook coverage, whitening with stored statistics, similarity metrics,
classifier loading errors, and a whole probe run on a tiny forward-backward run."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import save_test_classifier

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from hiergen.imagenet.probe import (  # noqa: E402
    ActivationRecorder,
    Whitening,
    hook_points,
    load_classifier,
    similarity,
)
from hiergen.models.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_hooks_cover_every_convnext_block():
    from timm.models.convnext import ConvNeXtBlock

    model = timm.create_model("convnext_atto", pretrained=False)
    points = hook_points(model)
    hooked = {id(m) for _, m in points}
    blocks = [m for m in model.modules() if isinstance(m, ConvNeXtBlock)]
    assert len(blocks) == 12 and all(id(b) in hooked for b in blocks)
    downs = [s.downsample for s in model.stages if not isinstance(s.downsample, torch.nn.Identity)]
    assert len(downs) == 3 and all(id(d) in hooked for d in downs)
    names = [n for n, _ in points]
    assert names[0] == "stem" and names[-1] == "head" and len(names) == 1 + 12 + 3 + 1
    # in forward order: every hook fires once, the head's output is the logits
    rec = ActivationRecorder(model, points)
    logits, acts = rec.forward(torch.randn(2, 3, 64, 64))
    assert list(acts) == names
    torch.testing.assert_close(acts["head"], logits)
    rec.close()


@pytest.mark.slow
def test_convnext_base_has_the_papers_41_hooks(tmp_path):
    """A random convnext_base (no download) saved to a local file: the probe's loader takes it as
    ``--checkpoint`` and hooks the paper's 41 modules (stem, 36 blocks, 3 downsamplings, head)."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_base", pretrained=False)
    points = hook_points(model)
    assert len(points) == 41
    names = [n for n, _ in points]
    assert names[0] == "stem" and names[-1] == "head"
    assert sum(".blocks." in n for n in names) == 3 + 3 + 27 + 3
    torch.save(model.state_dict(), tmp_path / "convnext_base.pth")
    clf = load_classifier("convnext_base", pretrained=False,
                          checkpoint=tmp_path / "convnext_base.pth")
    assert [n for n, _ in hook_points(clf.model)] == names
    assert clf.input_size == 224 and clf.num_classes == 1000
    from hiergen.imagenet.settings import state_dict_fingerprint

    assert clf.fingerprint == state_dict_fingerprint(model.state_dict())
    other = timm.create_model("convnext_base", pretrained=False)  # other random weights
    assert state_dict_fingerprint(other.state_dict()) != clf.fingerprint


def test_hooks_resnet_and_explicit_names():
    model = timm.create_model("resnet10t", pretrained=False)
    names = [n for n, _ in hook_points(model)]
    assert names[0] == "conv1" and names[-1] == "fc" and "layer4.0" in names
    assert [n for n, _ in hook_points(model, ["layer1", "fc"])] == ["layer1", "fc"]
    with pytest.raises(ConfigError, match="not found"):
        hook_points(model, ["nope"])


def test_whitening_uses_stored_statistics(tmp_path):
    g = torch.Generator().manual_seed(0)
    start = {"conv": torch.randn(50, 3, 4, 4, generator=g) * torch.tensor([1.0, 2.0, 5.0]).view(
        1, 3, 1, 1) + torch.tensor([0.0, 1.0, -3.0]).view(1, 3, 1, 1),
        "logits": torch.randn(50, 7, generator=g) * 3 + 1}
    w = Whitening()
    w.update({k: v[:20] for k, v in start.items()})
    w.update({k: v[20:] for k, v in start.items()})
    w.finalize()
    np.testing.assert_allclose(w.mean["conv"], start["conv"].mean((0, 2, 3)).numpy(), atol=1e-5)
    np.testing.assert_allclose(w.std["conv"], start["conv"].std((0, 2, 3), unbiased=False).numpy(),
                               rtol=1e-4)
    w.save(tmp_path / "w.safetensors")
    w2 = Whitening.load(tmp_path / "w.safetensors")
    z = w2.apply("conv", start["conv"])
    np.testing.assert_allclose(z.mean((0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(z.std((0, 2, 3), unbiased=False).numpy(), 1, rtol=1e-4)
    # another batch is whitened with the *stored* start statistics, not its own
    shifted = start["logits"][:5] + 6.0
    zs = w2.apply("logits", shifted)
    np.testing.assert_allclose(zs.numpy(), ((shifted.numpy() - w.mean["logits"]) /
                                            w.std["logits"]), rtol=1e-5)
    assert zs.mean() > 1.0
    with pytest.raises(ConfigError, match="no whitening statistics for layer 'x'"):
        w2.apply("x", shifted)
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="bad.safetensors"):
        Whitening.load(tmp_path / "bad.safetensors")


def test_similarity_metrics():
    a = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    m = similarity(a, a.clone())
    np.testing.assert_allclose(m["cosine"], 1.0, atol=1e-12)
    np.testing.assert_allclose(m["l2"], 0.0, atol=1e-12)
    b = -a
    np.testing.assert_allclose(similarity(a, b)["cosine"], -1.0, atol=1e-12)
    np.testing.assert_allclose(similarity(a, b)["nl2"], 2.0, atol=1e-12)
    u, v = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    m = similarity(u, v)
    assert m["cosine"][0] == pytest.approx(24 / 25)
    assert m["l2"][0] == pytest.approx(np.sqrt(2))
    assert m["nl2"][0] == pytest.approx(np.sqrt(2) / 5)


def _save_classifier(folder, spec):
    return save_test_classifier(folder, spec, seed=0)


SPEC = {"timm_class": "timm.models.convnext.ConvNeXt",
        "kwargs": {"in_chans": 1, "num_classes": 3, "depths": [1, 1, 1, 1], "dims": [4, 8, 8, 8],
                   "patch_size": 1, "kernel_sizes": 3}}


def test_classifier_folder_roundtrip_and_errors(tmp_path):
    model = _save_classifier(tmp_path / "clf", SPEC)
    clf = load_classifier(tmp_path / "clf")
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(clf.model(clf.preprocess(x)), model.eval()(x))
    with pytest.raises(ConfigError, match="nope: classifier folder not found"):
        load_classifier(tmp_path / "nope")
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(ConfigError, match="classifier config not found"):
        load_classifier(tmp_path / "nocfg")
    (tmp_path / "clf" / "model.safetensors").write_bytes(b"\x01\x02junk")
    with pytest.raises(ConfigError, match=r"clf/model.safetensors: corrupt"):
        load_classifier(tmp_path / "clf")
    other = dict(SPEC, kwargs=dict(SPEC["kwargs"], num_classes=5))
    _save_classifier(tmp_path / "clf5", other)
    (tmp_path / "clf5" / "classifier.json").write_text(
        (tmp_path / "clf" / "classifier.json").read_text())
    with pytest.raises(ConfigError, match="does not match the model"):
        load_classifier(tmp_path / "clf5")
    with pytest.raises(ConfigError, match="neither a classifier folder nor a timm model"):
        load_classifier("no_such_net", pretrained=False)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        load_classifier("resnet10t", pretrained=False, checkpoint=tmp_path / "none.pth")


def test_probe_run_on_tiny_forward_backward(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    from hiergen.imagenet.data import save_png, scan_images
    from hiergen.imagenet.forward_backward import RespacedDDPM, run_forward_backward
    from hiergen.imagenet.probe import merge_probe, run_probe

    rng = np.random.default_rng(0)
    for c in range(3):
        for i in range(3):
            save_png(rng.uniform(-1, 1, (1, 8, 8)).astype(np.float32),
                     tmp_path / "imgs" / str(c) / f"{i}.png")
    recs = scan_images(tmp_path / "imgs")
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    s = RespacedDDPM(unet, DDPMScheduler(num_train_timesteps=50), 5)
    run = tmp_path / "run"
    run_forward_backward(s, recs, [2, 5], run, batch_size=4, progress=False)
    _save_classifier(tmp_path / "clf", SPEC)
    clf = load_classifier(tmp_path / "clf")
    # two shards, the second one first: the merge happens when the last part lands
    st1 = run_probe(run, clf, batch_size=4, shard_index=1, num_shards=2, progress=False)
    assert st1["images"] == 4 * 3 and not (run / "probe.nc").exists()
    st0 = run_probe(run, clf, batch_size=4, shard_index=0, num_shards=2, progress=False)
    assert st0["images"] == 5 * 3
    ds = merge_probe(run)
    assert dict(ds.sizes) == {"k": 3, "image": 9, "layer": 1 + 4 + 3 + 1, "class": 3}
    # k = 0 compares the start image with itself
    np.testing.assert_allclose(ds["cosine"].sel(k=0).values, 1.0, atol=1e-6)
    assert float(ds["class_change"].sel(k=0).sum()) == 0
    assert np.all(ds["cosine"].sel(k=5).values < 1.0 - 1e-4)
    assert ds.attrs["top1_accuracy"] == pytest.approx(float((ds["top1_start"] ==
                                                             ds["label"]).mean()))
    assert ds.attrs["top5_accuracy"] == 1.0  # 3 classes: the top-5 always holds the label
    # resuming does nothing; the stored whitening statistics are reused
    assert run_probe(run, clf, batch_size=4, progress=False)["images"] == 0
    with pytest.raises(ConfigError, match="chunk_size: stored 4, now 3"):
        run_probe(run, clf, batch_size=3, progress=False)
    with pytest.raises(ConfigError, match="no forward-backward run"):
        run_probe(tmp_path / "elsewhere", clf, progress=False)
