"""Integration: the whole recipe on a tiny random model, SIGKILLed mid-stage and resumed, must end with
exactly the weights of an uninterrupted run (same seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_pipeline import build_world

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"
STAGES = ("teacher", "bitnet_sft", "continue_pretrain", "distill")


def run_cli(world: dict[str, Path], out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    # One thread: a tiny model gains nothing from more, and oversubscribed OpenMP threads stall.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("BITDISTILL_FAULT", None)
    if fault:
        env["BITDISTILL_FAULT"] = fault
    args = [
        sys.executable, "-c", "import sys; from bitdistill.cli import main; sys.exit(main())",
        "run", str(CONFIG), "--output-dir", str(out),
        "--set", f"model={world['model']}", "--set", f"task.path={world['data']}",
        "--set", f"continue_pretrain.corpus.sources=[{world['corpus']}]",
    ]  # fmt: skip
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a.name}: {k} differs after resume"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = run_cli(world, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_sigkill_mid_stage_then_resume_matches_uninterrupted(world, reference, tmp_path):
    out = tmp_path / "killed"
    # 1) SIGKILL while continued pre-training writes its step-6 checkpoint (files written, not yet published).
    proc = run_cli(world, out, fault="continue_pretrain:save:6")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (out / "bitnet_sft" / "stage.json").is_file() and not (
        out / "continue_pretrain" / "stage.json"
    ).exists()
    assert (out / "continue_pretrain" / "train" / "LATEST").read_text().strip() == "ckpt-000003"
    # 2) Resume; SIGKILL again in the middle of distillation, between checkpoints (after step 5 of 12).
    proc = run_cli(world, out, fault="distill:step:5")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "teacher: done already" in proc.stderr
    assert (out / "continue_pretrain" / "stage.json").is_file() and not (
        out / "distill" / "stage.json"
    ).exists()
    assert (out / "distill" / "train" / "LATEST").read_text().strip() == "ckpt-000003"
    # 3) Resume to the end.
    proc = run_cli(world, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in STAGES:
        assert_same_weights(reference / stage, out / stage)
    ref = json.loads((reference / "results.json").read_text())["stages"]
    got = json.loads((out / "results.json").read_text())["stages"]
    for stage in ("teacher", "bitnet_sft", "distill"):
        assert got[stage]["eval"]["accuracy"] == ref[stage]["eval"]["accuracy"]
    # Steps redone after a kill are not double-counted in the stage's statistics.
    assert got["distill"]["train_tokens"] == ref["distill"]["train_tokens"]


def test_completed_run_is_not_redone(world, reference):
    before = {s: (reference / s / "stage.json").stat().st_mtime_ns for s in STAGES}
    proc = run_cli(world, reference)
    assert proc.returncode == 0
    assert {s: (reference / s / "stage.json").stat().st_mtime_ns for s in STAGES} == before
    assert proc.stderr.count("done already") == 4
