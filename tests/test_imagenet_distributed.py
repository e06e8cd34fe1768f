"""Image runs over several processes (hiergen.imagenet.distributed): the process model, and
``accelerate launch --multi_gpu --num_processes 2 -m hiergen imagenet ...`` on CPU (a gloo
group) against one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hiergen.imagenet.distributed import Processes, launched_processes, mixed_precision_dtype
from hiergen.models.errors import ConfigError


def test_single_and_independent_shards(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    one = launched_processes()
    assert (one.index, one.count, one.communicates, one.is_main) == (0, 1, False, True)
    items = list(range(7))
    assert one.split(items) == items and one.gather("x") == ["x"]
    # explicit shards win over a launcher's WORLD_SIZE and never communicate
    monkeypatch.setenv("WORLD_SIZE", "4")
    shards = [launched_processes(i, 3) for i in range(3)]
    assert [s.split(items) for s in shards] == [[0, 3, 6], [1, 4], [2, 5]]
    assert not any(s.communicates for s in shards) and shards[1].gather(1) == [1]
    assert not shards[1].is_main


@pytest.mark.parametrize(("kw", "env", "match"), [
    ({"shard_index": 3, "num_shards": 3}, None, "bad sharding: shard index 3 of 3"),
    ({"shard_index": 1}, None, "bad sharding: shard index 1 of 1"),
    ({}, "two", "WORLD_SIZE='two' is not an integer"),
])
def test_bad_processes(kw, env, match, monkeypatch):
    if env is not None:
        monkeypatch.setenv("WORLD_SIZE", env)
    with pytest.raises(ConfigError, match=match):
        launched_processes(**kw)
    with pytest.raises(ConfigError, match="bad sharding"):
        Processes(-1, 2)


def test_mixed_precision_from_accelerate(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert mixed_precision_dtype(None) == "float32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert mixed_precision_dtype(None) == "bfloat16"
    assert mixed_precision_dtype("float16") == "float16"  # --dtype wins
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="mixed precision 'fp8' is not supported"):
        mixed_precision_dtype(None)


def _needs_launch():
    pytest.importorskip("accelerate")
    pytest.importorskip("diffusers")
    pytest.importorskip("timm")
    from hiergen.imagenet.digits import have_preset

    if not have_preset():
        pytest.skip("digits preset weights not shipped")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd: list[str], cwd: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only the main process prints
    return json.loads(lines[0])


@pytest.mark.slow
def test_accelerate_two_cpu_processes_match_one(tmp_path):
    _needs_launch()
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("no accelerate launcher next to this python")
    common = ["--threads", "1", "--no-progress", "--batch-size", "4"]
    fb = ["imagenet", "forward-backward", "--n-per-class", "1", "--steps", "6", "--ks", "3,6",
          *common]
    # accelerate starts several CPU processes with --cpu only through mpirun; --multi_gpu is
    # its torchrun launcher, which on CPU tensors (--device cpu) forms a gloo group
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(_free_port()), "-m", "hiergen"]
    one, two = tmp_path / "one", tmp_path / "two"
    s1 = _run([sys.executable, "-m", "hiergen", *fb, "--out", str(one)], tmp_path)
    s2 = _run([*launch, *fb, "--out", str(two)], tmp_path)
    assert s1["forward_backward"]["processes"] == 1 and s2["forward_backward"]["processes"] == 2
    for key in ("images", "unet_evals", "image_steps"):
        assert s1["forward_backward"][key] == s2["forward_backward"][key] > 0
    from PIL import Image

    files = sorted(p.relative_to(one) for p in (one / "fb").rglob("*.png"))
    assert files == sorted(p.relative_to(two) for p in (two / "fb").rglob("*.png"))
    assert len(files) == 30  # 10 digits x k in (0, 3, 6)
    for f in files:
        assert np.array_equal(np.asarray(Image.open(one / f)), np.asarray(Image.open(two / f))), f

    p1 = _run([sys.executable, "-m", "hiergen", "imagenet", "probe", *common, "--out", str(one)],
              tmp_path)
    p2 = _run([*launch, "imagenet", "probe", *common, "--out", str(two)], tmp_path)
    assert p1["probe"]["processes"] == 1 and p2["probe"]["processes"] == 2
    assert p1["probe"]["images"] == p2["probe"]["images"] == 30
    assert p2["merged"] == str(two / "probe.nc")
    # jointly computed whitening statistics: the same bytes as one process's
    w = "probe/whitening.safetensors"
    assert (one / w).read_bytes() == (two / w).read_bytes()
    import xarray as xr

    a, b = xr.load_dataset(one / "probe.nc"), xr.load_dataset(two / "probe.nc")
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for k in a.data_vars:
        np.testing.assert_array_equal(a[k].values, b[k].values, err_msg=k)
