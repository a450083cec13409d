"""Data-parallel training with 2 processes (`accelerate launch`, gloo on CPU, loopback) against 1 process
at the same global batch (2 x 4 = 1 x 8 examples per optimizer step).

What is compared, and how closely:
- every logged step's loss (rank 0 logs the mean over ranks) of every stage: relative difference <= LOSS_RTOL;
- every stage's final weights: max absolute difference <= WEIGHT_ATOL. Both runs start each stage from
  the same weights (the 2-process distill reads the 1-process teacher and student), so the only difference
  is the order of floating-point sums (two half-batch gradients averaged by all-reduce vs one batch);
  measured: <= 2e-7 relative on FP and distill losses, up to 2.5e-4 in continued pre-training, where a
  ternary weight that sits on a rounding boundary flips. A data-order bug moves the losses by ~1e-1;
- the dev accuracy of every stage: equal;
- files: rank 1 writes nothing in the run directory through Python (audited, tests/rank_audit.py) except
  its own RNG state in each checkpoint (rng_1.pt), written natively by torch.save;
- kill + resume with 2 processes ends with the uninterrupted 2-process weights, bit for bit;
- evaluation: each dev example is scored by exactly one rank and the gathered predictions are the
  1-process predictions (tests/multiproc_eval.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_pipeline import build_world

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny-test.yaml"
DDP = ROOT / "configs" / "accelerate" / "ddp.yaml"
STAGES = ("teacher", "bitnet_sft", "continue_pretrain", "distill")
LOSS_RTOL = 1e-3
WEIGHT_ATOL = 2e-3
ACCELERATE = Path(sys.executable).with_name("accelerate")

pytestmark = pytest.mark.skipif(not ACCELERATE.is_file(), reason="accelerate's launcher is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", **extra}
    out.pop("BITDISTILL_FAULT", None)
    out.update(extra)
    return out


def launch(script: list[str], procs: int, config: Path = DDP, **extra: str) -> subprocess.CompletedProcess:
    args = [str(ACCELERATE), "launch", "--config_file", str(config), "--num_processes", str(procs),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), *script]  # fmt: skip
    return subprocess.run(args, env=env(**extra), capture_output=True, text=True, timeout=300)


def recipe_args(world: dict[str, Path], out: Path, *more: str) -> list[str]:
    return ["run", str(CONFIG), "--output-dir", str(out), "--set", f"model={world['model']}",
            "--set", f"task.path={world['data']}", "--set", f"continue_pretrain.corpus.sources=[{world['corpus']}]",
            *more]  # fmt: skip


def two_process_args(world, out: Path, one: Path, *more: str) -> list[str]:
    # Half the per-process batch (same global batch); distill starts from the 1-process run's models.
    return recipe_args(world, out, "--set", "train.batch_size=4",
                       "--set", f"distill.teacher={one / 'teacher' / 'model'}",
                       "--set", f"distill.student={one / 'continue_pretrain' / 'model'}", *more)  # fmt: skip


def losses(run: Path, stage: str) -> list[tuple[int, float]]:
    lines = (run / stage / "train" / "log.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(run / stage / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def run_one_process(args: list[str]) -> None:
    """The bitdistill CLI in one process (the reference the launched runs are compared with)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "rank_audit.py"), *args],
                          env=env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def one(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    run_one_process(recipe_args(world, out))
    return out


@pytest.fixture(scope="module")
def two(world, one, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    proc = launch([str(ROOT / "tests" / "rank_audit.py"), *two_process_args(world, out, one)], 2,
                  BITDISTILL_AUDIT_ROOT=str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_processes_train_like_one_at_the_same_global_batch(one, two):
    for stage in STAGES:
        a, b = losses(one, stage), losses(two, stage)
        assert [s for s, _ in a] == [s for s, _ in b] and a, stage
        for (step, x), (_, y) in zip(a, b, strict=True):
            assert abs(x - y) <= LOSS_RTOL * abs(x), f"{stage} step {step}: loss {x} (1 process) vs {y} (2)"
        wa, wb = weights(one, stage), weights(two, stage)
        assert wa.keys() == wb.keys()
        worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
        assert worst <= WEIGHT_ATOL, f"{stage}: final weights differ by {worst}"
        # The checkpoint counts the tokens of all ranks.
        assert (
            json.loads((one / stage / "stage.json").read_text())["train"]["tokens"]
            == json.loads((two / stage / "stage.json").read_text())["train"]["tokens"]
        )
    ra, rb = (json.loads((r / "results.json").read_text())["stages"] for r in (one, two))
    for stage in ("teacher", "bitnet_sft", "distill"):
        assert ra[stage]["eval"]["accuracy"] == rb[stage]["eval"]["accuracy"], stage
        assert ra[stage]["eval"]["n"] == rb[stage]["eval"]["n"] == 24, stage  # every dev example, once


def test_only_rank_zero_writes_the_run_directory(one, two):
    assert not (one.parent / "writes-0").exists()
    audit = two.parent / "writes-1"
    assert not audit.exists() or audit.read_text() == "", audit.read_text()
    for stage in STAGES:
        ckpt = next((two / stage / "train").glob("ckpt-*"))
        assert sorted(p.name for p in ckpt.glob("rng_*.pt")) == ["rng_0.pt", "rng_1.pt"]
        steps = [s for s, _ in losses(two, stage)]
        assert steps == sorted(set(steps)), f"{stage}: a step logged twice"


def test_two_process_run_killed_mid_stage_resumes_to_the_same_weights(world, one, two, tmp_path):
    out = tmp_path / "run"
    # Both ranks are SIGKILLed right after optimizer step 7 of distill (the last checkpoint is step 6).
    args = two_process_args(world, out, one, "--only", "distill")
    proc = launch(["-m", "bitdistill.cli", *args], 2, BITDISTILL_FAULT="distill:step:7")
    assert proc.returncode != 0
    assert (out / "distill" / "train" / "LATEST").read_text().strip() == "ckpt-000006"
    proc = launch(["-m", "bitdistill.cli", *args], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    wa, wb = weights(two, "distill"), weights(out, "distill")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after a 2-process resume"


def test_evaluation_scores_each_example_once_and_gathers_in_order(world, tmp_path):
    from bitdistill.data.tasks import get_task
    from bitdistill.eval.evaluate import evaluate_model, load_for_eval

    out = tmp_path / "eval.json"
    proc = launch(
        [str(ROOT / "tests" / "multiproc_eval.py"), str(world["model"]), str(world["data"]), str(out)], 2
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world"] == 2
    assert [x for _, x in got["tagged"]] == list(range(11))  # every item once, in order
    assert [r for r, _ in got["tagged"]] == [i % 2 for i in range(11)]  # strided: rank i % 2 did item i
    model, tok, _ = load_for_eval(world["model"], device="cpu")
    task = get_task("sst2")
    ref = evaluate_model(
        model, tok, task, task.load("dev", path=world["data"]), batch_size=5, keep_predictions=True
    )
    assert got["predictions"] == ref["predictions"]
    assert got["metrics"] == ref["metrics"]


def _ids(batch: dict[str, torch.Tensor]) -> list[int]:
    return batch["input_ids"].tolist()


def test_ranks_split_every_global_batch_without_overlap_or_gap():
    from bitdistill.train import ShuffledBatches, StreamBatches

    data = [{"input_ids": torch.tensor(i)} for i in range(29)]  # 29 = 3 global batches of 8 + a dropped tail
    lengths = [(7 * i) % 11 for i in range(29)]
    take = lambda items: {"input_ids": torch.stack([it["input_ids"] for it in items])}  # noqa: E731
    one = ShuffledBatches(data, 8, take, seed=3, lengths=lengths)
    ranks = [
        ShuffledBatches(data, 4, take, seed=3, num_processes=2, process_index=r, lengths=lengths)
        for r in (0, 1)
    ]
    for epoch in range(3):
        seen: list[int] = []
        for step in range(epoch * 3, epoch * 3 + 3):
            parts = [_ids(r.batch(step)) for r in ranks]
            assert parts[0] + parts[1] == _ids(one.batch(step)), f"micro-step {step}"
            seen += parts[0] + parts[1]
        assert len(seen) == len(set(seen)) == 24, f"epoch {epoch}: an example twice or a batch short"
    # Resumed at micro-step 4, a rank serves what it would have served uninterrupted.
    assert _ids(next(ranks[1].iterate(4))) == _ids(ranks[1].batch(4))

    blocks = [{"input_ids": torch.tensor(i)} for i in range(20)]
    single = [_ids(b) for b in StreamBatches(blocks, 8).iterate(1)]
    streamed = [
        [_ids(b) for b in StreamBatches(blocks, 4, num_processes=2, process_index=r).iterate(1)]
        for r in (0, 1)
    ]
    # 2 processes drop the 4-block tail that one process trains on (every rank must step equally).
    assert [a + b for a, b in zip(*streamed, strict=True)] == single[:1] == [list(range(8, 16))]


def test_across_ranks_in_one_process_is_a_plain_map():
    from bitdistill.train.distributed import across_ranks, mean_across_ranks

    assert across_ranks(lambda xs: [x * x for x in xs], [3, 1, 2]) == [9, 1, 4]
    assert mean_across_ranks([1.5, -2.0]) == [1.5, -2.0]
