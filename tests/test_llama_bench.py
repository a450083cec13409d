"""The llama-bench engine of `bitdistill bench`: the command lines it runs, how it reads llama-bench's JSON, and
the CLI's handling of a missing binary. A stand-in script plays llama-bench (the real one is not on CI)."""

from __future__ import annotations

import json
import stat
import sys

import pytest

from bitdistill.bench.llama_bench import commands, find_llama_bench, parse_samples, run_llama_bench
from bitdistill.cli import main
from bitdistill.errors import BitDistillError

# Answers like llama-bench -o json: one test whose samples_ts encode the arguments it was given, so the test
# can tell which run was the prefill (n_prompt) and which the decode at depth (n_gen, n_depth).
FAKE = """#!{python}
import json, sys
a = sys.argv[1:]
opt = lambda f, d="0": a[a.index(f) + 1] if f in a else d
p, n, d, r, t = (int(opt(f)) for f in ("-p", "-n", "-d", "-r", "-t"))
blob = bytearray(40 << 20)  # 40 MiB resident: the peak RSS must be this process's
print(json.dumps([{{"n_prompt": p, "n_gen": n, "n_depth": d, "n_threads": t,
                    "samples_ts": [1000 * t + p + n + d + i for i in range(r)]}}]))
"""


@pytest.fixture
def fake_bench(tmp_path):
    path = tmp_path / "llama-bench"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_commands_time_prefill_from_empty_context_and_decode_after_the_prompt(tmp_path):
    cmd = commands(tmp_path / "lb", tmp_path / "m.gguf", threads=2, prefill=128, decode=64, runs=5)
    assert cmd["prefill"][-4:] == ["-p", "128", "-n", "0"]
    assert cmd["decode"][-6:] == ["-p", "0", "-n", "64", "-d", "128"]  # decode positions 128..191
    for c in cmd.values():
        assert c[1:9] == ["-m", str(tmp_path / "m.gguf"), "-t", "2", "-r", "5", "-o", "json"]


def test_run_reads_every_repetition_and_the_childs_peak_rss(fake_bench, tmp_path):
    res = run_llama_bench(fake_bench, tmp_path / "m.gguf", threads=2, prefill=128, decode=64, runs=3)
    assert res["prefill"] == [2128.0, 2129.0, 2130.0]  # 1000*t + p, one value per repetition
    assert res["decode"] == [2192.0, 2193.0, 2194.0]  # 1000*t + n + d
    assert res["peak_rss_mib"] > 40  # the stand-in's 40 MiB buffer, not this test process's figure alone
    assert res["commands"]["decode"].endswith("-d 128")


def test_bad_output_and_missing_binaries_are_one_line_errors(tmp_path):
    with pytest.raises(RuntimeError, match="llama-bench decode: unexpected output"):
        parse_samples("error: unknown argument -d", "decode")
    with pytest.raises(BitDistillError, match="--llama-bench .*not an executable file"):
        find_llama_bench(str(tmp_path / "missing"))


def test_bench_cli_skips_llama_bench_when_absent(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-bench to find
    assert main(["bench", "--engines", "llama-bench-tq2_0", "--work", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "skipping llama-bench-tq2_0: no llama-bench on PATH" in err and "no engine left" in err
    assert main(["bench", "--llama-bench", str(tmp_path / "nope")]) == 2
    assert "--llama-bench" in capsys.readouterr().err


def test_parse_samples_reads_llama_bench_json():
    # a trimmed record as llama-bench (b6xxx) writes it
    rec = {"build_commit": "0c1e570", "n_threads": 1, "n_prompt": 0, "n_gen": 128, "n_depth": 128,
           "avg_ts": 60.5, "stddev_ts": 0.4, "samples_ns": [1, 2], "samples_ts": [60.1, 60.9]}  # fmt: skip
    assert parse_samples(json.dumps([rec]), "decode") == [60.1, 60.9]


def test_llama_bench_runs_without_our_openmp_default(tmp_path):
    """The CLI sets OMP_WAIT_POLICY=PASSIVE for itself (env.set_openmp_defaults); llama.cpp's OpenMP build
    meets at a barrier per operation, and under that default its 2-thread decode fell ~4x. So llama-bench
    gets the user's environment: no OMP_WAIT_POLICY unless the user set one, and then the user's value."""
    import os
    import subprocess

    fake = tmp_path / "llama-bench"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os\npolicy = os.environ.get('OMP_WAIT_POLICY')\n"
        "code = {None: 0, 'PASSIVE': 1, 'ACTIVE': 2}[policy]\n"
        "print(json.dumps([{'samples_ts': [code]}]))\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    code = (
        "import os, bitdistill.cli\nfrom bitdistill.bench.llama_bench import run_llama_bench\n"
        f"r = run_llama_bench({str(fake)!r}, 'm.gguf', threads=2, prefill=8, decode=8, runs=1)\n"
        "print(os.environ['OMP_WAIT_POLICY'], int(r['prefill'][0]), int(r['decode'][0]))"
    )
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for user, want in ((None, "PASSIVE 0 0"), ("ACTIVE", "ACTIVE 2 2")):
        env = base | ({"OMP_WAIT_POLICY": user} if user else {})
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.stdout.split("\n")[-2] == want, out.stderr[-2000:]
