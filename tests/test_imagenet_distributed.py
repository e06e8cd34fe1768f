"""Image runs over several processes (hiergen.imagenet.distributed): the process model, and
``accelerate launch --cpu --num_processes 2 --mpirun_hostfile FILE -m hiergen imagenet ...``
(mpirun from the ``mpich`` wheel of the test extra) and ``accelerate launch --multi_gpu`` (its
torchrun launcher, a gloo group on CPU) against one process, with and without mixed
precision."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hiergen.imagenet.distributed import (
    WORLD_SIZE_VARS,
    Processes,
    launched_processes,
    launched_world_size,
    mixed_precision_dtype,
)
from hiergen.models.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    """No launcher variables of the process running the tests leak into these tests."""
    for name in (*WORLD_SIZE_VARS, "ACCELERATE_USE_CPU", "MASTER_ADDR",
                 "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)


def test_single_and_independent_shards(monkeypatch):
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


def test_mpirun_world_size(monkeypatch):
    # mpirun (accelerate launch --cpu --mpirun_hostfile) sets PMI_SIZE, not WORLD_SIZE
    assert launched_world_size() == ("WORLD_SIZE", 1)
    monkeypatch.setenv("PMI_SIZE", "2")
    assert launched_world_size() == ("PMI_SIZE", 2)
    # accelerate forms an MPI-started group on CPU only: a GPU device is refused up front
    with pytest.raises(ConfigError, match="PMI_SIZE=2: processes started by mpirun .* --device cpu"):
        launched_processes(cpu=False)
    assert launched_processes(0, 2).count == 2  # explicit shards still win
    monkeypatch.setenv("WORLD_SIZE", "3")  # torchrun's count first, as accelerate reads them
    assert launched_world_size() == ("WORLD_SIZE", 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launched_processes().count == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "x")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("PMI_SIZE")
    with pytest.raises(ConfigError, match="OMPI_COMM_WORLD_SIZE='x' is not an integer"):
        launched_processes()


def test_lone_cpu_launch_warns(monkeypatch, recwarn):
    # accelerate launch --cpu --num_processes 2 without --mpirun_hostfile: one process, with
    # ACCELERATE_USE_CPU and MASTER_ADDR but no process count
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    assert launched_processes().count == 1 and not recwarn.list  # --num_processes 1
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.warns(RuntimeWarning, match="started a single process: .* --mpirun_hostfile"):
        one = launched_processes()
    assert (one.count, one.communicates) == (1, False)


def test_mixed_precision_from_accelerate(monkeypatch):
    assert mixed_precision_dtype(None) == "float32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert mixed_precision_dtype(None) == "bfloat16"
    assert mixed_precision_dtype("float16") == "float16"  # --dtype wins
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="mixed precision 'fp8' is not supported"):
        mixed_precision_dtype(None)


def test_autocast_checked():
    torch = pytest.importorskip("torch")
    from hiergen.imagenet.forward_backward import check_autocast

    check_autocast("cpu", None)
    check_autocast("cpu", torch.bfloat16)
    # torch only warns and turns autocast off for an unsupported dtype: hiergen refuses it
    # rather than record a dtype the images were not computed in
    with pytest.raises(ConfigError, match="autocast to float64 on cpu is not supported"):
        check_autocast("cpu", torch.float64)


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


def _bin_path() -> str:
    """PATH with this python's bin folder first (accelerate looks up ``mpirun`` on PATH; the
    ``mpich`` wheel puts it next to python)."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _run(cmd: list[str], cwd: Path, **env_extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PATH": _bin_path(),
           **env_extra}
    for name in (*WORLD_SIZE_VARS, "ACCELERATE_USE_CPU", "MASTER_ADDR"):
        env.pop(name, None)
    if "ACCELERATE_MIXED_PRECISION" not in env_extra:
        env.pop("ACCELERATE_MIXED_PRECISION", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only the main process prints
    return json.loads(lines[0])


def _accelerate() -> str:
    _needs_launch()
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("no accelerate launcher next to this python")
    return accelerate


def _cpu_launch(tmp_path: Path, mixed_precision: str = "no") -> list[str]:
    """``accelerate launch --cpu --num_processes 2 ... -m hiergen``: accelerate 1.x starts several
    CPU processes only through mpirun, and only when given ``--mpirun_hostfile`` (else its
    simple launcher runs the command once); the processes form a gloo group."""
    if shutil.which("mpirun", path=_bin_path()) is None:
        pytest.skip("no mpirun (pip install mpich, part of hiergen[test] on Linux / macOS arm64)")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost:2\n")
    return [_accelerate(), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
            "--mpirun_hostfile", str(hostfile), "--mixed_precision", mixed_precision,
            "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "hiergen"]


def _torchrun_launch(mixed_precision: str = "no") -> list[str]:
    """``accelerate launch --multi_gpu --num_processes 2 ... -m hiergen``: accelerate's torchrun
    launcher, which with ``--device cpu`` forms a gloo group on CPU as well."""
    return [_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "hiergen"]


def _pngs(run: Path) -> dict[Path, np.ndarray]:
    from PIL import Image

    return {p.relative_to(run): np.asarray(Image.open(p)) for p in sorted((run / "fb").rglob("*.png"))}


def _same_pngs(a: Path, b: Path) -> None:
    pa, pb = _pngs(a), _pngs(b)
    assert sorted(pa) == sorted(pb) and len(pa) == 30  # 10 digits x k in (0, 3, 6)
    for f in pa:
        assert np.array_equal(pa[f], pb[f]), f


COMMON = ["--threads", "1", "--no-progress", "--batch-size", "4"]
FB = ["imagenet", "forward-backward", "--n-per-class", "1", "--steps", "6", "--ks", "3,6", *COMMON]


@pytest.mark.slow
def test_accelerate_two_cpu_processes_match_one(tmp_path):
    launch = _cpu_launch(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    s1 = _run([sys.executable, "-m", "hiergen", *FB, "--out", str(one)], tmp_path)
    s2 = _run([*launch, *FB, "--out", str(two)], tmp_path)
    assert s1["forward_backward"]["processes"] == 1 and s2["forward_backward"]["processes"] == 2
    for key in ("images", "unet_evals", "image_steps"):
        assert s1["forward_backward"][key] == s2["forward_backward"][key] > 0
    _same_pngs(one, two)

    p1 = _run([sys.executable, "-m", "hiergen", "imagenet", "probe", *COMMON, "--out", str(one)],
              tmp_path)
    p2 = _run([*launch, "imagenet", "probe", *COMMON, "--out", str(two)], tmp_path)
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


def _dtype(run: Path) -> str:
    return json.loads((run / "fb" / "meta.json").read_text())["dtype"]


@pytest.mark.slow
def test_accelerate_mixed_precision_on_cpu(tmp_path):
    """``--mixed_precision bf16`` through accelerate on 2 CPU processes = ``--dtype bfloat16`` on
    one, bit for bit, and not float32; ``fp16`` autocasts on CPU too (torch >= 2.2)."""
    bf2 = tmp_path / "bf16-two"
    s = _run([*_cpu_launch(tmp_path, "bf16"), *FB, "--out", str(bf2)], tmp_path)
    assert s["forward_backward"]["processes"] == 2 and _dtype(bf2) == "bfloat16"
    bf1 = tmp_path / "bf16-one"
    _run([sys.executable, "-m", "hiergen", *FB, "--dtype", "bfloat16", "--out", str(bf1)],
         tmp_path)
    _same_pngs(bf1, bf2)
    # the same through accelerate's torchrun launcher (WORLD_SIZE instead of PMI_SIZE)
    bft = tmp_path / "bf16-torchrun"
    _run([*_torchrun_launch("bf16"), *FB, "--out", str(bft)], tmp_path)
    assert _dtype(bft) == "bfloat16"
    _same_pngs(bf1, bft)

    f32 = tmp_path / "float32"
    _run([sys.executable, "-m", "hiergen", *FB, "--out", str(f32)], tmp_path)
    fp16 = tmp_path / "fp16"  # what accelerate launch --mixed_precision fp16 sets
    _run([sys.executable, "-m", "hiergen", *FB, "--out", str(fp16)], tmp_path,
         ACCELERATE_MIXED_PRECISION="fp16")
    assert (_dtype(f32), _dtype(fp16)) == ("float32", "float16")
    p32, p16, pbf = _pngs(f32), _pngs(fp16), _pngs(bf1)
    for other in (p16, pbf):  # the autocast really takes effect: k > 0 images change
        assert all(np.array_equal(p32[f], other[f]) for f in p32 if f.parts[1] == "k0000")
        assert any(not np.array_equal(p32[f], other[f]) for f in p32 if f.parts[1] != "k0000")
    assert any(not np.array_equal(p16[f], pbf[f]) for f in p16)
