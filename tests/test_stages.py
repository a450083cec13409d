"""Each pipeline stage on a tiny random model: losses fall, switches compose the loss, CLI sub-commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bitdistill import load_recipe, parse_recipe, run_recipe
from bitdistill.data.task_record import task_record
from bitdistill.data.tasks import get_task
from bitdistill.errors import BitDistillError
from tiny_pipeline import build_model_dir, build_world

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"


def tiny_recipe(world: dict[str, Path], out: Path, **changes) -> dict:
    data = yaml.safe_load(CONFIG.read_text())
    data["model"] = str(world["model"])
    data["task"]["path"] = str(world["data"])
    data["continue_pretrain"]["corpus"]["sources"] = [str(world["corpus"])]
    data["output_dir"] = str(out)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def full_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    results = run_recipe(parse_recipe(tiny_recipe(world, out), "tiny"))
    return out, results


def losses(stage_dir: Path) -> list[float]:
    lines = (stage_dir / "train" / "log.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.parametrize("stage", ["teacher", "bitnet_sft", "continue_pretrain", "distill"])
def test_each_stage_loss_falls(full_run, stage):
    out, results = full_run
    curve = losses(out / stage)
    assert len(curve) >= 10
    # Compare the mean of the first and last three logged steps (single steps are noisy).
    assert sum(curve[-3:]) / 3 < 0.85 * sum(curve[:3]) / 3, curve
    record = results["stages"][stage]
    assert record["tokens_per_second"] > 0 and record["wall_seconds"] > 0
    assert (out / stage / "model" / "model.safetensors").is_file()


def test_stage_outputs_and_results(full_run):
    out, results = full_run
    cfg = json.loads((out / "bitnet_sft" / "model" / "config.json").read_text())
    assert cfg["bitdistill"]["subln"] == "all"  # BitNet stages write converted models (authors' allnorm)
    assert "bitdistill" not in json.loads((out / "teacher" / "model" / "config.json").read_text())
    # Task models record their task for classify/serve/pack; the stage-2 LM records none.
    for stage in ("teacher", "bitnet_sft", "distill"):
        saved = json.loads((out / stage / "model" / "config.json").read_text())
        assert saved["bitdistill_task"] == task_record(get_task("sst2")), stage
    assert "bitdistill_task" not in json.loads((out / "continue_pretrain" / "model" / "config.json").read_text())
    on_disk = json.loads((out / "results.json").read_text())
    for stage in ("teacher", "bitnet_sft", "distill"):
        acc = on_disk["stages"][stage]["eval"]["accuracy"]
        assert 0.0 <= acc <= 1.0 and on_disk["stages"][stage]["eval"]["n"] == 24
    # Paper defaults are replaced by the recipe's explicit weights; A_r as configured.
    assert on_disk["stages"]["distill"]["distill"]["lambda"] == 1.0
    assert on_disk["stages"]["distill"]["distill"]["relation_heads"] == 4


def test_finished_stages_are_skipped(full_run, world):
    out, _ = full_run
    before = (out / "distill" / "stage.json").stat().st_mtime_ns
    results = run_recipe(parse_recipe(tiny_recipe(world, out), "tiny"))
    assert (out / "distill" / "stage.json").stat().st_mtime_ns == before
    assert results["stages"]["distill"]["eval"]["accuracy"] >= 0


def test_distill_with_only_ce_is_bitnet_sft(full_run, world, tmp_path):
    """With LD and AD off and no continued pre-training, distillation must reduce to BitNet-SFT exactly."""
    out, _ = full_run
    same = {"steps": 10}
    recipe = parse_recipe(
        tiny_recipe(
            world, tmp_path, teacher__enabled=False, bitnet_sft__enabled=False, continue_pretrain__enabled=False,
            distill__logits=False, distill__attention=False, distill__teacher=str(out / "teacher" / "model"),
            distill__train=same, eval__enabled=False,
        ),
        "ablation",
    )  # fmt: skip
    run_recipe(recipe)
    a = load_file(out / "bitnet_sft" / "model" / "model.safetensors")
    b = load_file(tmp_path / "distill" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ablation_switches_change_the_loss(full_run, world, tmp_path):
    out, _ = full_run
    teacher = str(out / "teacher" / "model")
    base = dict(teacher__enabled=False, bitnet_sft__enabled=False, continue_pretrain__enabled=False,
                distill__teacher=teacher, distill__train={"steps": 2}, eval__enabled=False)  # fmt: skip
    parts = {}
    for name, flags in {
        "ld_only": {"distill__attention": False},
        "ad_only": {"distill__logits": False},
    }.items():
        run_recipe(parse_recipe(tiny_recipe(world, tmp_path / name, **base, **flags), name))
        log = [
            json.loads(x)
            for x in (tmp_path / name / "distill" / "train" / "log.jsonl").read_text().splitlines()
        ]
        parts[name] = log[0]
    assert parts["ld_only"]["kd"] > 0 and parts["ld_only"]["ad"] == 0
    assert parts["ad_only"]["ad"] > 0 and parts["ad_only"]["kd"] == 0
    # total = CE + λ·KD + γ·AD with the recipe's λ = 1, γ = 10
    for p in parts.values():
        assert p["loss"] == pytest.approx(p["ce"] + 1.0 * p["kd"] + 10.0 * p["ad"], rel=1e-5)


def test_larger_teacher_with_same_tokenizer(world, tmp_path):
    big = build_model_dir(tmp_path / "big", seed=1, hidden=96, layers=3)
    recipe = parse_recipe(
        tiny_recipe(
            world, tmp_path / "run", bitnet_sft__enabled=False, continue_pretrain__enabled=False,
            teacher__model=str(big), teacher__train={"steps": 3}, distill__train={"steps": 3},
            distill__relation_heads=None, distill__teacher_layer=1, eval__enabled=False,
        ),
        "big-teacher",
    )  # fmt: skip
    results = run_recipe(recipe)
    # q/k/v widths: student 64/32/32, teacher 96/48/48 -> A_r = largest divisor of gcd 16 that is <= 32.
    assert results["stages"]["distill"]["distill"]["relation_heads"] == 16


def test_recipe_errors_name_the_field(world, tmp_path):
    good = tiny_recipe(world, tmp_path)
    bad = {**good, "distill": {**good["distill"], "temprature": 2}}
    with pytest.raises(
        BitDistillError, match=r"tiny: distill\.temprature: unknown field; did you mean 'temperature'"
    ):
        parse_recipe(bad, "tiny")
    bad = {**good, "distill": {**good["distill"], "train": {"lr": "fast"}}}
    with pytest.raises(BitDistillError, match=r"distill\.train\.lr: expected a number, got 'fast'"):
        parse_recipe(bad, "tiny")
    bad = {**good, "continue_pretrain": {"corpus": {"sources": [], "tokens": "2M"}}}
    with pytest.raises(BitDistillError, match=r"continue_pretrain\.corpus\.sources: empty"):
        parse_recipe(bad, "tiny")
    bad = {**good, "continue_pretrain": {"corpus": {"sources": ["x"], "tokens": "lots"}}}
    with pytest.raises(BitDistillError, match=r"continue_pretrain\.corpus\.tokens: expected a count"):
        parse_recipe(bad, "tiny")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("distill", "kd_positions", "prompt"), ("distill", "relation", "dot"), ("distill", "qkv_source", "rope"),
     ("bitnet", "subln", "everywhere")],
)  # fmt: skip
def test_unknown_values_of_the_faithfulness_options_fail_before_training(world, tmp_path, section, key, value):
    data = tiny_recipe(world, tmp_path)
    data[section] = {**data.get(section, {}), key: value}
    with pytest.raises(BitDistillError, match=rf"^tiny: {section}\.{key}: '{value}' is not one of"):
        parse_recipe(data, "tiny")
    assert not (tmp_path / "teacher").exists()


def test_non_utf8_recipe_is_one_line(tmp_path, capsys):
    from bitdistill.cli import main

    bad = tmp_path / "r.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "r.yaml: not UTF-8 text" in err and "Traceback" not in err


def test_faithful_defaults_and_the_teacher_start(world, tmp_path):
    r = parse_recipe(tiny_recipe(world, tmp_path), "tiny")
    assert (r.distill.kd_positions, r.distill.relation, r.distill.qkv_source) == ("all", "cosine", "attention")
    assert parse_recipe({"continue_pretrain": {"enabled": False}}, "x").bitnet.subln == "all"


def test_distill_student_teacher_starts_from_the_ternarized_teacher(full_run, world, tmp_path):
    from bitdistill.model import SubLNBitLinear
    from bitdistill.pipeline.stages.distill import load_student

    out, _ = full_run
    data = tiny_recipe(world, out, continue_pretrain__enabled=False, distill__student="teacher")
    student, _ = load_student(parse_recipe(data, "tiny"))
    teacher = AutoModelForCausalLM.from_pretrained(out / "teacher" / "model")
    layer = student.model.layers[0].self_attn.q_proj
    assert isinstance(layer, SubLNBitLinear)  # stage 1 with the recipe's allnorm
    assert torch.equal(layer.weight, teacher.model.layers[0].self_attn.q_proj.weight)  # the teacher's weights


def test_recipe_values_parse(world, tmp_path):
    data = tiny_recipe(world, tmp_path)
    data["continue_pretrain"]["corpus"]["tokens"] = "2M"
    data["distill"]["gamma_attention"] = "1e5"  # YAML 1.1 reads 1e5 as a string
    data["distill"]["lambda_logits"] = None
    r = parse_recipe(data, "tiny")
    assert r.continue_pretrain.corpus.tokens == 2_000_000
    assert r.distill.weights("classification") == (10.0, 1e5)
    assert r.distill.weights("summarization")[0] == 1.0
    r.distill.gamma_attention = None
    assert r.distill.weights("summarization") == (1.0, 1e3)


def test_every_shipped_config_validates():
    for path in sorted(CONFIG.parent.glob("*.yaml")):
        recipe = load_recipe(path)
        assert recipe.name and recipe.task.name


def test_stage_subcommands(world, tmp_path):
    from bitdistill.cli import main

    common = ["--model", str(world["model"]), "--task", "sst2", "--data", str(world["data"]), "--max-length", "24",
              "--batch-size", "4", "--set", "train.progress=false"]  # fmt: skip
    assert main(["teacher", *common, "--out", str(tmp_path / "t"), "--steps", "3", "--lr", "1e-3"]) == 0
    assert (tmp_path / "t" / "model" / "config.json").is_file()
    assert main(["sft", *common, "--out", str(tmp_path / "s"), "--steps", "2"]) == 0
    pre = [
        "pretrain",
        "--model",
        str(world["model"]),
        "--corpus",
        str(world["corpus"]),
        "--tokens",
        "256",
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "p"),
        "--set",
        "train.progress=false",
    ]
    assert main(pre) == 0
    assert json.loads((tmp_path / "p" / "stage.json").read_text())["train"]["steps"] == 4  # 256 / (4·16)
    assert main(["distill", *common, "--out", str(tmp_path / "d"), "--steps", "2", "--teacher",
                 str(tmp_path / "t" / "model"), "--student", str(tmp_path / "p" / "model"),
                 "--relation-heads", "2"]) == 0  # fmt: skip
    rec = json.loads((tmp_path / "d" / "stage.json").read_text())
    assert rec["distill"]["relation_heads"] == 2 and rec["distill"]["lambda"] == 10.0
    # A missing teacher is a clear error, not a traceback.
    assert main(["distill", *common, "--out", str(tmp_path / "d2"), "--teacher", str(tmp_path / "nope")]) == 2
