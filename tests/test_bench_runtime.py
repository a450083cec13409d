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


def test_engine_bench_rounds_take_turns_and_pool_the_runs(monkeypatch, tmp_path) -> None:
    """With rounds, the engines take turns (one worker per engine per round) and each engine's table cell is
    the median over the runs of all its rounds, its peak RSS the largest (stand-in workers, known numbers)."""
    from bitdistill.bench import engines as engines_bench

    calls = []

    def engine(eng, *args):
        calls.append(eng)
        k = len(calls)
        return {"decode": [10.0 * k, 10.0 * k + 1], "prefill": [100.0 * k], "peak_rss_mib": 50.0 + k,
                "gguf_bytes": 1, "head_dtype": "x"}  # fmt: skip

    from bitdistill.bench import roofline

    bandwidth = iter([30e9, 35e9, 60e9, 34e9, 31e9, 36e9])  # 1 thread, 2 threads; per round

    monkeypatch.setattr(engines_bench, "_run_engine", engine)
    monkeypatch.setattr(roofline, "read_bandwidth", lambda n: next(bandwidth))
    monkeypatch.setattr(roofline, "int8_peak", lambda n: 1e11 * n)
    res = engines_bench.run_bench(
        "m", engines=("a", "b"), runs=2, rounds=3, work=tmp_path, log=lambda *a: None, roofline=True
    )
    assert calls == ["a", "b", "a", "b", "a", "b"]
    # a bandwidth sample per round, the median of them the roofline's (the 60 GB/s burst does not count)
    assert res["machine"]["read_bandwidth_samples_gb_s"] == {"1": [30.0, 60.0, 31.0], "2": [35.0, 34.0, 36.0]}
    assert res["machine"]["read_bandwidth_gb_s"] == {"1": 31.0, "2": 35.0}
    a = res["engines"]["a"]
    assert a["decode_tok_s"]["runs"] == [10.0, 11.0, 30.0, 31.0, 50.0, 51.0]
    assert a["decode_tok_s"]["median"] == 30.5 and a["prefill_tok_s"]["median"] == 300.0
    assert a["peak_rss_mib"] == 55.0 and len(a["loadavg_before"]) == 3 and res["rounds"] == 3
    assert "median of 3 rounds x 2 runs, engines taking turns" in engines_bench.format_table(res)


