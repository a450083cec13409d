"""benchmarks/quality_summary.py: seed rows grouped with their main row, means and the issue's targets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_summary.py"


def load():
    spec = importlib.util.spec_from_file_location("quality_summary", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ev(acc):
    return {"eval": {"accuracy": acc, "accuracy_ci95": [acc - 0.02, acc + 0.02], "n": 872}, "steps": 150,
            "wall_seconds": 600.0}  # fmt: skip


def test_means_over_seeds_and_targets(tmp_path, capsys):
    results = {
        "seed": 42,
        "stages": {"teacher": ev(0.88), "bitnet_sft": ev(0.70), "distill": ev(0.85)},
        "ablations": {"BitNet-SFT, seed 43": ev(0.72), "BitDistill, seed 43": ev(0.87), "LD only": ev(0.8)},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    mod = load()
    assert mod.main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "quality_summary.json").read_text())
    means = summary["means"]
    assert means["BitNet-SFT"]["mean"] == pytest.approx(0.71) and means["BitNet-SFT"]["seeds"] == 2
    assert means["BitDistill"]["mean"] == pytest.approx(0.86) and means["FP16-SFT"]["seeds"] == 1
    t = summary["targets"]
    assert t["bitdistill_minus_teacher_points"] == pytest.approx(-2.0)
    assert t["within_2_points_of_teacher"] is True  # -2.0 is on the line
    assert t["bitdistill_minus_bitnet_sft_points"] == pytest.approx(15.0)
    by = {r["label"]: r for r in summary["rows"]}
    assert by["LD only"]["group"] == "LD only" and by["BitDistill, seed 43"]["seed"] == 43
    out = capsys.readouterr().out
    assert "| BitDistill, seed 43 | 43 | 87.00 [85.0–89.0] | -1.00 | 150 | 10.0 min |" in out


def test_an_ablation_row_with_a_second_seed_gets_a_mean(tmp_path):
    results = {
        "seed": 42,
        "stages": {"teacher": ev(0.88), "bitnet_sft": ev(0.50), "distill": ev(0.50)},
        "ablations": {"SubLN": ev(0.54), "SubLN, seed 43": ev(0.50), "LD only": ev(0.48)},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert load().main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "quality_summary.json").read_text())
    assert summary["means"]["SubLN"]["mean"] == pytest.approx(0.52) and summary["means"]["SubLN"]["seeds"] == 2
    assert "LD only" not in summary["means"]  # one seed: its row is the number, no mean
    by = {r["label"]: r for r in summary["rows"]}
    assert by["SubLN, seed 43"]["group"] == "SubLN" and by["SubLN, seed 43"]["seed"] == 43


def test_missing_results_is_exit_2(tmp_path):
    assert load().main([str(tmp_path)]) == 2
