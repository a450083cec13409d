"""Bad inputs, one table per CLI verb: every row must end in one line naming the culprit, exit code 2, no
traceback, and no file the verb does not promise.

Verbs run in-process through `bitdistill.cli.main` (fast); cases that need a real process (a thread count
that used to crash OpenMP, a kill between two renames) run in a subprocess. Inputs are built by small
helpers from tiny random models; the recipe's own validation is tested with the recipe.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from bitdistill.cli import main
from bitdistill.model.io import save

FIX = Path(__file__).parent / "fixtures"
CTX = 64  # max_position_embeddings of the tiny models: a prompt longer than this is refused


def _tokenizer():
    return PreTrainedTokenizerFast(
        tokenizer_file=str(FIX / "tokenizer" / "tokenizer.json"), eos_token="<|endoftext|>"
    )


def _llama(vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CTX,
                      tie_word_embeddings=True)  # fmt: skip
    return AutoModelForCausalLM.from_config(cfg).float()


def _quiet(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def m(tmp_path_factory) -> SimpleNamespace:
    """The good inputs every row starts from: an HF dir, a BitNet dir, a packed dir, an exported GGUF."""
    from bitdistill.model import to_bitnet

    root = tmp_path_factory.mktemp("models")
    tok = _tokenizer()
    model = _llama(len(tok))
    model.save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    to_bitnet(model, subln="o_down")
    save(model, root / "bitnet", tokenizer=tok)
    _quiet(["pack", str(root / "bitnet"), "--out", str(root / "packed"), "--head-dtype", "fp32"])
    _quiet(["export", str(root / "bitnet"), "--out", str(root / "bitnet.gguf")])

    # a word-level tokenizer with an unknown token, for label words outside the vocabulary
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import tiny_tokenizer

    wtok = tiny_tokenizer(128)
    wmodel = _llama(128, seed=1)
    to_bitnet(wmodel, subln="o_down")
    save(wmodel, root / "words", tokenizer=wtok)
    _quiet(["pack", str(root / "words"), "--out", str(root / "packed_words")])
    return SimpleNamespace(root=root, hf=root / "hf", bitnet=root / "bitnet", packed=root / "packed",
                           gguf=root / "bitnet.gguf", packed_words=root / "packed_words")  # fmt: skip


# -- input builders: each writes what it needs under `d` (the test's tmp dir) and returns a path -------------


def copy_dir(src: Path, d: Path, name: str, config: dict | None = None, weights: bytes | None = None) -> str:
    out = d / name
    shutil.copytree(src, out)
    if config:
        c = json.loads((out / "config.json").read_text())
        c.update(config)
        (out / "config.json").write_text(json.dumps(c))
    if weights is not None:
        (out / "model.safetensors").write_bytes(weights)
    return str(out)


def truncated(src: Path, d: Path, name: str) -> str:
    return copy_dir(src, d, name, weights=(src / "model.safetensors").read_bytes()[:3000])


def random_weights(src: Path, d: Path, name: str) -> str:
    return copy_dir(src, d, name, weights=os.urandom(4000))


def file(d: Path, name: str, data: bytes | str) -> str:
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(p)


def packed_with_shape(m, d: Path) -> str:
    """A packed dir whose weights header claims a [2^32, 2^32] float tensor in 0 bytes: the int64 product
    wraps to 0 and the shape used to reach numpy's allocator. The CRC is updated so the header is read."""
    out = Path(copy_dir(m.packed, d, "overflow"))
    wfile = out / "model.safetensors"
    raw = wfile.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["huge"] = {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}
    blob = json.dumps(header).encode()
    wfile.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n :])
    c = json.loads((out / "config.json").read_text())
    c["packed"]["weights_crc32"] = zlib.crc32(wfile.read_bytes())
    (out / "config.json").write_text(json.dumps(c))
    return str(out)


def nan_head_packed(m, d: Path) -> str:
    """A packed model whose LM head holds a NaN, packed through the API (the CLI refuses to pack it)."""
    from bitdistill.model.io import load
    from bitdistill.runtime.pack_writer import pack_model

    model = load(m.bitnet)
    with torch.no_grad():
        model.lm_head.weight[3, 5] = float("nan")
    return str(pack_model(model, d / "nanhead", head_dtype="fp32", tokenizer=_tokenizer()))


