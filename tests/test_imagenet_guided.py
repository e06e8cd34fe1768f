"""guided-diffusion checkpoints in hiergen: the converted diffusers UNet and the respaced chain
against OpenAI's reference code (the ``guided-diffusion-sdk`` package), conversion errors, and
the converted model through ``hiergen imagenet convert / forward-backward / probe``."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from hiergen.imagenet.guided import (  # noqa: E402
    PRESETS,
    convert_guided_diffusion,
    resolve_flags,
    unet_kwargs,
)
from hiergen.models.errors import ConfigError  # noqa: E402

try:
    import guided_diffusion.gaussian_diffusion as gd
    from guided_diffusion.script_util import create_gaussian_diffusion, create_model
except ImportError:  # the reference code is a test-only dependency
    gd = None

needs_reference = pytest.mark.skipif(
    gd is None, reason="guided_diffusion not importable: pip install guided-diffusion-sdk "
                       "blobfile (the `test` extra)")

MODEL_FLAGS = ("image_size num_channels num_res_blocks channel_mult learn_sigma class_cond "
               "use_checkpoint attention_resolutions num_heads num_head_channels "
               "num_heads_upsample use_scale_shift_norm dropout resblock_updown use_fp16 "
               "use_new_attention_order").split()

#: small models covering every flag of the released checkpoints (32 channels, 32x32 images)
SMALL = {
    # the 256x256 models: learned sigma, resblock up/down, scale-shift norm, 2 attention
    # levels + middle, 64-channel heads (here 16: 2 and 4 heads per layer)
    "uncond_256_like": dict(image_size=32, num_channels=32, channel_mult="1,1,2",
                            attention_resolutions="16,8", num_head_channels=16,
                            num_res_blocks=1, resblock_updown=True,
                            use_scale_shift_norm=True, learn_sigma=True),
    # the 64x64 model: class-conditional, new attention order, cosine schedule, 3 res blocks
    "cond_64_like": dict(image_size=32, num_channels=32, channel_mult="1,2",
                         attention_resolutions="16", class_cond=True, num_head_channels=16,
                         use_new_attention_order=True, num_res_blocks=3, resblock_updown=True,
                         learn_sigma=True, noise_schedule="cosine", dropout=0.1),
    # the other branches: conv down/up-sampling, additive time embedding, fixed num_heads,
    # fixed variance, 1x1 skip convs
    "plain": dict(image_size=32, num_channels=32, channel_mult="1,2",
                  attention_resolutions="16", num_heads=2, num_res_blocks=1,
                  resblock_updown=False, use_scale_shift_norm=False, learn_sigma=False),
}


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def reference_model(flags: dict, seed: int = 0):
    """guided-diffusion's ``create_model`` with every parameter perturbed (its zero-initialised
    output convs would otherwise hide half of the mapping)."""
    torch.manual_seed(seed)
    model = create_model(**{k: flags[k] for k in MODEL_FLAGS})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@needs_reference
@pytest.mark.parametrize("name", sorted(SMALL))
def test_converted_unet_equals_reference(name):
    flags = resolve_flags(SMALL[name])
    ref = reference_model(flags)
    unet, sched = convert_guided_diffusion(ref.state_dict(), flags)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 32, 32, generator=g)
    t = torch.tensor([0, 417, 999])
    y = torch.tensor([0, 7, 999]) if flags["class_cond"] else None
    with torch.no_grad():
        want = ref(x, t, y=y)
        got = unet(x, t, class_labels=y).sample
    assert got.shape == want.shape == (3, 6 if flags["learn_sigma"] else 3, 32, 32)
    assert float(want.abs().max()) > 0.5  # a non-trivial output
    assert float((got - want).abs().max()) <= 1e-4
    # the scheduler: guided-diffusion's betas (float32 in diffusers) and variance type
    diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=flags["learn_sigma"],
                                          noise_schedule=flags["noise_schedule"])
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), diffusion.alphas_cumprod,
                               rtol=2e-5)
    assert sched.config.variance_type == ("learned_range" if flags["learn_sigma"]
                                          else "fixed_large")


@needs_reference
def test_attention_order_and_timestep_matter():
    """The oracle is sensitive: the wrong q/k/v order or a wrong timestep changes the output."""
    flags = resolve_flags(SMALL["uncond_256_like"])
    ref = reference_model(flags)
    wrong, _ = convert_guided_diffusion(ref.state_dict(), flags,
                                        overrides={"use_new_attention_order": True})
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.tensor(
        [10, 900])
    with torch.no_grad():
        want = ref(x, t)
        assert float((wrong(x, t).sample - want).abs().max()) > 1e-2
        right, _ = convert_guided_diffusion(ref.state_dict(), flags)
        assert float((right(x, t + 1).sample - want).abs().max()) > 1e-4


def _same_noise_chain(flags: dict, n_steps: int, k: int, seeds, monkeypatch):
    """hiergen's forward-backward and guided-diffusion's sampler from the same x_t with the same
    noise: returns (hiergen output, reference output, hiergen sampler)."""
    from hiergen.imagenet.forward_backward import RespacedDDPM

    ref = reference_model(flags)
    unet, sched = convert_guided_diffusion(ref.state_dict(), flags)
    sampler = RespacedDDPM(unet, sched, n_steps)
    diffusion = create_gaussian_diffusion(
        steps=flags["diffusion_steps"], learn_sigma=flags["learn_sigma"],
        noise_schedule=flags["noise_schedule"], timestep_respacing=str(n_steps))
    assert np.array_equal(sorted(diffusion.timestep_map), sampler.schedule.timesteps)
    size, b = flags["image_size"], len(seeds)
    x0 = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(9)) * 2 - 1
    mine = sampler.forward_backward(x0, k, seeds)
    # hiergen's draws: per image generator, the noising draw then one per step i = k-1 .. 1
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    draws = [torch.stack([torch.randn((3, size, size), generator=g) for g in gens])
             for _ in range(k)]
    eps, steps = draws[0], draws[1:]
    monkeypatch.setattr(gd.th, "randn_like",
                        lambda x, *a, **kw: steps.pop(0) if steps else torch.zeros_like(x))
    with torch.no_grad():
        if k == n_steps:  # the reference sampling loop, from pure noise x_T = eps
            ref_out = diffusion.p_sample_loop(ref, x0.shape, noise=eps, clip_denoised=True,
                                              progress=False)
        else:  # guided's own q_sample and p_sample, as p_sample_loop_progressive loops them
            img = diffusion.q_sample(x0, torch.full((b,), k - 1), noise=eps)
            for i in range(k - 1, -1, -1):
                img = diffusion.p_sample(ref, img, torch.full((b,), i),
                                         clip_denoised=True)["sample"]
            ref_out = img
    assert not steps  # every hiergen draw was consumed
    return mine, ref_out, sampler


CHAIN_FLAGS = dict(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8",
                   num_head_channels=16, num_res_blocks=1, resblock_updown=True,
                   use_scale_shift_norm=True, learn_sigma=True)


@needs_reference
@pytest.mark.parametrize("k", [10, 6])
def test_respaced_chain_equals_reference_sampler(k, monkeypatch):
    flags = resolve_flags(CHAIN_FLAGS)
    mine, ref_out, _ = _same_noise_chain(flags, 10, k, [3, 11], monkeypatch)
    assert float((mine - ref_out).abs().max()) <= 1e-3
    assert float(ref_out.std()) > 0.1


@needs_reference
def test_ddpm_scheduler_chain_also_equals_reference(monkeypatch):
    """diffusers' DDPMScheduler (custom respaced timesteps, learned_range, per-image generators)
    reproduces the reference chain too; hiergen keeps its float64 step (see docs)."""
    flags = resolve_flags(CHAIN_FLAGS)
    mine, ref_out, sampler = _same_noise_chain(flags, 10, 10, [5, 6], monkeypatch)
    sched = sampler.scheduler
    sched.set_timesteps(timesteps=[int(t) for t in sampler.schedule.timesteps[::-1]])
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    x = torch.stack([torch.randn((3, 16, 16), generator=g) for g in gens])
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(sampler.unet(x, t).sample, t, x, generator=gens).prev_sample
    assert float((x - ref_out).abs().max()) <= 1e-3


@needs_reference
def test_papers_250_step_chain_equals_reference(monkeypatch):
    """N = 250 of T = 1000, learned variance, the full chain from x_T (the paper's k = N), on
    8x8 images to stay fast."""
    flags = resolve_flags(dict(CHAIN_FLAGS, image_size=8, attention_resolutions="4"))
    mine, ref_out, sampler = _same_noise_chain(flags, 250, 250, [1], monkeypatch)
    assert sampler.schedule.n_steps == 250
    assert float((mine - ref_out).abs().max()) <= 1e-3


@needs_reference
@pytest.mark.parametrize("preset", ["256x256_uncond", "256x256_cond", "64x64_cond", "lsun_256"])
def test_full_size_presets_map_every_reference_key(preset):
    """The released models at full size, on the meta device (no memory, no weights): every
    key of guided-diffusion's ``create_model`` maps onto the UNet2DModel with its shape."""
    from diffusers import UNet2DModel

    from hiergen.imagenet.guided import convert_state_dict

    flags = dict(resolve_flags(preset), use_fp16=False)
    with torch.device("meta"):
        ref = create_model(**{k: flags[k] for k in MODEL_FLAGS})
        kwargs = unet_kwargs(flags)
        expected = UNet2DModel(**kwargs).state_dict()
    sd = convert_state_dict(ref.state_dict(), kwargs, flags["use_new_attention_order"])
    assert set(sd) == set(expected)
    assert all(sd[k].shape == expected[k].shape for k in sd)
    n = sum(v.numel() for v in sd.values())
    assert n == sum(v.numel() for v in ref.state_dict().values())
    if preset == "256x256_uncond":
        assert round(n / 1e6, 1) == 552.8  # the paper's DDPM


# ---- presets, flags diffusers cannot express, bad checkpoints -----------------------------------
def test_presets_and_unsupported_flags():
    kw = unet_kwargs(resolve_flags("256x256_uncond"))
    assert kw["block_out_channels"] == (256, 256, 512, 512, 1024, 1024)
    assert kw["down_block_types"] == ("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3
    assert kw["attention_head_dim"] == 64 and kw["out_channels"] == 6
    assert kw["num_class_embeds"] is None and kw["resnet_time_scale_shift"] == "scale_shift"
    assert unet_kwargs(resolve_flags("64x64_cond"))["num_class_embeds"] == 1000
    with pytest.raises(ConfigError, match=r"channel_mult\[0\] = 0.5"):
        unet_kwargs(resolve_flags("512x512_cond"))
    with pytest.raises(ConfigError, match="single attention_head_dim.*down level 2: 128, "
                                          "down level 3: 192"):
        unet_kwargs(resolve_flags("128x128_cond"))
    with pytest.raises(ConfigError, match="unknown guided-diffusion preset 'nope'"):
        resolve_flags("nope")
    with pytest.raises(ConfigError, match="unknown guided-diffusion flag.*num_chanels"):
        resolve_flags("256x256_uncond", {"num_chanels": 3})
    assert set(PRESETS) >= {"256x256_uncond", "256x256_cond", "64x64_cond"}


@needs_reference
def test_checkpoint_errors_name_the_keys(tmp_path):
    flags = resolve_flags(SMALL["plain"])
    sd = reference_model(flags).state_dict()
    extra = dict(sd, **{"input_blocks.99.0.weight": torch.zeros(1)})
    with pytest.raises(ConfigError, match=r"not used.*1 keys: input_blocks\.99\.0\.weight"):
        convert_guided_diffusion(extra, flags)
    short = {k: v for k, v in sd.items() if not k.startswith("out.2.")}
    with pytest.raises(ConfigError, match=r"lacks weights.*conv_out\.bias, conv_out\.weight"):
        convert_guided_diffusion(short, flags)
    with pytest.raises(ConfigError, match="shapes differ"):
        convert_guided_diffusion(sd, dict(SMALL["plain"], learn_sigma=True))
    with pytest.raises(ConfigError, match="not used"):  # class-conditional flags, uncond weights
        convert_guided_diffusion(reference_model(resolve_flags(
            dict(SMALL["plain"], class_cond=True))).state_dict(), flags)
    with pytest.raises(ConfigError, match="none.pt: guided-diffusion checkpoint not found"):
        convert_guided_diffusion(tmp_path / "none.pt", flags)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="bad.pt: unreadable checkpoint"):
        convert_guided_diffusion(tmp_path / "bad.pt", flags)
    torch.save({"a": 1}, tmp_path / "notsd.pt")
    with pytest.raises(ConfigError, match="not a state dict of tensors"):
        convert_guided_diffusion(tmp_path / "notsd.pt", flags)


# ---- the CLI: convert, forward-backward, probe on a converted random model ---------------------
@needs_reference
def test_cli_convert_forward_backward_probe(tmp_path, capsys):
    from hiergen.cli import main
    from hiergen.imagenet.data import save_png

    flags = dict(CHAIN_FLAGS, image_size=16)
    ref = reference_model(resolve_flags(flags))
    ckpt = tmp_path / "model.pt"
    torch.save(ref.state_dict(), ckpt)
    sets = [a for k, v in flags.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "converted"
    assert main(["imagenet", "convert", "--guided-diffusion", str(ckpt), "--preset",
                 "256x256_uncond", *sets, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["flags"]["num_channels"] == 32 and report["respacing_hint"] == "250"
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())[
        "variance_type"] == "learned_range"
    from hiergen.imagenet.forward_backward import load_ddpm

    unet, _ = load_ddpm(out)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 700])
    with torch.no_grad():
        assert float((unet(x, t).sample - ref(x, t)).abs().max()) <= 1e-4
    rng = np.random.default_rng(0)
    for c in range(2):
        for i in range(2):
            save_png(rng.uniform(-1, 1, (3, 16, 16)).astype(np.float32),
                     tmp_path / "imgs" / f"c{c}" / f"{i}.png")
    run = tmp_path / "run"
    assert main(["imagenet", "forward-backward", "--ddpm", str(out), "--images",
                 str(tmp_path / "imgs"), "--steps", "5", "--ks", "0,3,5", "--out", str(run),
                 "--no-progress", "--batch-size", "4"]) == 0
    assert len(list((run / "fb").rglob("*.png"))) == 4 * 3
    clf = _tiny_convnext_checkpoint(tmp_path / "clf.pth")
    assert main(["imagenet", "probe", "--out", str(run), "--classifier", clf["name"],
                 "--checkpoint", str(tmp_path / "clf.pth"), "--no-pretrained", "--no-progress",
                 "--batch-size", "4"]) == 0
    import xarray as xr

    with xr.open_dataset(run / "probe.nc") as ds:
        assert ds.sizes["k"] == 3 and ds.sizes["image"] == 4
        np.testing.assert_allclose(ds["cosine"].sel(k=0).values, 1.0, atol=1e-5)
    # bad input through the CLI
    assert main(["imagenet", "convert", "--guided-diffusion", str(ckpt), "--preset",
                 "512x512_cond", "--out", str(tmp_path / "x")]) == 2
    assert "channel_mult[0]" in capsys.readouterr().err
    assert main(["imagenet", "convert", "--guided-diffusion", str(ckpt), "--preset",
                 "256x256_uncond", "--set", "oops", "--out", str(tmp_path / "x")]) == 2
    assert "--set oops" in capsys.readouterr().err


def _tiny_convnext_checkpoint(path):
    """convnext_atto (timm, random, no download) saved as a torch state dict."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False)
    torch.save(model.state_dict(), path)
    return {"name": "convnext_atto"}


@needs_reference
@pytest.mark.slow
def test_cli_probe_convnext_base_from_local_checkpoint(tmp_path, capsys):
    """The paper's classifier from a local file: ``probe --classifier convnext_base
    --checkpoint FILE`` (random weights, no download) records all 41 hooked layers."""
    import timm

    from hiergen.cli import main
    from hiergen.imagenet.data import save_png
    from hiergen.imagenet.guided import save_converted

    flags = resolve_flags(dict(CHAIN_FLAGS, image_size=8, attention_resolutions="4"))
    unet, sched = convert_guided_diffusion(reference_model(flags).state_dict(), flags)
    save_converted(unet, sched, tmp_path / "ddpm", flags=flags)
    for i in range(2):
        save_png(np.random.default_rng(i).uniform(-1, 1, (3, 8, 8)).astype(np.float32),
                 tmp_path / "imgs" / "a" / f"{i}.png")
    run = tmp_path / "run"
    assert main(["imagenet", "forward-backward", "--ddpm", str(tmp_path / "ddpm"), "--images",
                 str(tmp_path / "imgs"), "--steps", "4", "--ks", "0,2", "--out", str(run),
                 "--no-progress"]) == 0
    torch.manual_seed(0)
    torch.save(timm.create_model("convnext_base", pretrained=False).state_dict(),
               tmp_path / "convnext_base.pth")
    assert main(["imagenet", "probe", "--out", str(run), "--classifier", "convnext_base",
                 "--checkpoint", str(tmp_path / "convnext_base.pth"), "--no-progress"]) == 0
    import xarray as xr

    with xr.open_dataset(run / "probe.nc") as ds:
        assert ds.sizes["layer"] == 41 and ds.sizes["class"] == 1000
        np.testing.assert_allclose(ds["cosine"].sel(k=0).values, 1.0, atol=1e-5)
