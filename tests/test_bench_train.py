"""bench-train's input checks, synthetic data and ratios (no timing: speed lives in benchmarks/)."""

from bitdistill.cli import main
from bitdistill.data.tasks import get_task
from bitdistill.pipeline.bench_train import ratios, synthetic_sst2


def test_unknown_row_and_bad_threads_are_one_line_errors(capsys):
    assert main(["bench-train", "--rows", "fp,bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--rows" in err and "bogus" in err and len(err.splitlines()) == 1
    assert main(["bench-train", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--threads" in err and len(err.splitlines()) == 1


def test_synthetic_sst2_loads_through_the_task_with_sst2_lengths(tmp_path):
    examples = get_task("sst2").load("train", path=synthetic_sst2(tmp_path, n=300))
    words = sorted(len(ex.prompt.split()) for ex in examples)
    assert len(examples) == 300 and words[0] >= 3 and 6 <= words[150] <= 14  # "Sentence:" + text + label cue
    assert {ex.target for ex in examples} == {" negative", " positive"}


def test_ratios_are_medians_divided():
    rows = [
        {"row": "fp", "code": "this", "cpu_total_s": 2.0},
        {"row": "bitnet", "code": "this", "cpu_total_s": 2.4},
        {"row": "distill-targets", "code": "this", "cpu_total_s": 3.0},
        {"row": "distill-targets", "code": "baseline", "cpu_total_s": 9.0},
    ]
    r = ratios(rows)
    assert r["bitnet/fp"] == 1.2 and r["distill-targets/fp"] == 1.5
    assert r["baseline distill-targets/distill-targets"] == 3.0
