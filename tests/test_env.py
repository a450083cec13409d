"""BITDISTILL_* settings are read in one place (bitdistill.env), and the training loop's crash-test hook is
an argument: it sees every step and every checkpoint write, and the environment is not read per step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from bitdistill.env import Env, read_env, set_openmp_defaults
from bitdistill.errors import BitDistillError
from bitdistill.train import ShuffledBatches, train
from test_train_loop import collate, config, dataset, lm_loss, tiny_model


def test_read_env_parses_every_setting():
    env = read_env({"BITDISTILL_THREADS": " 3 ", "BITDISTILL_FAULT": "sft:step:2,,sft:save:3",
                    "BITDISTILL_API_KEY": "k", "OTHER": "x"})  # fmt: skip
    assert env == Env(threads="3", fault_points=frozenset({"sft:step:2", "sft:save:3"}), api_key="k")
    assert read_env({}) == Env() and read_env({"BITDISTILL_THREADS": "  ", "BITDISTILL_API_KEY": ""}) == Env()


def test_the_fault_hook_sees_every_step_and_checkpoint(tmp_path, monkeypatch):
    points: list[str] = []
    batches = ShuffledBatches(dataset(), 4, collate, seed=1)
    # Set after the hook is given: a loop that still read the environment would kill this process.
    monkeypatch.setenv("BITDISTILL_FAULT", "t:step:1,t:save:3")
    train(tiny_model(), batches, lm_loss, config(steps=5, save_every=3), tmp_path, desc="t", fault=points.append)
    # Checkpoints at step 3 (save_every) and 5 (the end); the save point fires before the step's next one.
    assert points == ["t:step:1", "t:step:2", "t:step:3", "t:save:3", "t:step:4", "t:step:5", "t:save:5"]


@pytest.mark.parametrize("points", ["", "other:step:1"])
def test_without_a_hook_the_loop_runs_through_unlisted_points(tmp_path, monkeypatch, points):
    monkeypatch.setenv("BITDISTILL_FAULT", points)
    batches = ShuffledBatches(dataset(), 4, collate, seed=1)
    result = train(tiny_model(), batches, lm_loss, config(steps=2), tmp_path, desc="t")
    assert result.steps == 2


def test_read_env_parses_the_native_runtime_settings():
    env = read_env({"BITDISTILL_SIMD": " AVX2 ", "BITDISTILL_PROFILE": "1", "BITDISTILL_RUNTIME_LIB": "/x/lib.so"})
    assert (env.simd, env.profile, env.runtime_lib) == (1, True, "/x/lib.so")
    assert [read_env({"BITDISTILL_SIMD": v}).simd for v in ("scalar", "0", "avx512-vnni", "vnni", "")] == [
        0, 0, 2, 2, None]  # fmt: skip
    assert read_env({"BITDISTILL_PROFILE": "0"}).profile is False
    assert [read_env({"BITDISTILL_HUGEPAGES": v}).huge_pages for v in ("0", " 0 ", "1", "")] == [False, False, True, True]
    assert read_env({}).huge_pages is True
    with pytest.raises(BitDistillError, match=r"BITDISTILL_SIMD='sse9'.*scalar, avx2 or avx512-vnni"):
        read_env({"BITDISTILL_SIMD": "sse9"})
    assert [read_env({"BITDISTILL_PREFETCH": v}).prefetch for v in ("8192", " 0 ", "65536", "", " ")] == [
        8192, 0, 65536, None, None]  # fmt: skip
    for bad in ("abc", "-1", "65537", "1.5"):
        with pytest.raises(BitDistillError, match=r"BITDISTILL_PREFETCH=.*0 to 65536"):
            read_env({"BITDISTILL_PREFETCH": bad})


def _cpu_default_prefetch() -> int | None:
    """What kernels.c's prefetch_decide should pick here, from /proc/cpuinfo: 8 KiB on AMD family 0x1A
    (Zen 5) and later, 1 KiB on every other x86 CPU; None off Linux/x86."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in info.splitlines()[:30] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "vendor_id" not in fields:
        return None
    amd = fields["vendor_id"] == "AuthenticAMD"
    return 8192 if amd and int(fields["cpu family"]) >= 0x1A else 1024


def test_the_native_library_gets_its_prefetch_distance_from_env_py():
    code = "from bitdistill.runtime.native import prefetch_ahead; print(prefetch_ahead())"
    assert _native(code, BITDISTILL_PREFETCH="2048").stdout.split() == ["2048"]
    expected = _cpu_default_prefetch()
    if expected is None:
        pytest.skip("no /proc/cpuinfo x86 fields to check the CPU default against")
    assert _native(code).stdout.split() == [str(expected)]


@pytest.mark.parametrize("var", ["BITDISTILL_PREFETCH=lots", "BITDISTILL_SIMD=sse9"])
def test_a_bad_setting_is_a_one_line_cli_error(var):
    """Bad BITDISTILL_* values are found while the CLI's parser is built (serve reads BITDISTILL_API_KEY
    for a default): exit 2 with one line naming the variable, not a traceback."""
    name, value = var.split("=")
    out = _native("import sys; from bitdistill.cli import main; sys.exit(main(['generate', 'x']))", **{name: value})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and f"{name}='{value}'" in out.stderr


def test_openmp_default_is_passive_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    set_openmp_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    set_openmp_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def _native(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` run in a fresh interpreter (the library reads its settings once, when it loads)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BITDISTILL_")} | env
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60)


def test_the_native_library_gets_its_simd_cap_from_env_py():
    from bitdistill.runtime.native import SIMD_AVX2, lib

    best = lib().bd_simd_level()
    code = ("from bitdistill.runtime.native import set_simd, simd_level as s\n"
            "a = s(); set_simd(2); b = s(); set_simd(True); print(a, b, s())")  # fmt: skip
    out = _native(code, BITDISTILL_SIMD="scalar")
    # scalar from the variable; an explicit cap overrides it; True returns to the variable's cap
    assert out.stdout.split() == ["0", str(best), "0"], out.stderr
    if best >= SIMD_AVX2:
        assert _native(code, BITDISTILL_SIMD="avx2").stdout.split() == ["1", str(best), "1"]
    bad = _native("from bitdistill.runtime.native import lib; lib()", BITDISTILL_SIMD="sse9")
    assert bad.returncode != 0 and "BITDISTILL_SIMD='sse9'" in bad.stderr


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_the_c_library_reads_no_environment_variables():
    from bitdistill.runtime.native import _find_library

    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(_find_library(None))],
                               capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert "getenv" not in undefined and "secure_getenv" not in undefined
