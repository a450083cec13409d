"""Layer selection: the relation-divergence criterion against a naive per-layer loop, and a tiny sweep."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import bitdistill
from bitdistill.data.encode import collate
from bitdistill.distill.capture import QKVCapture
from bitdistill.distill.layer_choice import map_layer, parse_layers, pick_layer, relation_divergences
from bitdistill.distill.losses import attention_relation_loss
from bitdistill.errors import BitDistillError
from tiny_models import tiny_model


def test_layer_specs():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0,-1, 2", 4) == [0, 2, 3]
    assert parse_layers("1:", 4) == [1, 2, 3] and parse_layers("::2", 5) == [0, 2, 4]
    for bad in ("7", "x", "3:1"):
        with pytest.raises(BitDistillError):
            parse_layers(bad, 4)
    assert [map_layer(i, 4, 4) for i in range(4)] == [0, 1, 2, 3]
    assert [map_layer(i, 3, 5) for i in range(3)] == [0, 2, 4]  # same relative depth
    assert map_layer(-1, 3, 7) == 6
    assert pick_layer({0: 0.1, 1: 0.3, 2: 0.3}) == 2  # ties go to the later layer


def _batches(n_batches: int = 2):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        feats = [{"input_ids": torch.randint(4, 128, (int(n),), generator=g).tolist()} for n in (9, 6, 4)]
        out.append(collate(feats, pad_id=1))  # right-padded: the relation loss must mask the padding
    return out


def _naive(teacher, student, batches, heads, mapping):
    """One forward pair per layer and batch, with a single capture: the loss the distill stage computes."""
    out = {}
    for i, j in mapping.items():
        total = 0.0
        for b in batches:
            with torch.no_grad(), QKVCapture(teacher, j) as tc, QKVCapture(student, i) as sc:
                teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                student(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                total += float(attention_relation_loss(tc.qkv, sc.qkv, b["attention_mask"], heads))
        out[i] = total / len(batches)
    return out


def test_relation_divergence_matches_naive_loop():
    teacher = tiny_model("llama", seed=0, num_hidden_layers=3).eval()
    student = bitdistill.to_bitnet(copy.deepcopy(teacher)).eval()
    batches = _batches()
    got = relation_divergences(teacher, student, batches, relation_heads=4)
    want = _naive(teacher, student, batches, 4, {0: 0, 1: 1, 2: 2})
    assert got == pytest.approx(want, rel=1e-5, abs=1e-9)
    assert all(v > 0 for v in got.values())
    # identical models: no divergence anywhere
    assert all(
        v == pytest.approx(0, abs=1e-6) for v in relation_divergences(teacher, teacher, batches, 4).values()
    )
    # a teacher of a different depth: student layer i is compared with teacher layer map_layer(i)
    deep = tiny_model("llama", seed=5, num_hidden_layers=5).eval()
    got = relation_divergences(deep, student, batches, relation_heads=2)
    assert got == pytest.approx(_naive(deep, student, batches, 2, {0: 0, 1: 2, 2: 4}), rel=1e-5)


def test_default_relation_heads_divide_gqa_widths():
    # SmolLM2's shape in small: 9 heads, q width 72, k/v width 24 -> A_r = 24, the largest divisor of
    # both widths that is <= 32 (the authors' split_head_number)
    kw = dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=2)
    teacher = tiny_model("llama", seed=0, **kw).eval()
    student = bitdistill.to_bitnet(copy.deepcopy(teacher)).eval()
    batches = _batches(1)
    got = relation_divergences(teacher, student, batches)
    assert got == pytest.approx(_naive(teacher, student, batches, 24, {0: 0, 1: 1}), rel=1e-5)


def test_choose_layer_maps_the_teacher_depth():
    from bitdistill.distill.layer_choice import choose_layer

    teacher = tiny_model("llama", seed=0, num_hidden_layers=4).eval()
    student = bitdistill.to_bitnet(tiny_model("llama", seed=0, num_hidden_layers=3)).eval()
    s_layer, t_layer, scores = choose_layer(teacher, student, _batches(1), relation_heads=4)
    assert s_layer == max(scores, key=lambda i: (scores[i], i)) and t_layer == map_layer(s_layer, 3, 4)
    assert set(scores) == {0, 1, 2}


def test_divergence_localises_a_perturbed_layer():
    teacher = tiny_model("llama", seed=1, num_hidden_layers=3).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        # a real change of direction (cosine relations ignore a mere rescaling such as k * -2)
        w = student.model.layers[1].self_attn.k_proj.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(9)) * w.std() * 2)
    got = relation_divergences(teacher, student, _batches(1), relation_heads=4)
    assert got[0] == pytest.approx(0, abs=1e-6)  # before the change nothing differs
    assert got[1] > 1e-3
    assert pick_layer(got) in (1, 2)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A tiny recipe (configs/tiny-test.yaml) swept over both student layers for 2 steps each."""
    from bitdistill.pipeline import load_recipe
    from bitdistill.pipeline.layer_sweep import sweep_layers
    from tiny_pipeline import build_world

    root = tmp_path_factory.mktemp("sweep")
    world = build_world(root / "world")
    cfg = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"
    recipe = load_recipe(cfg, [f"model={world['model']}", f"task.path={world['data']}",
                               f"continue_pretrain.corpus.sources=[{world['corpus']}]", f"output_dir={root / 'run'}",
                               "teacher.train.steps=3", "continue_pretrain.corpus.tokens=256",
                               "task.eval_limit=12"])  # fmt: skip
    result = sweep_layers(recipe, "all", steps=2, criterion_examples=16)
    return recipe, result, world


