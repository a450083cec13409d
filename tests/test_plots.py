"""Report figures are written as valid, non-empty PNGs; the histogram statistics match a naive count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bitdistill.errors import BitDistillError
from bitdistill.report.plots import (
    block_weights,
    plot_layer_sweep,
    plot_training_curves,
    read_log,
    weight_stats,
    write_run_plots,
)
from test_report import FIXTURE, build_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 5  # something is drawn, not a blank canvas


def test_read_log_skips_cut_line():
    recs = read_log(FIXTURE / "logs" / "distill.jsonl")
    assert [r["step"] for r in recs] == [1, 5, 10, 20, 40, 60, 80, 100, 120]


def test_training_curves_png(tmp_path):
    logs = {s: read_log(FIXTURE / "logs" / f"{s}.jsonl") for s in ("teacher", "continue_pretrain", "distill")}
    out = plot_training_curves(logs, tmp_path / "curves.png")
    assert_png(out)
    with pytest.raises(BitDistillError, match="no training log"):
        plot_training_curves({"x": [{"step": 1, "eval_accuracy": 0.5}]}, tmp_path / "none.png")


def test_run_plots_and_weight_stats(tmp_path):
    run = build_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    sweep = {"task": "sst2", "layers": [{"student_layer": 0, "metric": 0.81, "criterion": 0.3},
                                        {"student_layer": 1, "metric": 0.84, "criterion": 0.5}],
             "best_layer": 1, "criterion": {"name": "relation_divergence", "pick": 1}}  # fmt: skip
    made, notes = write_run_plots(run, results, sweep, histogram_layer=-1)
    assert made == {"training_curves": "training_curves.png", "weight_histogram": "weight_histogram.png",
                    "layer_sweep": "layer_sweep.png"}  # fmt: skip
    for name in made.values():
        assert_png(run / name)
    # the weights plotted are the base model's (before) and the continued pre-training output's (after)
    before = block_weights(tmp_path / "base", 1)
    after = block_weights(run / "continue_pretrain" / "model", 1)
    assert list(before) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert not torch.equal(before["q_proj"], after["q_proj"])
    # naive statistics of the tensor-granularity ternarization: round(W / mean|W|) clipped to [-1, 1]
    w = after["down_proj"]
    x = w / w.abs().mean()
    zeros = float((x.abs() < 0.5).float().mean())
    assert weight_stats(x.flatten())["0"] == pytest.approx(zeros)
    assert "| down_proj | " in notes["weight_histogram"]
    assert f"{zeros:.1%} |" in notes["weight_histogram"].split("| down_proj |")[1].splitlines()[0]


def test_layer_sweep_png_and_empty_sweep(tmp_path):
    sweep = {"layers": [{"student_layer": i, "metric": 0.8 + 0.01 * i} for i in range(4)], "best_layer": 3}
    assert_png(plot_layer_sweep(sweep, tmp_path / "s.png"))
    with pytest.raises(BitDistillError, match="no measured layer"):
        plot_layer_sweep({"layers": []}, tmp_path / "e.png")


def test_no_histogram_without_continued_pretraining(tmp_path):
    run = build_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    del results["stages"]["continue_pretrain"]
    made, notes = write_run_plots(run, results)
    assert "weight_histogram" not in made and "No continued pre-training" in notes["weight_histogram"]