def test_bench_cli_refuses_bad_input(tmp_path, capsys) -> None:
    assert main(["bench", "--classify", "--data", str(tmp_path / "missing")]) == 2
    assert main(["bench", "--classify", "--data", str(tmp_path), "--batch-tokens", "0"]) == 2
    assert main(["bench", "--scaling", "--runs", "0"]) == 2
    assert main(["bench", "--engines", "runtime-2", "--rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert "--classify needs --data" in err and "--batch-tokens 0" in err and "--runs" in err
    assert "--rounds must be at least 1" in err
    assert "Traceback" not in err


def test_bench_help_lists_the_workloads(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--roofline", "--scaling", "--classify", "--batch-tokens"))


def test_decode_bytes_count_weights_and_every_layers_kv_cache(tmp_path) -> None:
    """Weights: the packed files' tensors (tied embedding read whole as the head); KV: K and V of every cached
    position per layer, capped at a sliding layer's window (gemma3: layers 0 and 2 slide over 8 positions)."""
    from bitdistill.bench.roofline import decode_bytes_per_token
    from bitdistill.model.convert import to_bitnet
    from bitdistill.runtime.pack_writer import pack_model
    from bitdistill.runtime.packed import load_packed
    from tiny_models import tiny_model

    model = tiny_model("gemma3", layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                       num_hidden_layers=3, tie_word_embeddings=True)  # fmt: skip
    to_bitnet(model)
    d = pack_model(model.eval(), tmp_path / "p", head_dtype="int8")
    weights = sum(a.nbytes for n, a in load_packed(d).tensors.items() if not n.startswith("rope."))
    per_position = 2 * 2 * 16 * 4  # K and V x 2 kv heads x head_dim 16 x fp32
    at_20 = decode_bytes_per_token(d, "fp32", 20)
    assert at_20 == {"weights": weights, "kv": per_position * (8 + 21 + 8), "total": weights + per_position * 37}
    at_3 = decode_bytes_per_token(d, "fp16", 3)
    assert at_3["kv"] == per_position // 2 * (4 + 4 + 4) and at_3["weights"] == weights


def test_runtime_engine_names() -> None:
    from bitdistill.bench.engines import runtime_engine

    assert runtime_engine("runtime-2", "int8") == ("2", "int8", "fp32")
    assert runtime_engine("runtime-1.58-q4", "int8") == ("1.58", "q4", "fp32")
    assert runtime_engine("runtime-2-q4-kv16", "int8") == ("2", "q4", "fp16")
    assert runtime_engine("runtime-2-kv16", "fp32") == ("2", "fp32", "fp16")
    for bad in ("runtime-3", "runtime-2-q4-kv8", "runtime", "torch-fp32"):
        with pytest.raises(ValueError):
            runtime_engine(bad, "int8")


def test_bench_cli_refuses_unknown_engine_names(capsys) -> None:
    assert main(["bench", "--engines", "runtime-2-q4-kv8"]) == 2
    err = capsys.readouterr().err
    assert "runtime-2-q4-kv8" in err and "kv16" in err and "Traceback" not in err


def test_int8_peak_counts_the_multiply_adds_it_ran() -> None:
    """bd_int8_peak_macs returns iters * 8 vpmaddubsw * 32 MACs * threads at the AVX2 level, iters * 8 zmm
    vpdpbusd * 64 at the VNNI level (an odd count rounded up to the rounds of 16 it runs) and 0 at the
    scalar level (there is no such instruction to measure); int8_peak turns that into a positive rate."""
    import ctypes

    from bitdistill.bench.roofline import int8_peak
    from bitdistill.runtime.native import SIMD_AVX2, SIMD_SCALAR, SIMD_VNNI, set_simd, simd_level

    sink = ctypes.c_int32()
    try:
        set_simd(SIMD_SCALAR)
        assert lib().bd_int8_peak_macs(1000, 2, ctypes.byref(sink)) == 0.0 and int8_peak(1) == 0.0
        set_simd(SIMD_AVX2)
        if simd_level() != SIMD_AVX2:
            pytest.skip("this CPU has no avx2 path")
        threads = 2 if lib().bd_has_openmp() else 1
        assert lib().bd_int8_peak_macs(1000, 2, ctypes.byref(sink)) == 1000 * 8 * 32 * threads
        assert 1e8 < int8_peak(1, seconds=0.01, reps=1) < 1e13
        set_simd(True)
        if simd_level() == SIMD_VNNI:  # 16 zmm vpdpbusd (64 MACs) per round of two iterations
            assert lib().bd_int8_peak_macs(1000, 2, ctypes.byref(sink)) == 1000 * 8 * 64 * threads
            assert lib().bd_int8_peak_macs(1001, 2, ctypes.byref(sink)) == 1002 * 8 * 64 * threads
    finally:
        set_simd(True)


def test_prefill_roof_is_linear_macs_over_the_peak() -> None:
    from bitdistill.bench.engines import _add_prefill_roof

    r = {"linear_fp16_bytes": 2 * 1_000_000, "prefill_tok_s": {"median": 500.0}}
    _add_prefill_roof(r, 2e9)
    assert r["prefill_linear_gmac_s"] == pytest.approx(0.5) and r["prefill_peak_fraction"] == pytest.approx(0.25)
    _add_prefill_roof(r, 0.0)  # no AVX2: no fraction rather than a division by zero
    assert r["prefill_peak_fraction"] is None