def nan_head_dir(m, d: Path) -> str:
    from bitdistill.model.io import load

    model = load(m.bitnet)
    with torch.no_grad():
        model.lm_head.weight[3, 5] = float("nan")
    return str(save(model, d / "nanbn", tokenizer=_tokenizer()))


def task_dir(d: Path, name: str, filename: str, data: bytes | str) -> str:
    file(d / name, filename, data)
    return str(d / name)


SST2 = str(FIX / "sst2")
NON_UTF8 = b"sentence\tlabel\n\xff\xfe broken\t1\n"
SURROGATE = '{"sentence": "half a pair \\ud800 here", "label": 1}\n'
UNLABELED_DEV = "sentence\tlabel\nw1 w2\t1\nw3 w4\t-1\n"

# Each row: (id, argv builder (m, d) -> list[str], substrings the error line must hold, extra env).
CONVERT = [
    ("truncated-weights", lambda m, d: ["convert", truncated(m.hf, d, "t"), "--out", str(d / "o")],
     ["/t:", "not a loadable model", "incomplete metadata"], {}),
    ("random-weights", lambda m, d: ["convert", random_weights(m.hf, d, "r"), "--out", str(d / "o")],
     ["/r:", "not a loadable model"], {}),
    ("negative-hidden-size",
     lambda m, d: ["convert", copy_dir(m.hf, d, "h", config={"hidden_size": -5}), "--out", str(d / "o")],
     ["/h:", "hidden size (-5)"], {}),
    ("random-gguf", lambda m, d: ["convert", file(d, "x.gguf", os.urandom(300)), "--out", str(d / "o")],
     ["x.gguf", "not a GGUF file"], {}),
    ("absurd-gguf-counts",
     lambda m, d: ["convert", file(d, "a.gguf", b"GGUF" + struct.pack("<IQQ", 3, 2**60, 2**60)),
                   "--out", str(d / "o")],
     ["a.gguf", "corrupt or truncated GGUF"], {}),
    ("own-bitnet-gguf", lambda m, d: ["convert", str(m.gguf), "--out", str(d / "o")],
     ["bitnet.gguf", "written by `bitdistill export`", "cannot be converted again"], {}),
    ("missing-local-gguf", lambda m, d: ["convert", "model.gguf", "--out", str(d / "o")],
     ["model.gguf: no such file"], {}),
]  # fmt: skip

INSPECT = [
    ("truncated-weights", lambda m, d: ["inspect", truncated(m.hf, d, "t")], ["/t:", "not a loadable"], {}),
    ("bitnet-negative-hidden",
     lambda m, d: ["inspect", copy_dir(m.bitnet, d, "h", config={"hidden_size": -5})],
     ["h/config.json", "hidden size (-5)"], {}),
    ("packed-truncated", lambda m, d: ["inspect", truncated(m.packed, d, "p")], ["p/model.safetensors"], {}),
]  # fmt: skip

EVAL = [
    ("truncated-weights", lambda m, d: ["eval", truncated(m.bitnet, d, "t"), "--data", SST2],
     ["t/model.safetensors", "unreadable"], {}),
    ("hf-negative-hidden",
     lambda m, d: ["eval", copy_dir(m.hf, d, "h", config={"hidden_size": -5}), "--data", SST2],
     ["/h:", "hidden size (-5)"], {}),
    ("batch-size-0", lambda m, d: ["eval", str(m.bitnet), "--data", SST2, "--batch-size", "0"],
     ["--batch-size 0"], {}),
    ("limit-0", lambda m, d: ["eval", str(m.bitnet), "--data", SST2, "--limit", "0"], ["--limit 0"], {}),
    ("threads-negative", lambda m, d: ["eval", str(m.bitnet), "--data", SST2, "--threads", "-1"],
     ["--threads=-1", "leave --threads unset"], {}),
    ("threads-huge", lambda m, d: ["eval", str(m.bitnet), "--data", SST2, "--threads", "70000"],
     ["--threads=70000", "at most"], {}),
    ("device-banana", lambda m, d: ["eval", str(m.bitnet), "--data", SST2, "--device", "banana"],
     ["--device 'banana'"], {}),
    ("non-utf8-data", lambda m, d: ["eval", str(m.bitnet), "--data", task_dir(d, "n", "dev.tsv", NON_UTF8)],
     ["n/dev.tsv", "not UTF-8"], {}),
    ("lone-surrogate",
     lambda m, d: ["eval", str(m.bitnet), "--data", task_dir(d, "s", "dev.jsonl", SURROGATE)],
     ["s/dev.jsonl line 1", "'sentence'", "surrogate"], {}),
    ("label-minus-1-on-dev",
     lambda m, d: ["eval", str(m.bitnet), "--data", task_dir(d, "u", "dev.tsv", UNLABELED_DEV)],
     ["u/dev.tsv line 3", "label -1", "'dev'"], {}),
    ("unknown-template-field",
     lambda m, d: ["eval", str(m.bitnet), "--data", SST2, "--task-option", "template={foo}"],
     ["template", "{text}", "foo"], {}),
]  # fmt: skip

