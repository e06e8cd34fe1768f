"""The sweep store under concurrency and crashes, its configuration checks, CF attributes.

Concurrency and crash tests run real ``hiergen forward-backward`` processes (through
``python -c``-style driver scripts that call :func:`hiergen.cli.main`, with a hook to make
two processes overlap, or to ``kill -9`` themselves at a chosen moment). The oracle is a
clean single run of the same command: the result file must be identical to it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hiergen.cli import main
from hiergen.experiments.sweeps import RESULT_FILE, forward_backward, sweep_forward_backward
from hiergen.models.errors import ConfigError
from hiergen.models.rhm import RHM

SMALL = {"v": 8, "n_classes": 4, "m": 2, "s": 2}
# 2 depths x 4 times = 8 points, 200 samples each: about 0.2 s of work in all
CLI_ARGS = ["forward-backward", "--v", "8", "--n-classes", "4", "--m", "2", "--s", "2",
            "--depths", "2,3", "--times", "0:300:4", "--n-samples", "200", "--no-progress",
            "--no-plots"]
N_POINTS = 8
# attributes that describe one run rather than the result (how much this process did)
RUN_ATTRS = ("points_computed", "points_reused", "seconds_computed")
PROC_TIMEOUT = 120  # s; a process stuck on a lock fails the test instead of hanging it

DRIVER = textwrap.dedent('''
    import os, signal, sys, time
    from pathlib import Path

    import hiergen.experiments.store as st
    import hiergen.experiments.sweeps as fb
    from hiergen.cli import main

    mode, sync, me, other = os.environ["HG_MODE"], Path(os.environ["HG_SYNC"]), *sys.argv[1:3]
    if mode == "handshake":
        # the first point each process computes waits until the other process computes one
        # too: both must be computing at once, on different points (else: time-out below)
        real = fb.forward_backward_point
        def point(*args, **kwargs):
            if not (sync / me).exists():
                (sync / me).touch()
                t0 = time.monotonic()
                while not (sync / other).exists():
                    if time.monotonic() - t0 > 60:
                        raise SystemExit(f"{me}: the other process never computed a point")
                    time.sleep(0.01)
            return real(*args, **kwargs)
        fb.forward_backward_point = point
    elif mode in ("kill_result", "kill_point"):
        real_nc = st._to_netcdf
        saves = []
        def to_netcdf(ds, path):
            real_nc(ds, path)  # the temporary file is complete, not yet moved in place
            final = Path(path).name.startswith("." + fb.RESULT_FILE)
            saves.append(final)
            if (mode == "kill_result" and final) or (mode == "kill_point" and len(saves) == 3):
                os.kill(os.getpid(), signal.SIGKILL)
        st._to_netcdf = to_netcdf
    sys.exit(main(sys.argv[3:]))
''')


def _start(tmp_path: Path, mode: str, out: Path, me: str = "a", other: str = "b") -> subprocess.Popen:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "HG_MODE": mode, "HG_SYNC": str(tmp_path)}
    return subprocess.Popen([sys.executable, str(script), me, other, *CLI_ARGS, "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=PROC_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process hung (a lock never released?)\n{out}\n{err}")
    return proc.returncode, out, err


def _computed(stdout: str) -> int:
    match = re.search(r"points computed: (\d+) .*reused: (\d+)", stdout)
    assert match, stdout
    return int(match.group(1))


def _result(folder: Path) -> xr.Dataset:
    ds = xr.load_dataset(folder / RESULT_FILE, engine="h5netcdf")
    for k in RUN_ATTRS:
        ds.attrs.pop(k)
    return ds.drop_vars("seconds")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> xr.Dataset:
    """The oracle: one uninterrupted run, alone in its folder."""
    out = tmp_path_factory.mktemp("clean")
    assert main([*CLI_ARGS, "--out", str(out)]) == 0
    return _result(out)


def _tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


# ---------------------------------------------------------------------------- processes
def test_two_processes_split_the_points_and_write_the_clean_result(tmp_path, clean):
    out = tmp_path / "shared"
    a = _start(tmp_path, "handshake", out, "a", "b")
    b = _start(tmp_path, "handshake", out, "b", "a")
    (rc_a, out_a, err_a), (rc_b, out_b, err_b) = _finish(a), _finish(b)
    assert rc_a == 0 and rc_b == 0, (err_a, err_b)
    n_a, n_b = _computed(out_a), _computed(out_b)
    # each point computed exactly once, by one of the two; both did some of the work
    assert n_a + n_b == N_POINTS and n_a >= 1 and n_b >= 1, (n_a, n_b)
    assert len(list((out / "points").glob("*.nc"))) == N_POINTS
    xr.testing.assert_identical(_result(out), clean)
    assert _tmp_files(out) == []


def test_kill_during_final_assembly_then_rerun_gives_clean_result(tmp_path, clean):
    out = tmp_path / "run"
    rc, _, _ = _finish(_start(tmp_path, "kill_result", out))
    assert rc == -9
    assert not (out / RESULT_FILE).exists()
    assert [p.name.split(".")[1] for p in _tmp_files(out)] == ["forward_backward"]  # left behind
    # the dead process held the result lock: the rerun must get it, and reuse every point
    rc, stdout, err = _finish(_start(tmp_path, "plain", out))
    assert rc == 0, err
    assert _computed(stdout) == 0
    xr.testing.assert_identical(_result(out), clean)


@pytest.mark.slow
def test_kill_during_point_save_then_rerun_gives_clean_result(tmp_path, clean):
    out = tmp_path / "run"
    rc, _, _ = _finish(_start(tmp_path, "kill_point", out))
    assert rc == -9
    # two points finished, the third was killed while being saved (under its claim)
    assert len(list((out / "points").glob("*.nc"))) == 2
    assert len(_tmp_files(out / "points")) == 1
    rc, stdout, err = _finish(_start(tmp_path, "plain", out))
    assert rc == 0, err
    assert _computed(stdout) == N_POINTS - 2
    xr.testing.assert_identical(_result(out), clean)


# ---------------------------------------------------------------------------- configuration
KW = {"depths": [2], "seeds": [0, 1], "times": [0.0, 150.0], "n_samples": 60, "progress": False}


def test_resume_with_other_dtype_or_version_refused(tmp_path):
    first = sweep_forward_backward(SMALL, out=tmp_path, **KW)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert {cfg[k] for k in ("backend", "dtype", "device_kind")} == {"numpy", "float32", "cpu"}
    assert cfg["n_samples"] == 60 and cfg["times"] == [0.0, 150.0] and cfg["rhm"] == SMALL
    assert first.attrs["dtype"] == "float32"
    with pytest.raises(ConfigError, match=r"differs in: dtype;.*float32.*float64"):
        sweep_forward_backward(SMALL, out=tmp_path, dtype="float64", **KW)
    # the default dtype is resolved before comparing: an explicit float32 is the same run
    again = sweep_forward_backward(SMALL, out=tmp_path, dtype="float32", **KW)
    assert again.attrs["points_computed"] == 0 and again.attrs["points_reused"] == 4
    cfg["hiergen_version"] = "0.0.1"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="differs in: hiergen_version"):
        sweep_forward_backward(SMALL, out=tmp_path, **KW)
    # a folder of an older hiergen that did not record the BP settings
    for k in ("backend", "dtype", "device_kind", "hiergen_version"):
        del cfg[k]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="differs in: backend, device_kind, dtype, hiergen_version"):
        sweep_forward_backward(SMALL, out=tmp_path, **KW)


def test_resume_with_other_backend_refused(tmp_path):
    pytest.importorskip("torch")
    g = RHM(**SMALL, L=2, seed=0)
    forward_backward(g, times=[0.0, 100.0], n_samples=50, out=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="differs in: backend;"):
        forward_backward(g, times=[0.0, 100.0], n_samples=50, out=tmp_path, progress=False,
                         backend="torch")


def test_corrupt_point_named_and_leftover_temporary_files_ignored(tmp_path):
    full = sweep_forward_backward(SMALL, out=tmp_path, **KW)
    points = tmp_path / "points"
    # unfinished writes of killed processes: garbage under temporary names
    (points / ".L02_seed0_t0000.nc.x1y2.tmp").write_bytes(b"\0garbage")
    (tmp_path / f".{RESULT_FILE}.abcd.tmp").write_bytes(b"garbage")
    again = sweep_forward_backward(SMALL, out=tmp_path, **KW)
    assert again.attrs["points_reused"] == 4
    xr.testing.assert_equal(again.drop_vars("seconds"), full.drop_vars("seconds"))
    bad = points / "L02_seed1_t0001.nc"
    bad.write_bytes(b"not a netcdf file")
    with pytest.raises(ConfigError, match=r"corrupt sweep point .*L02_seed1_t0001\.nc.*delete it"):
        sweep_forward_backward(SMALL, out=tmp_path, **KW)
    bad.unlink()  # as the message says: deleting the point recomputes it
    fixed = sweep_forward_backward(SMALL, out=tmp_path, **KW)
    assert fixed.attrs["points_computed"] == 1
    xr.testing.assert_equal(fixed.drop_vars("seconds"), full.drop_vars("seconds"))


def test_point_of_another_grammar_refused_and_points_without_config(tmp_path):
    sweep_forward_backward(SMALL, out=tmp_path, **KW)
    points = tmp_path / "points"
    # a point file of seed 0's grammar under seed 1's name
    (points / "L02_seed1_t0000.nc").write_bytes((points / "L02_seed0_t0000.nc").read_bytes())
    with pytest.raises(ConfigError, match=r"L02_seed1_t0000\.nc has grammar="):
        sweep_forward_backward(SMALL, out=tmp_path, **KW)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json is missing"):
        sweep_forward_backward(SMALL, out=tmp_path, **KW)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt sweep config"):
        sweep_forward_backward(SMALL, out=tmp_path, **KW)


# ---------------------------------------------------------------------------- CF attributes
@pytest.mark.parametrize(("noise", "time_units"), [("gaussian", "DDPM steps"), ("uniform", "1")])
def test_results_carry_cf_long_names_and_units(tmp_path, noise, time_units):
    times = [0.0, 100.0] if noise == "gaussian" else [0.0, 0.5]
    sweep_forward_backward(SMALL, depths=[2], times=times, n_samples=30, noise=noise,
                           out=tmp_path / "sweep", progress=False)
    g = RHM(**SMALL, L=2, seed=0)
    forward_backward(g, times=times, n_samples=30, noise=noise, out=tmp_path / "one", progress=False)
    for folder in ("sweep", "one"):
        files = [tmp_path / folder / RESULT_FILE, *sorted((tmp_path / folder / "points").glob("*.nc"))]
        for path in files:
            ds = xr.load_dataset(path, engine="h5netcdf")
            for name in [*ds.coords, *ds.data_vars]:
                assert ds[name].attrs.get("long_name"), (path.name, name)
            for name in ds.data_vars:
                want = "s" if name == "seconds" else "1"  # probabilities and their errors
                assert ds[name].attrs["units"] == want, (path.name, name)
            if "time" in ds.coords:
                assert ds["time"].attrs["units"] == time_units
                assert noise == "gaussian" or "eps" in ds["time"].attrs["long_name"]
        ds = xr.load_dataset(files[0], engine="h5netcdf")
        assert {"time", "level"} <= set(ds.coords)
        assert np.isfinite(ds["p_correct"]).any()