def test_sweep_runs_each_layer_through_the_distill_stage(tiny_sweep):
    from bitdistill.eval.evaluate import evaluate_dir

    recipe, result, world = tiny_sweep
    assert [e["student_layer"] for e in result["layers"]] == [0, 1]
    assert [e["teacher_layer"] for e in result["layers"]] == [0, 1]
    for e in result["layers"]:
        stage = json.loads(
            (recipe.out / "layer_sweep" / f"layer_{e['student_layer']}" / "stage.json").read_text()
        )
        assert stage["distill"]["student_layer"] == e["student_layer"] and stage["train"]["steps"] == 2
        # the sweep's number is the dev accuracy of that layer's model, as the evaluator computes it
        ev = evaluate_dir(
            e["model_dir"], "sst2", data=world["data"], limit=12, max_length=recipe.task.max_length
        )
        assert e["metric"] == pytest.approx(ev["metrics"]["accuracy"])
    best = max(result["layers"], key=lambda e: (e["metric"], e["student_layer"]))
    assert result["best_layer"] == best["student_layer"]
    crit = result["criterion"]
    scores = {int(k): v for k, v in crit["scores"].items()}
    assert set(scores) == {0, 1} and crit["pick"] == pick_layer(scores)
    assert set(crit["task_shift"]) == {"0", "1"}
    metric = {e["student_layer"]: e["metric"] for e in result["layers"]}
    assert crit["points_below_best"] == pytest.approx((result["best_metric"] - metric[crit["pick"]]) * 100)
    assert crit["within_0_5"] == (crit["points_below_best"] <= 0.5)
    on_disk = json.loads((recipe.out / "layer_sweep.json").read_text())
    assert on_disk["best_layer"] == result["best_layer"]


def test_sweep_resumes_without_retraining(tiny_sweep):
    from bitdistill.pipeline.layer_sweep import sweep_layers

    recipe, result, _ = tiny_sweep
    marker = recipe.out / "layer_sweep" / "layer_0" / "stage.json"
    before = marker.stat().st_mtime_ns
    again = sweep_layers(recipe, "0", steps=2, criterion=False)
    assert marker.stat().st_mtime_ns == before  # the finished layer was reused, not retrained
    assert again["layers"][0]["metric"] == result["layers"][0]["metric"]
    assert "criterion" not in again and again["best_layer"] == 0


def test_sweep_layers_cli_criterion_only(tiny_sweep, capsys):
    from bitdistill.cli import main

    recipe, _, world = tiny_sweep
    cfg = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"
    sets = [f"model={world['model']}", f"task.path={world['data']}", f"continue_pretrain.corpus.sources=[{world['corpus']}]",
            "teacher.train.steps=3", "continue_pretrain.corpus.tokens=256"]  # fmt: skip
    args = ["sweep-layers", str(cfg), "--output-dir", str(recipe.out), "--criterion-only", "--no-base",
            "--examples", "8", *[x for s in sets for x in ("--set", s)]]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    sweep = json.loads((recipe.out / "layer_sweep.json").read_text())
    assert all(e["metric"] is None for e in sweep["layers"]) and "best_layer" not in sweep
    assert f"picks layer {sweep['criterion']['pick']}" in out
    assert sweep["criterion"]["task_shift"] is None
    assert main([*args, "--no-criterion"]) == 2


def test_distill_student_layer_auto_distils_where_the_criterion_points(tiny_sweep, tmp_path):
    from bitdistill.pipeline.stages.distill import load_student, load_teacher, run_distill
    from bitdistill.pipeline.task_data import criterion_batches

    recipe, _, _ = tiny_sweep
    r = copy.deepcopy(recipe)
    r.distill.student_layer = "auto"
    r.distill.train = {**r.distill.train, "steps": 1}
    r.stage_dirs = {**r.stage_dirs, "distill": str(tmp_path / "auto")}
    run_distill(r)
    rec = json.loads((tmp_path / "auto" / "stage.json").read_text())["distill"]
    # Independently: the divergences of the same starting student and teacher on the same 64 examples.
    teacher, _ = load_teacher(r)
    student, tok = load_student(r)
    batches = criterion_batches(r, tok, 64, r.task.eval_batch_size)
    want = relation_divergences(teacher, student, batches, r.distill.relation_heads)
    got = {int(k): v for k, v in rec["layer_choice"]["scores"].items()}
    assert got == pytest.approx(want, rel=1e-4)
    assert rec["student_layer"] == max(want, key=lambda i: (want[i], i))
    assert rec["teacher_layer"] == rec["student_layer"]  # same depth: the identity mapping


def test_student_layer_must_be_an_index_or_auto():
    from bitdistill.errors import BitDistillError
    from bitdistill.pipeline import parse_recipe

    def recipe(layer):
        return parse_recipe({"continue_pretrain": {"enabled": False}, "distill": {"student_layer": layer}})

    assert recipe("auto").distill.student_layer == "auto"
    assert recipe(3).distill.student_layer == 3
    with pytest.raises(BitDistillError, match="distill.student_layer: expected a layer index or auto"):
        recipe("top")