PACK = [
    ("truncated-weights", lambda m, d: ["pack", truncated(m.bitnet, d, "t"), "--out", str(d / "o")],
     ["t/model.safetensors"], {}),
    ("negative-hidden",
     lambda m, d: ["pack", copy_dir(m.hf, d, "h", config={"hidden_size": -5}), "--convert", "--out",
                   str(d / "o")],
     ["/h:", "hidden size (-5)"], {}),
    ("nan-head", lambda m, d: ["pack", nan_head_dir(m, d), "--out", str(d / "o")],
     ["nanbn", ".weight holds NaN/inf"], {}),
]  # fmt: skip

GENERATE = [
    ("temperature-nan", lambda m, d: ["generate", str(m.packed), "--prompt", "hi", "--temperature", "nan"],
     ["--temperature nan"], {}),
    ("temperature-negative",
     lambda m, d: ["generate", str(m.packed), "--prompt", "hi", "--temperature", "-1"],
     ["--temperature -1"], {}),
    ("top-k-negative",
     lambda m, d: ["generate", str(m.packed), "--prompt", "hi", "--temperature", "1", "--top-k", "-1"],
     ["--top-k -1"], {}),
    ("top-p-0", lambda m, d: ["generate", str(m.packed), "--prompt", "hi", "--top-p", "0"], ["--top-p 0"], {}),
    ("max-new-0", lambda m, d: ["generate", str(m.packed), "--prompt", "hi", "--max-new-tokens", "0"],
     ["--max-new-tokens 0"], {}),
    ("threads-0", lambda m, d: ["generate", str(m.packed), "--prompt", "hi", "--threads", "0"],
     ["--threads=0", "to use all cores leave --threads unset"], {}),
    ("env-threads-abc", lambda m, d: ["generate", str(m.packed), "--prompt", "hi"],
     ["BITDISTILL_THREADS='abc'", "not a whole number"], {"BITDISTILL_THREADS": "abc"}),
    ("env-threads-0", lambda m, d: ["generate", str(m.packed), "--prompt", "hi"],
     ["BITDISTILL_THREADS=0"], {"BITDISTILL_THREADS": "0"}),
    ("missing-dir", lambda m, d: ["generate", str(d / "nope"), "--prompt", "hi"],
     ["nope: not a directory"], {}),
    ("not-packed", lambda m, d: ["generate", str(m.hf), "--prompt", "hi"], ["not a packed model"], {}),
    ("prompt-beyond-context", lambda m, d: ["generate", str(m.packed), "--prompt", "the movie " * 80],
     ["the prompt is", f"context is {CTX} tokens"], {}),
    ("overflowing-shape", lambda m, d: ["generate", packed_with_shape(m, d), "--prompt", "hi"],
     ["overflow/model.safetensors", "'huge'"], {}),
    ("nan-head",
     lambda m, d: ["generate", nan_head_packed(m, d), "--prompt", "hi", "--temperature", "0.8"],
     ["NaN/inf logits"], {}),
]  # fmt: skip

