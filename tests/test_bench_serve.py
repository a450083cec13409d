"""benchmarks/bench_serve.py end to end on a tiny model for a second per phase: it must start a real server,
load it from concurrent clients, and write the JSON the docs' table comes from. No speed is asserted here
(that is the benchmark's job); only that nothing failed and the numbers are consistent with each other."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tiny_pipeline import build_model_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_serve_runs_and_writes_its_json(tmp_path, capsys) -> None:
    import bench_serve

    from bitdistill.cli import main

    # the tiny pipeline's vocabulary has the SST-2 label words, which the benchmark's server uses by default
    build_model_dir(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "bitnet")]) == 0
    assert main(["pack", str(tmp_path / "bitnet"), "--out", str(tmp_path / "packed")]) == 0
    out = tmp_path / "serve.json"
    argv = [str(tmp_path / "packed"), "--clients", "3", "--duration", "1.5", "--classify-duration", "1",
            "--batch", "2", "--max-tokens", "4", "--baseline-texts", "4", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert bench_serve.main(argv) == 0
    res = json.loads(out.read_text())
    mixed, cls = res["mixed"], res["classify_only"]
    assert mixed["errors_5xx"] == 0 and mixed["transport_errors"] == 0 and cls["errors_5xx"] == 0
    assert mixed["generate"]["requests"] > 0 and mixed["classify"]["requests"] > 0
    assert mixed["generate"]["p50_s"] <= mixed["generate"]["p99_s"]
    assert cls["classified_texts_per_s"] > 0 and res["baseline"]["texts_per_s"] > 0
    assert res["classify_vs_in_process"] == cls["classified_texts_per_s"] / res["baseline"]["texts_per_s"]
    assert res["server_peak_rss_mib"] >= max(v for _, v in mixed["rss_mib_samples"])
    assert "| server, mixed: all |" in capsys.readouterr().out
