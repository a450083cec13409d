"""benchmarks/gpu_check.py, where no GPU is: its device guard, and its whole flow on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import DeviceGuard  # noqa: E402


def test_device_guard_reports_calls_off_the_expected_device():
    x, w = torch.randn(2, 4), torch.randn(3, 4)
    with DeviceGuard("meta") as guard:
        F.linear(x, w)  # on the CPU: a fallback
        F.linear(x.to("meta"), w.to("meta"))  # where it should be
        torch.matmul(x, w.t())
    assert guard.offenders == {"linear on cpu": 1, "matmul on cpu": 1}
    with DeviceGuard("cpu") as guard:
        F.linear(x, w)
    assert guard.offenders == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU flow; benchmarks/gpu_check.sh covers CUDA")
def test_gpu_check_flow_runs_every_stage_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--steps", "2",
            "--hidden", "64", "--layers", "2", "--eval-limit", "16", "--batch", "4", "--block", "32",
            "--keep", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["cpu_fallbacks"] == {}
    assert [res["stages"][s]["steps"] for s in ("teacher", "bitnet_sft", "continue_pretrain", "distill")] == [
        2
    ] * 4
    assert all(m["n"] == 16 for m in res["stages"]["eval"]["metrics"].values())
    assert (Path(res["stages"]["pack"]["out"]) / "config.json").is_file()
    assert "| distill | 2 |" in proc.stdout
