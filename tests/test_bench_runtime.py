"""bench --roofline / --classify / --scaling: the measuring pieces against independent references (the timed
runs themselves are benchmarks, not tests), and the CLI's one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from bitdistill.bench import classify as classify_bench
from bitdistill.bench.roofline import read_bandwidth
from bitdistill.cli import main
from bitdistill.runtime.native import lib, ptr


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_bandwidth_kernel_reads_every_word(threads: int) -> None:
    """bd_read_xor returns the XOR of all words (numpy's reduction), for sizes that do not split evenly."""
    rng = np.random.default_rng(threads)
    for n in (1, 7, 1001, 65537):
        buf = rng.integers(0, 2**63, n, dtype=np.uint64)
        assert lib().bd_read_xor(ptr(buf), n, threads) == int(np.bitwise_xor.reduce(buf))
    assert 0 < read_bandwidth(threads, mib=8, reps=1) < 1e13  # bytes/s (a loaded CI box can be very slow)


def test_classify_bench_alternates_and_compares_predictions(monkeypatch, tmp_path) -> None:
    """The timed engines alternate run by run, the reference runs once; agreement and accuracy are computed
    from the predictions (here fixed by a stand-in worker) as counted by hand."""
    calls = []
    preds = {"runtime-2": [1, 0, 1, 1], "torch-fp32": [1, 1, 1, 1], "torch-bitnet": [1, 0, 0, 1]}
    speed = {"runtime-2": 40.0, "torch-fp32": 8.0, "torch-bitnet": 2.0}

    def worker(argv, timeout):
        kind = "torch-bitnet" if "--bitnet" in argv else "torch-fp32" if "classify-torch" in argv else "runtime-2"
        calls.append(kind)
        return {"sentences_s": [speed[kind] + len(calls)], "preds": preds[kind], "labels": [1, 0, 1, None],
                "peak_rss_mib": 100.0}  # fmt: skip

    monkeypatch.setattr(classify_bench, "_run_worker", worker)
    monkeypatch.setattr(classify_bench, "prepare", lambda spec, work, head: {"2": tmp_path})
    res = classify_bench.run_classify_bench("m", tmp_path, runs=2, work=tmp_path, log=lambda *a: None)
    assert calls == ["runtime-2", "torch-fp32", "runtime-2", "torch-fp32", "torch-bitnet"]
    rt, fp = res["engines"]["runtime-2"], res["engines"]["torch-fp32"]
    assert rt["sentences_s"]["runs"] == [41.0, 43.0] and fp["sentences_s"]["runs"] == [10.0, 12.0]
    assert rt["speedup_vs_torch_fp32"] == pytest.approx(42.0 / 11.0)
    assert rt["identical_to_reference"] == 0.75 and fp["identical_to_reference"] == 0.5
    assert rt["accuracy"] == 1.0 and fp["accuracy"] == pytest.approx(2 / 3)  # the unlabelled one is left out
    table = classify_bench.format_classify_table(res)
    assert "| runtime-2 (int8 head) | 42.00 [41.00-43.00] | 3.8x | 75.0 % | 1.0000 | 100 |" in table


def test_bench_cli_refuses_bad_input(tmp_path, capsys) -> None:
    assert main(["bench", "--classify", "--data", str(tmp_path / "missing")]) == 2
    assert main(["bench", "--classify", "--data", str(tmp_path), "--batch-tokens", "0"]) == 2
    assert main(["bench", "--scaling", "--runs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--classify needs --data" in err and "--batch-tokens 0" in err and "--runs" in err
    assert "Traceback" not in err


def test_bench_help_lists_the_workloads(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--roofline", "--scaling", "--classify", "--batch-tokens"))