LABELS = ["--labels", "negative,positive"]
CLASSIFY = [
    ("unknown-template-field",
     lambda m, d: ["classify", str(m.packed), *LABELS, "--template", "{review} x", "--text", "a"],
     ["template '{review} x'", "found ['review']"], {}),
    ("lone-brace", lambda m, d: ["classify", str(m.packed), *LABELS, "--template", "{text} {", "--text", "a"],
     ["template '{text} {'", "Single '{'"], {}),
    ("summarization-task", lambda m, d: ["classify", str(m.packed), "--task", "cnndm", "--text", "a"],
     ["'cnndm' is summarization", "bitdistill eval"], {}),
    ("repeated-labels",
     lambda m, d: ["classify", str(m.packed), "--labels", "good,good", "--template", "{text}", "--text", "a"],
     ["label_words [' good', ' good']", "distinct"], {}),
    ("label-encodes-to-unk",
     lambda m, d: ["classify", str(m.packed_words), "--labels", "w1,zebra", "--template", "{text}",
                   "--text", "w2"],
     ["' zebra'", "unknown token"], {}),
    ("custom-without-text-column",
     lambda m, d: ["classify", str(m.packed), "--task", "custom", "--data", str(FIX / "custom" / "reviews.csv"),
                   *LABELS],
     ["set text_column"], {}),
    ("non-utf8-data",
     lambda m, d: ["classify", str(m.packed), "--task", "sst2", "--data", task_dir(d, "n", "dev.tsv", NON_UTF8)],
     ["n/dev.tsv", "not UTF-8"], {}),
    ("label-minus-1-on-dev",
     lambda m, d: ["classify", str(m.packed), "--task", "sst2", "--data",
                   task_dir(d, "u", "dev.tsv", UNLABELED_DEV)],
     ["u/dev.tsv line 3", "label -1"], {}),
    ("threads-huge", lambda m, d: ["classify", str(m.packed), "--task", "sst2", "--text", "a", "--threads",
                                   "70000"],
     ["--threads=70000"], {}),
]  # fmt: skip

EXPORT = [
    ("not-bitnet", lambda m, d: ["export", str(m.hf), "--out", str(d / "m.gguf")], ["convert it first"], {}),
    ("truncated", lambda m, d: ["export", truncated(m.bitnet, d, "t"), "--out", str(d / "m.gguf")],
     ["t/model.safetensors"], {}),
]  # fmt: skip

REPORT = [
    ("invalid-json", lambda m, d: ["report", str(Path(file(d / "r", "results.json", "{oops")).parent)],
     ["r/results.json", "not valid JSON"], {}),
    ("not-a-mapping", lambda m, d: ["report", str(Path(file(d / "r", "results.json", "[1, 2]")).parent)],
     ["r/results.json", "'stages'"], {}),
    ("stage-not-a-record",
     lambda m, d: ["report", str(Path(file(d / "r", "results.json", '{"stages": {"teacher": 5}}')).parent)],
     ["r/results.json", "stages.teacher"], {}),
]  # fmt: skip


