"""FSDP2 training with 2 CPU processes (`accelerate launch --config_file configs/accelerate/fsdp.yaml`, gloo,
loopback) against 1 process at the same global batch (2 x 4 = 1 x 8 examples per optimizer step).

accelerate itself runs FSDP only on CUDA, so bitdistill shards with torch's `fully_shard` (train/sharding.py);
these tests run that path. The pipeline run trains BitNet-SFT (best-checkpoint selection on) and distill
(teacher sharded too) from the same starting weights in both runs (the base model, and its stage-1
conversion as the distill student), and the 2-process run is SIGKILLed after distill step 5 and relaunched,
so distill's last steps come from a sharded resume. Compared:
- every logged step's loss: relative difference <= LOSS_RTOL (measured ~1e-7);
- the saved models' weights (gathered full state dicts): max absolute difference <= WEIGHT_ATOL (measured
  < 1e-6: the only difference is the order of floating-point sums, as with DDP in test_multiprocess.py);
- dev accuracy: equal; the saved models load strictly and carry the plain architecture name;
- rank 1 writes nothing in the run directory (besides its checkpoint RNG state).
tests/fsdp_worker.py checks the pieces one by one against an unsharded copy (tolerances below).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_multiprocess import ACCELERATE, ROOT, launch, losses, run_one_process, weights
from tiny_pipeline import build_world

FSDP = ROOT / "configs" / "accelerate" / "fsdp.yaml"
STAGES = ("bitnet_sft", "distill")
LOSS_RTOL = 1e-3
WEIGHT_ATOL = 2e-3
EXACT = 1e-6  # sharded vs unsharded forward, capture, gradients: the same sums up to reduction order

pytestmark = pytest.mark.skipif(not ACCELERATE.is_file(), reason="accelerate's launcher is not installed")


def recipe_args(world: dict[str, Path], out: Path, *more: str) -> list[str]:
    return ["run", str(ROOT / "configs" / "tiny-test.yaml"), "--output-dir", str(out),
            "--set", f"model={world['model']}", "--set", f"task.path={world['data']}",
            "--set", "teacher.enabled=false", "--set", "continue_pretrain.enabled=false",
            "--set", f"distill.teacher={world['model']}", "--set", "eval.stages=[bitnet_sft,distill]",
            "--set", "bitnet_sft.train.steps=6", "--set", "distill.train.steps=6",
            "--set", "bitnet_sft.train.select=best", "--set", "bitnet_sft.train.eval_every=2",
            *more]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def one(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    run_one_process(recipe_args(world, out))
    return out


@pytest.fixture(scope="module")
def two(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    args = [str(ROOT / "tests" / "rank_audit.py"),
            *recipe_args(world, out, "--set", "train.batch_size=4", "--set", "distill.teacher_sharding=sharded")]  # fmt: skip
    killed = launch(args, 2, FSDP, BITDISTILL_AUDIT_ROOT=str(out), BITDISTILL_FAULT="distill:step:5")
    assert killed.returncode != 0
    assert (out / "distill" / "train" / "LATEST").read_text().strip() == "ckpt-000003"
    resumed = launch(args, 2, FSDP, BITDISTILL_AUDIT_ROOT=str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return out, killed.stderr + resumed.stderr


def test_fsdp_run_trains_like_one_process_at_the_same_global_batch(one, two):
    two, stderr = two
    # It really sharded: the student of both stages and the distill teacher.
    assert "[bitnet_sft] FSDP: the model is sharded over 2 processes" in stderr
    assert "[distill] FSDP: the model is sharded over 2 processes" in stderr
    assert "[distill] the teacher is sharded over 2 processes" in stderr
    assert "[distill] resuming from" in stderr and "ckpt-000003 (step 3/6)" in stderr
    for stage in STAGES:
        a, b = losses(one, stage), losses(two, stage)
        assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7)), stage
        for (step, x), (_, y) in zip(a, b, strict=True):
            assert abs(x - y) <= LOSS_RTOL * abs(x), (
                f"{stage} step {step}: loss {x} (1 process) vs {y} (FSDP)"
            )
        wa, wb = weights(one, stage), weights(two, stage)
        assert wa.keys() == wb.keys()
        worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
        assert worst <= WEIGHT_ATOL, f"{stage}: final weights differ by {worst}"
    # Best-checkpoint selection wrote gathered weights and restored them before the model was saved.
    best = load_file(two / "bitnet_sft" / "train" / "best.safetensors")
    saved = weights(two, "bitnet_sft")
    assert best.keys() == saved.keys() and all(torch.equal(best[k], saved[k]) for k in best)
    ra, rb = (json.loads((r / "results.json").read_text())["stages"] for r in (one, two))
    for stage in STAGES:
        assert ra[stage]["eval"]["accuracy"] == rb[stage]["eval"]["accuracy"], stage
        assert rb[stage]["eval"]["n"] == 24, stage


def test_fsdp_saves_ordinary_models_and_only_rank_zero_writes(world, two):
    from bitdistill.model.io import load

    two, _ = two
    audit = two.parent / "writes-1"
    assert not audit.exists() or audit.read_text() == "", audit.read_text()
    for stage in STAGES:
        config = json.loads((two / stage / "model" / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"], stage  # not the FSDP wrapper's class
        model = load(two / stage / "model")  # strict: every weight present, none extra
        ckpt = load_file(next((two / stage / "train").glob("ckpt-*")) / "model.safetensors")
        assert ckpt.keys() == {k for k in weights(two, stage)}, stage
        ids = torch.tensor([[5, 6, 7, 8]])
        assert torch.isfinite(model(input_ids=ids).logits).all()
        files = sorted(p.name for p in next((two / stage / "train").glob("ckpt-*")).glob("rng_*.pt"))
        assert files == ["rng_0.pt", "rng_1.pt"], stage


def test_sharded_pieces_match_the_unsharded_model(tmp_path):
    out = tmp_path / "out.json"
    proc = launch([str(ROOT / "tests" / "fsdp_worker.py"), str(out)], 2, FSDP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["plan"]
    assert all(abs(f - 0.5) < 0.01 for f in r["local_fractions"]), r["local_fractions"]  # half on each rank
    assert r["tied_after_sharding"] and r["still_tied"]
    # BitLinear ternarizes the whole matrix: FSDP hands it the all-gathered weight, not a shard.
    assert r["seen"] == [[r["full_shape"], "Parameter"]]
    assert r["logits_diff"] <= EXACT and r["qkv_diff"] <= EXACT  # MiniLM capture on a wrapped layer
    assert r["grad_diff"] <= EXACT  # mean of two half-batch gradients (reduce-scatter) = the whole batch's
    assert r["gathered_keys"] == r["save_model_keys"]  # tied embeddings written once, as one process does
    assert r["optimizer_entries"] == len(r["gathered_keys"])
    assert r["load_missing"] == [[], []]
    assert r["weights_roundtrip"] == 0.0 and r["moments_roundtrip"] == 0.0  # resume restores exactly
    assert r["eval_diff"] <= EXACT  # 3 items over 2 ranks: no rank waits for a forward that never comes
    assert r["teacher_diff"] == 0.0  # a bf16 teacher sharded: the same forward as replicated


def test_fsdp_plan_reads_the_launch_and_refuses_fsdp1():
    from bitdistill.errors import BitDistillError
    from bitdistill.train.sharding import ShardingPlan, fsdp_plan

    assert fsdp_plan({}) is None
    assert fsdp_plan({"ACCELERATE_USE_FSDP": "false"}) is None
    assert fsdp_plan({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}) == ShardingPlan()
    got = fsdp_plan({"ACCELERATE_USE_FSDP": "true", "FSDP_RESHARD_AFTER_FORWARD": "false",
                     "FSDP_OFFLOAD_PARAMS": "true"})  # fmt: skip
    assert got == ShardingPlan(reshard_after_forward=False, offload_params=True)
    with pytest.raises(BitDistillError, match="FSDP_VERSION=1 .*fsdp_version: 2"):
        fsdp_plan({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})


def test_the_fsdp_config_file_asks_for_fsdp2():
    import yaml

    from bitdistill.train.sharding import fsdp_plan

    cfg = yaml.safe_load(FSDP.read_text())
    assert cfg["distributed_type"] == "FSDP"
    fsdp = cfg["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False  # else transformers loads weights on rank 0 only
    launched = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": str(fsdp["fsdp_version"]),
                "FSDP_RESHARD_AFTER_FORWARD": str(fsdp["fsdp_reshard_after_forward"]).lower(),
                "FSDP_OFFLOAD_PARAMS": str(fsdp["fsdp_offload_params"]).lower()}  # fmt: skip
    assert fsdp_plan(launched) is not None


def test_teacher_sharding_is_checked_before_training_and_left_out_of_the_fingerprint(tmp_path, capsys):
    from bitdistill.cli import main
    from bitdistill.config.recipe import load_recipe
    from bitdistill.pipeline.fingerprint import stage_fingerprint

    recipe = ROOT / "configs" / "tiny-test.yaml"
    assert main(["run", str(recipe), "--check", "--set", "distill.teacher_sharding=halves"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "distill.teacher_sharding: 'halves' is not one of replicated, sharded" in err[0]
    # Where the teacher's weights live does not change what the stage computes: same fingerprint.
    sets = ["model=m", "task.path=d", "continue_pretrain.corpus.sources=[c]", "distill.teacher=t"]
    plain = load_recipe(recipe, sets)
    sharded = load_recipe(recipe, [*sets, "distill.teacher_sharding=sharded"])
    assert stage_fingerprint(plain, "distill") == stage_fingerprint(sharded, "distill")
