"""The comparison table and report from a fixture results file, against hand-computed numbers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import bitdistill
from bitdistill.cli import main
from bitdistill.errors import BitDistillError
from bitdistill.report.run_report import build_report, write_report
from tiny_models import COMMON, save_tiny_hf_dir, tiny_model, tiny_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "report"


def build_run(root: Path) -> Path:
    """A finished run directory: the fixture results.json and logs, and tiny model directories."""
    run = root / "run"
    run.mkdir(parents=True)
    results = json.loads((FIXTURE / "results_fixture.json").read_text())
    base = save_tiny_hf_dir(root / "base", "llama", seed=0)
    results["model"] = str(root / "base")
    (run / "results.json").write_text(json.dumps(results))
    for stage in ("teacher", "bitnet_sft", "continue_pretrain", "distill"):
        (run / stage / "train").mkdir(parents=True)
        shutil.copy(FIXTURE / "logs" / f"{stage}.jsonl", run / stage / "train" / "log.jsonl")
    bitdistill.save(tiny_model("llama", seed=1), run / "teacher" / "model", tokenizer=tiny_tokenizer())
    for seed, stage in enumerate(("bitnet_sft", "distill"), start=2):
        bitdistill.save(bitdistill.to_bitnet(tiny_model("llama", seed=seed)), run / stage / "model")
    # "continued pre-training": the base weights pushed away from zero, so the histograms differ
    with torch.no_grad():
        for p in base.parameters():
            if p.dim() == 2:
                p.add_(0.5 * p.abs().mean() * torch.sign(p))
    bitdistill.save(bitdistill.to_bitnet(base), run / "continue_pretrain" / "model")
    return run


def hand_sizes() -> dict[str, dict[str, int]]:
    """Parameter counts and bytes of the tiny Llama (tests/tiny_models.py COMMON) written out by hand."""
    h, inter, n, vocab = (
        COMMON["hidden_size"],
        COMMON["intermediate_size"],
        COMMON["num_hidden_layers"],
        COMMON["vocab_size"],
    )
    kv = COMMON["num_key_value_heads"] * (h // COMMON["num_attention_heads"])
    linear = n * (h * h + 2 * h * kv + h * h + 3 * h * inter)  # q, k, v, o, gate, up, down
    fp_total = (
        linear + 2 * vocab * h + n * 2 * h + h
    )  # + embeddings, untied LM head, 2 norms/block, final norm
    bit_total = fp_total + n * (h + inter)  # + SubLN before o_proj (h) and before down_proj (inter)
    scales = 7 * n  # one fp32 scale per ternary matrix (tensor granularity)
    two = math.ceil(linear * 2 / 8) + 4 * scales
    five = math.ceil(linear * 1.6 / 8) + 4 * scales
    fp = {"linear_fp16": 2 * linear, "model_fp16": 2 * fp_total}
    bit = {"linear_fp16": 2 * linear, "model_fp16": 2 * bit_total, "linear_2bit": two, "linear_1.58bit": five,
           "model_2bit": two + 2 * (bit_total - linear), "model_1.58bit": five + 2 * (bit_total - linear)}  # fmt: skip
    return {"fp": fp, "bit": bit, "linear": linear, "fp_total": fp_total, "bit_total": bit_total}


def kib(b: int) -> str:
    return f"{b / 1024:.1f} KiB"


def _table_rows(md: str) -> dict[str, list[str]]:
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_comparison_table_from_fixture(tmp_path):
    run = build_run(tmp_path)
    md, report = build_report(run, plots=False)
    s = hand_sizes()
    fp, bit = s["fp"], s["bit"]
    head = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert head == ("| Method | Accuracy | Macro-F1 | Δ Accuracy vs FP16-SFT | Linear FP16 | Linear 2-bit | "
                    "Linear 1.58-bit | Model FP16 | Model 2-bit | Model 1.58-bit |")  # fmt: skip
    rows = _table_rows(md)
    # accuracies 791, 697, 777, 760 of 872; gap = (row - teacher) / 872 * 100 points
    assert rows["FP16-SFT"] == ["90.71", "90.68", "+0.00", kib(fp["linear_fp16"]), "—", "—",
                                kib(fp["model_fp16"]), "—", "—"]  # fmt: skip
    bit_cells = [kib(bit[k]) for k in ("linear_fp16", "linear_2bit", "linear_1.58bit", "model_fp16", "model_2bit",
                                       "model_1.58bit")]  # fmt: skip
    assert rows["BitNet-SFT"] == ["79.93", "79.81", f"{(697 - 791) / 872 * 100:+.2f}", *bit_cells]
    assert rows["BitNet-SFT"][2] == "-10.78"
    assert rows["BitDistill"] == ["89.11", "89.05", "-1.61", *bit_cells]
    assert rows["BitDistill (LD only)"] == ["87.16", "87.02", "-3.56", *bit_cells]
    assert list(rows)[:4] == ["FP16-SFT", "BitNet-SFT", "BitDistill", "BitDistill (LD only)"]
    # the gap closed: (777 - 697) / (791 - 697)
    assert f"**{80 / 94 * 100:.1f} %**" in md
    assert report["report"]["gap_closed"] == pytest.approx(80 / 94)

    by = {r["label"]: r for r in report["report"]["rows"]}
    assert by["FP16-SFT"]["params"]["linear_params"] == s["linear"]
    assert by["FP16-SFT"]["params"]["total_params"] == s["fp_total"]
    assert by["BitDistill"]["params"]["total_params"] == s["bit_total"]
    assert {k: by["BitDistill"]["memory_bytes"][k] for k in bit} == bit
    assert {k: by["FP16-SFT"]["memory_bytes"][k] for k in fp} == fp
    assert by["BitNet-SFT"]["gap"]["accuracy"] == pytest.approx((697 - 791) / 872 * 100)
    assert by["BitNet-SFT"]["gap"]["macro_f1"] == pytest.approx((0.7981 - 0.9068) * 100)
    # the training table
    assert "| teacher | 120 | 61,440 | 10.0 min | 102 | 2.5000 → 0.2500 |" in md
    assert "| continue_pretrain | 118 | 120,832 | 20.0 min | 101 | 7.0000 → 4.0000 |" in md
    assert "λ = 10.0, γ = 100000.0, τ = 5.0, relation heads A_r = 4, student layer -1" in md
    # report.json is results.json plus the report
    results = json.loads((run / "results.json").read_text())
    assert all(report[k] == results[k] for k in results)


def test_write_report_files_and_extra_run(tmp_path):
    run = build_run(tmp_path)
    # Another run: no continued pre-training, attention distillation only (lambda = 0)
    other = tmp_path / "ablation"
    other.mkdir()
    rec = {"model_dir": str(run / "distill" / "model"),
           "eval": {"accuracy": 700 / 872, "accuracy_ci95": [0.7752, 0.8291], "n": 872},
           "distill": {"lambda": 0.0, "gamma": 1e5, "ce": True}}  # fmt: skip
    (other / "results.json").write_text(json.dumps({"stages": {"teacher": {}, "distill": rec}}))
    report = write_report(run, extra_runs=[(None, other, "distill")], plots=False)
    md = (run / "report.md").read_text()
    label = "BitDistill (w/o continued pre-training, AD only)"
    assert label in _table_rows(md)
    assert _table_rows(md)[label][:3] == ["80.28 [77.5–82.9]", "—", f"{(700 - 791) / 872 * 100:+.2f}"]
    assert json.loads((run / "report.json").read_text()) == json.loads(json.dumps(report))
    assert [r["label"] for r in report["report"]["rows"]][-1] == label


def test_report_cli_and_errors(tmp_path, capsys):
    run = build_run(tmp_path)
    assert main(["report", str(run), "--no-plots"]) == 0
    assert (run / "report.md").is_file()
    assert "BitDistill" in capsys.readouterr().out
    with pytest.raises(BitDistillError, match="results.json: missing"):
        build_report(tmp_path / "nowhere", plots=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.json").write_text(json.dumps({"stages": {"teacher": {"steps": 3}}}))
    with pytest.raises(BitDistillError, match="no stage has an evaluation"):
        build_report(tmp_path / "empty", plots=False)
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert main(["report", str(run), "--add", "x=" + str(tmp_path / "nowhere")]) == 2


def test_layer_sweep_section(tmp_path):
    run = build_run(tmp_path)
    layers = [{"student_layer": i, "teacher_layer": i, "metric": m, "criterion": c, "task_shift": t}
              for i, (m, c, t) in enumerate([(0.80, 0.1, 0.5), (0.85, 0.3, 0.2), (0.846, 0.4, 0.1)])]  # fmt: skip
    crit = {"name": "relation_divergence_at_init", "pick": 2, "points_below_best": 0.4, "within_0_5": True,
            "task_shift_pick": 0, "task_shift_points_below_best": 5.0}  # fmt: skip
    sweep = {"task": "sst2", "metric_name": "accuracy", "layers": layers, "best_layer": 1, "criterion": crit}
    (run / "layer_sweep.json").write_text(json.dumps(sweep))
    md, report = build_report(run, plots=False)
    assert "| 1 | 1 | 85.00 | 0.3 | 0.2 |" in md
    assert "Best layer by sweep: **1**." in md
    assert "picks layer **2**: 0.40 points below the sweep's best (within 0.5 points)." in md
    assert "picks layer **0**: 5.00 points below" in md
    assert report["report"]["layer_sweep"] == sweep


def test_ablation_labels_from_what_a_run_left_out():
    from bitdistill.report.run_report import describe_variant

    def res(settings, ct=True):
        stages = {"teacher": {}, "distill": {"distill": settings}}
        if ct:
            stages["continue_pretrain"] = {}
        return {"stages": stages}

    full = {"lambda": 10.0, "gamma": 1e5, "ce": True}
    assert describe_variant(res(full)) == "BitDistill (variant)"
    assert describe_variant(res(full, ct=False)) == "BitDistill (w/o continued pre-training)"
    assert describe_variant(res({**full, "gamma": 0.0})) == "BitDistill (LD only)"
    assert describe_variant(res({**full, "lambda": 0.0})) == "BitDistill (AD only)"
    assert describe_variant(res({**full, "lambda": 0.0, "gamma": 0.0})) == "BitDistill (w/o distillation)"
    assert describe_variant(res({**full, "ce": False})) == "BitDistill (w/o CE)"
    assert describe_variant(res(full), stage="bitnet_sft") == "BitNet-SFT"


def test_stages_missing_from_results_are_read_from_their_directories(tmp_path):
    """`bitdistill run --only ...` invocations each write their own results.json: the report merges the
    finished stage directories (stage.json + eval.json) in."""
    run = build_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    del results["stages"]["bitnet_sft"]
    (run / "results.json").write_text(json.dumps(results))
    stage = {"stage": "bitnet_sft", "model_dir": "bitnet_sft/model", "wall_seconds": 60.0,
             "train": {"steps": 7, "tokens": 700, "tokens_per_second": 11.7, "first_loss": 5.0, "last_loss": 1.0}}  # fmt: skip
    (run / "bitnet_sft" / "stage.json").write_text(json.dumps(stage))
    (run / "bitnet_sft" / "eval.json").write_text(
        json.dumps({"key": {}, "metrics": {"accuracy": 0.5, "n": 872}})
    )
    md, report = build_report(run, plots=False)
    rows = _table_rows(md)
    assert list(rows)[:3] == ["FP16-SFT", "BitNet-SFT", "BitDistill"]
    assert rows["BitNet-SFT"][:3] == ["50.00", "—", f"{(0.5 - 791 / 872) * 100:+.2f}"]
    assert "| bitnet_sft | 7 | 700 | 1.0 min | 12 | 5.0000 → 1.0000 |" in md
    assert list(report["stages"]) == ["teacher", "bitnet_sft", "continue_pretrain", "distill"]
    # no results.json at all: the stage directories alone make a report
    (run / "results.json").unlink()
    md, _ = build_report(run, plots=False)
    assert _table_rows(md)["BitNet-SFT"][0] == "50.00"


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma3"])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_parameter_counts_from_config_match_a_real_model(tmp_path, family, granularity):
    """The config-only (meta device) counts equal those of the saved, converted model itself."""
    from bitdistill.eval.memory import model_memory
    from bitdistill.quant import BitLinear

    model = bitdistill.to_bitnet(tiny_model(family, seed=0), granularity=granularity, group_size=32)
    bitdistill.save(model, tmp_path / "m")
    mem = model_memory(tmp_path / "m")
    linears = [m for m in model.modules() if isinstance(m, BitLinear)]
    linear = sum(m.weight.numel() for m in linears)
    total = sum(p.numel() for p in model.parameters())
    scales = sum(m.ternary_weight()[1].numel() for m in linears)  # the scales BitLinear really uses
    assert mem["counts"]["linear_params"] == linear
    assert mem["counts"]["total_params"] == total
    assert mem["counts"]["num_scales"] == scales
    assert mem["bytes"]["model_1.58bit"] == math.ceil(linear * 1.6 / 8) + 4 * scales + 2 * (total - linear)