def _no_tokenizer(m, d: Path) -> str:
    out = Path(copy_dir(m.hf, d, "notok"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).unlink()
    return str(out)


TEACHER = [
    ("no-tokenizer",
     lambda m, d: ["teacher", "--model", _no_tokenizer(m, d), "--out", str(d / "o"), "--data", SST2,
                   "--steps", "1"],
     ["notok", "no tokenizer"], {}),
    ("truncated-weights",
     lambda m, d: ["teacher", "--model", truncated(m.hf, d, "t"), "--out", str(d / "o"), "--data", SST2,
                   "--steps", "1"],
     ["/t:", "not a loadable model"], {}),
]  # fmt: skip

DISTILL = [
    ("teacher-without-tokenizer",
     lambda m, d: ["distill", "--teacher", _no_tokenizer(m, d), "--student", str(m.bitnet), "--model", str(m.hf),
                   "--out", str(d / "o"), "--data", SST2, "--steps", "1"],
     ["notok", "no tokenizer"], {}),
    ("truncated-teacher",
     lambda m, d: ["distill", "--teacher", truncated(m.hf, d, "t"), "--student", str(m.bitnet), "--model",
                   str(m.hf), "--out", str(d / "o"), "--data", SST2, "--steps", "1"],
     ["/t:", "not a loadable model"], {}),
]  # fmt: skip

BENCH = [
    ("threads-0", lambda m, d: ["bench", "--threads", "0"], ["--threads=0"], {}),
    ("threads-huge", lambda m, d: ["bench", "--threads", "70000"], ["--threads=70000", "at most"], {}),
]  # fmt: skip

TABLES = {"convert": CONVERT, "inspect": INSPECT, "eval": EVAL, "pack": PACK, "generate": GENERATE,
          "classify": CLASSIFY, "export": EXPORT, "report": REPORT, "teacher": TEACHER,
          "distill": DISTILL, "bench": BENCH}  # fmt: skip
ROWS = [pytest.param(verb, *row[1:], id=f"{verb}-{row[0]}") for verb, rows in TABLES.items() for row in rows]


def snapshot(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


@pytest.mark.parametrize(("verb", "build", "expect", "env"), ROWS)
def test_bad_input(verb, build, expect, env, m, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths ("model.gguf") resolve here; nothing may appear here
    argv = build(m, tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith(f"bitdistill {verb}: error: ")]
    assert len(lines) == 1, err
    for part in expect:
        assert part in lines[0], (part, lines[0])
    assert "\n" not in lines[0].removeprefix(f"bitdistill {verb}: error: ")
    assert snapshot(tmp_path) == before, sorted(snapshot(tmp_path) - before)


# -- what must be accepted or said, not refused ----------------------------------------------------------


def test_bom_header_is_accepted(m, tmp_path, capsys) -> None:
    data = task_dir(tmp_path, "bom", "dev.tsv", "\ufeffsentence\tlabel\nw1 w2\t1\nw3\t0\n".encode())
    assert main(["eval", str(m.bitnet), "--data", data, "--no-progress"]) == 0
    assert "(n=2)" in capsys.readouterr().out


def test_classify_custom_columns_and_escaped_template(m, tmp_path, capsys) -> None:
    from bitdistill.data.task_flags import unescape

    assert unescape(r"Review: {text}\nSentiment:\t\\n") == "Review: {text}\nSentiment:\t\\n"
    out = tmp_path / "preds.jsonl"
    argv = ["classify", str(m.packed), "--task", "custom", "--data", str(FIX / "custom" / "reviews.csv"),
            "--text-column", "review", "--label-column", "stars", "--labels", "bad,good",
            "--template", r"Review: {text}\nSentiment:", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "accuracy:" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 3
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask()


def test_generate_warns_and_cuts_near_the_context(m, capsys) -> None:
    assert main(["generate", str(m.packed), "--prompt", "the movie was", "--max-new-tokens", "500",
                 "--no-stop", "--stats"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert f"context of {CTX} tokens" in err and "warning" in err
    # label-word scoring cuts a long text from the left to the context instead of running past it
    from bitdistill.runtime.engine import load, load_tokenizer
    from bitdistill.runtime.scoring import score_label_words

    engine, tok = load(m.packed), load_tokenizer(m.packed)
    prompt, words = "the movie was " * 200 + "\nSentiment:", [" negative", " positive"]
    capped = score_label_words(engine, tok, prompt, words, max_length=100_000)
    assert (capped == score_label_words(engine, tok, prompt, words, max_length=CTX)).all()
    assert main(["classify", str(m.packed), "--task", "sst2", "--text", "the movie was " * 200]) == 0


def test_version_inspect_packed_and_public_names(m, capsys) -> None:
    import bitdistill

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and bitdistill.__version__ in capsys.readouterr().out
    assert main(["inspect", str(m.packed), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "packed llama" and info["num_subln"] == 4
    assert abs(sum(info["ternary_share"].values()) - 1) < 1e-9
    assert bitdistill.FamilyAdapter.__name__ == "FamilyAdapter"


def test_label_word_on_unk_is_refused_for_pytorch_eval_too(m, tmp_path) -> None:
    from bitdistill import BitDistillError
    from bitdistill.data import check_label_words

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import tiny_tokenizer

    with pytest.raises(BitDistillError, match="unknown token"):
        check_label_words(tiny_tokenizer(), [" w1", " zebra"])


# -- atomic outputs: leftovers of killed writers, permissions ------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_outputs_have_umask_permissions(m, tmp_path) -> None:
    assert main(["convert", str(m.hf), "--out", str(tmp_path / "c")]) == 0
    assert main(["pack", str(tmp_path / "c"), "--out", str(tmp_path / "p")]) == 0
    for d in (tmp_path / "c", tmp_path / "p"):
        assert (d.stat().st_mode & 0o777) == 0o777 & ~_umask()
        for f in d.iterdir():
            assert (f.stat().st_mode & 0o777) == 0o666 & ~_umask(), f


def test_rerun_restores_a_moved_aside_output_and_cleans_leftovers(m, tmp_path) -> None:
    from bitdistill._fs import recover

    dead = _dead_pid()
    out = tmp_path / "conv"
    shutil.copytree(m.bitnet, tmp_path / f".conv.old-{dead}")  # killed between the two renames
    (tmp_path / f".conv.tmp-{dead}-abc").mkdir()  # killed while writing
    (tmp_path / ".conv.tmp-xyz").mkdir()  # an older version's temporary, without a PID
    live = tmp_path / f".conv.tmp-{os.getpid()}-live"  # a live writer's: must survive
    live.mkdir()
    done = recover(out)
    assert (out / "model.safetensors").is_file() and any("restored" in x for x in done)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["conv", live.name])

    # with an output present, a stale old copy is deleted instead, and convert itself recovers first
    shutil.copytree(m.bitnet, tmp_path / f".conv.old-{dead}")
    live.rmdir()
    assert main(["convert", str(m.hf), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv"]


def test_export_cleans_a_killed_exports_temp_file(m, tmp_path) -> None:
    stale = tmp_path / f".m.gguf.tmp-{_dead_pid()}-q1"
    stale.write_bytes(b"")
    assert main(["export", str(m.bitnet), "--out", str(tmp_path / "m.gguf")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


KILL_BETWEEN_RENAMES = """
import os, signal, sys
import bitdistill._fs as fs
from bitdistill.cli import main
real, calls = os.replace, []
def replace(src, dst):
    real(src, dst)
    calls.append(dst)
    if len(calls) == 1 and ".old-" in str(dst):  # the old output is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
fs.os.replace = replace
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


@pytest.mark.parametrize("verb", ["convert", "pack"])
def test_sigkill_between_renames_then_rerun(verb, m, tmp_path) -> None:
    src = m.hf if verb == "convert" else m.bitnet
    out = tmp_path / "out"
    argv = [verb, str(src), "--out", str(out)]
    assert main(argv) == 0
    first = (out / "model.safetensors").read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, *argv], env=_env(),
                          capture_output=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not out.exists() and len(list(tmp_path.glob(".out.*"))) == 2  # old aside + new temporary
    from bitdistill._fs import recover

    recover(out)  # what the re-run does first: the previous output is back, the temporary gone
    assert (out / "model.safetensors").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_huge_thread_count_is_refused_not_a_crash(how, m) -> None:
    """70000 OpenMP threads used to SIGSEGV while creating thread stacks: a real process must exit 2."""
    argv = ["generate", str(m.packed), "--prompt", "hi", "--max-new-tokens", "1"]
    env = _env()
    if how == "flag":
        argv += ["--threads", "70000"]
    else:
        env["BITDISTILL_THREADS"] = "70000"
    proc = subprocess.run([sys.executable, "-m", "bitdistill.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "70000" in proc.stderr


def test_export_from_packed_equals_the_directory_export_only_with_fp32_embeddings(m, tmp_path) -> None:
    """docs/export.md: linears and norms survive packing exactly; the embedding only at fp32."""
    import numpy as np
    from gguf import GGUFReader

    def tensors(path):
        return {t.name: np.asarray(t.data) for t in GGUFReader(path).tensors}

    ref = tensors(m.gguf)
    for dtype in ("fp32", "int8"):
        _quiet(["pack", str(m.bitnet), "--out", str(tmp_path / dtype), "--head-dtype", dtype])
        _quiet(["export", str(tmp_path / dtype), "--out", str(tmp_path / f"{dtype}.gguf")])
        got = tensors(tmp_path / f"{dtype}.gguf")
        differ = sorted(n for n in ref if not np.array_equal(ref[n], got[n]))
        assert differ == ([] if dtype == "fp32" else ["token_embd.weight"]), (dtype, differ)


def test_a_full_disk_is_one_line_not_a_traceback(monkeypatch, capsys) -> None:
    """ENOSPC anywhere in the exception chain (torch wraps it in a RuntimeError) is one line, exit 1;
    any other OSError still propagates as the bug it is."""
    import errno

    import bitdistill.cli.inspect as inspect_cli
    from bitdistill.cli import main

    def full(args):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from err

    monkeypatch.setattr(inspect_cli, "run", full)
    assert main(["inspect", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the disk is full" in err and "GiB free" in err

    def other(args):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(inspect_cli, "run", other)
    with pytest.raises(OSError):
        main(["inspect", "x"])
