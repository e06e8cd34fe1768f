"""DDPM forward-backward: the respaced step against diffusers' DDPMScheduler, k = 0, seeding,
resumability, sharding and checkpoint errors, with tiny random UNets on CPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from hiergen.imagenet.data import read_provenance, save_png, scan_images  # noqa: E402
from hiergen.imagenet.forward_backward import (  # noqa: E402
    RespacedDDPM,
    fb_image_path,
    load_ddpm,
    run_forward_backward,
)
from hiergen.models.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_ddpm(out_channels=1, variance_type="fixed_small", T=100, seed=0, channels=1,
              prediction_type="epsilon"):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=channels, out_channels=out_channels,
                       block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    sch = DDPMScheduler(num_train_timesteps=T, variance_type=variance_type,
                        prediction_type=prediction_type)
    return unet, sch


@pytest.mark.parametrize("variance_type,out_channels,prediction",
                         [("fixed_small", 1, "epsilon"), ("fixed_large", 1, "epsilon"),
                          ("learned_range", 2, "epsilon"), ("fixed_small", 1, "v_prediction"),
                          ("fixed_small", 1, "sample")])
def test_step_matches_diffusers_scheduler(variance_type, out_channels, prediction):
    unet, sch = tiny_ddpm(out_channels, variance_type, prediction_type=prediction)
    s = RespacedDDPM(unet, sch, 10)
    assert s.learned_variance == (out_channels == 2)
    # diffusers' DDPMScheduler with custom timesteps is the respaced chain: an independent oracle
    sch.set_timesteps(timesteps=[int(t) for t in s.schedule.timesteps[::-1]])
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for i in (9, 4, 1, 0):
        out, var = s.model_output(x, i)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        mine, _ = s.step(x, i, out, var, noise)
        t = int(s.schedule.timesteps[i])
        with torch.no_grad():
            raw = unet(x, t).sample
        ref = sch.step(raw, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
        np.testing.assert_allclose(mine.numpy(), ref.numpy(), atol=2e-5)


def test_k0_returns_start_and_seeding():
    unet, sch = tiny_ddpm()
    s = RespacedDDPM(unet, sch, 10)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    assert torch.equal(s.forward_backward(x0, 0, [1, 2, 3, 4]), x0)
    a = s.forward_backward(x0, 5, [1, 2, 3, 4])
    b = s.forward_backward(x0, 5, [1, 2, 3, 4])
    assert torch.equal(a, b) and not torch.allclose(a, x0)
    # each image depends only on its own seed, not on the rest of the batch
    c = s.forward_backward(x0[2:3], 5, [3])
    np.testing.assert_allclose(c[0].numpy(), a[2].numpy(), atol=1e-5)
    # k = N is pure noise: the start image does not matter
    d1 = s.forward_backward(x0, 10, [7] * 4)
    d2 = s.forward_backward(-x0, 10, [7] * 4)
    assert torch.equal(d1, d2)
    # small k stays closer to the start than k = N on average
    assert (s.forward_backward(x0, 1, [9] * 4) - x0).abs().mean() < (d1 - x0).abs().mean()
    with pytest.raises(ConfigError, match="k = 11"):
        s.forward_backward(x0, 11, [0] * 4)
    with pytest.raises(ConfigError, match="2 seeds for a batch of 4"):
        s.forward_backward(x0, 3, [0, 1])


def test_save_load_roundtrip_and_checkpoint_errors(tmp_path):
    unet, sch = tiny_ddpm(out_channels=2, variance_type="learned_range")
    unet.save_pretrained(tmp_path / "m" / "unet")
    sch.save_pretrained(tmp_path / "m" / "scheduler")
    u2, s2 = load_ddpm(tmp_path / "m")
    assert s2.config.variance_type == "learned_range" and u2.config.out_channels == 2
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(u2(x, 3).sample, unet(x, 3).sample, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="nope: DDPM checkpoint folder not found"):
        load_ddpm(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no UNet config"):
        load_ddpm(tmp_path / "empty")
    weights = tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConfigError, match=r"m/unet: cannot load the DDPM checkpoint"):
        load_ddpm(tmp_path / "m")


def _folder(tmp_path, n_per_class=3):
    rng = np.random.default_rng(0)
    for c in range(2):
        for i in range(n_per_class):
            save_png(rng.uniform(-1, 1, (1, 8, 8)).astype(np.float32),
                     tmp_path / "imgs" / str(c) / f"{i}.png")
    return scan_images(tmp_path / "imgs")


def test_run_resumes_and_shards_match_single_run(tmp_path):
    recs = _folder(tmp_path)
    unet, sch = tiny_ddpm()
    s = RespacedDDPM(unet, sch, 6)
    one = tmp_path / "one"
    st = run_forward_backward(s, recs, [3, 6], one, seed=1, batch_size=2, progress=False)
    assert st["images"] == 12 and st["unet_evals"] == 3 * (3 + 6)
    prov = read_provenance(fb_image_path(one, 3, recs[4]))
    assert prov["start_id"] == recs[4].id and prov["k"] == 3 and prov["seed"] == 1
    assert prov["t"] == int(s.schedule.timesteps[2])
    # k = 0 is the start image itself
    from PIL import Image

    k0 = np.asarray(Image.open(fb_image_path(one, 0, recs[0])))
    assert np.array_equal(k0, np.asarray(Image.open(recs[0].path)))
    # resuming recomputes nothing; a lost file is recomputed alone, identically
    again = run_forward_backward(s, recs, [3, 6], one, seed=1, batch_size=2, progress=False)
    assert again["images"] == 0
    lost = fb_image_path(one, 6, recs[1])
    before = lost.read_bytes()
    lost.unlink()
    again = run_forward_backward(s, recs, [3, 6], one, seed=1, batch_size=2, progress=False)
    assert again["images"] == 1 and lost.read_bytes() == before
    # two shards write the same files with the same pixels as one process
    two = tmp_path / "two"
    for i in (1, 0):
        run_forward_backward(s, recs, [3, 6], two, seed=1, batch_size=2, shard_index=i,
                             num_shards=2, progress=False)
    files1 = sorted(p.relative_to(one) for p in (one / "fb").rglob("*.png"))
    files2 = sorted(p.relative_to(two) for p in (two / "fb").rglob("*.png"))
    assert files1 == files2 and len(files1) == 18
    for f in files1:
        a, b = np.asarray(Image.open(one / f)), np.asarray(Image.open(two / f))
        assert np.array_equal(a, b), f
    # a different setting in the same run folder is refused
    with pytest.raises(ConfigError, match="n_steps"):
        run_forward_backward(RespacedDDPM(unet, sch, 5), recs, [3], one, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_autocast_close_to_float32(dtype):
    unet, sch = tiny_ddpm()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    ref = RespacedDDPM(unet, sch, 10).forward_backward(x0, 4, [1, 2, 3, 4])
    s = RespacedDDPM(unet.cuda(), sch, 10, dtype=getattr(torch, dtype))
    out = s.forward_backward(x0, 4, [1, 2, 3, 4]).cpu()
    # same CPU-drawn noise on both devices: only the UNet precision differs
    assert (out - ref).abs().max() < 0.1


def test_run_folder_grows_to_union_of_images_and_ks(tmp_path):
    import json

    recs = _folder(tmp_path)
    unet, sch = tiny_ddpm()
    s = RespacedDDPM(unet, sch, 6)
    run = tmp_path / "run"
    run_forward_backward(s, recs[:2], [3], run, batch_size=2, progress=False)
    st = run_forward_backward(s, recs[2:4], [6], run, batch_size=2, progress=False)
    # the new images at k = 0, 3, 6 and the old ones at k = 6
    assert st["images"] == 2 * 2 + 2
    assert json.loads((run / "fb" / "meta.json").read_text())["ks"] == [0, 3, 6]
    assert len(json.loads((run / "fb" / "images.json").read_text())) == 4
    assert len(list((run / "fb").rglob("*.png"))) == 4 * 3


def test_interrupted_run_keeps_finished_batches(tmp_path):
    recs = _folder(tmp_path)
    unet, sch = tiny_ddpm()
    s = RespacedDDPM(unet, sch, 6)
    real, calls = s.forward_backward, []

    def flaky(x0, k, seeds):
        calls.append(k)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(x0, k, seeds)

    s.forward_backward = flaky
    with pytest.raises(KeyboardInterrupt):
        run_forward_backward(s, recs, [4], tmp_path / "run", batch_size=2, progress=False)
    kept = sorted((tmp_path / "run" / "fb").rglob("*.png"))
    # k = 0 comes first: two finished batches of 2 kept, no partial or temporary files
    assert len(kept) == 4 and {p.parent.name for p in kept} == {"k0000"}
    assert not list((tmp_path / "run" / "fb").rglob("*.tmp"))
    s.forward_backward = real
    st = run_forward_backward(s, recs, [4], tmp_path / "run", batch_size=2, progress=False)
    assert st["images"] == 6  # the k = 4 outputs (k = 0 copies are not counted)
    assert len(list((tmp_path / "run" / "fb").rglob("*.png"))) == 12
