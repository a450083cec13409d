"""SubLN modes through pack -> native runtime -> export and inspect.

"all" (the authors' allnorm: an RMSNorm with its own weights before every BitLinear, q/k/v and gate/up
included) must run in the native engine at every SIMD level and match the PyTorch eval-mode model within
test_engine's tolerance; packed files of format 1 (boolean subln) still load; GGUF export refuses "all".
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bitdistill.cli import main
from bitdistill.errors import BitDistillError
from bitdistill.export import export_gguf, from_model
from bitdistill.model.convert import to_bitnet
from bitdistill.model.io import save
from bitdistill.model.summary import format_summary, summarize
from bitdistill.runtime.engine import load
from bitdistill.runtime.native import SIMD_AVX2, SIMD_SCALAR, SIMD_VNNI, set_simd, simd_level
from bitdistill.runtime.pack_writer import pack_model
from bitdistill.runtime.packed import load_packed
from test_engine import _compare, _model

LEVELS = {"vnni": SIMD_VNNI, "avx2": SIMD_AVX2, "scalar": SIMD_SCALAR}
PROMPT = [1, 7, 3, 11, 42, 5, 9, 2, 60, 33, 17]


@pytest.fixture(params=list(LEVELS))
def simd(request):
    """Each kernel path this CPU has (the activation quantization and norms dispatch on it)."""
    set_simd(LEVELS[request.param])
    if simd_level() != LEVELS[request.param]:
        set_simd(True)
        pytest.skip(f"this CPU has no {request.param} path")
    yield request.param
    set_simd(True)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_allnorm_engine_matches_pytorch_at_every_simd_level(simd, family: str, tmp_path) -> None:
    model = _model(family, "all", seed=1)  # every norm weight randomised, so a skipped or shared norm shows
    pack_model(model, tmp_path / "p", head_dtype="fp32")
    pm = load_packed(tmp_path / "p")
    assert pm.arch["subln"] == "all"
    block = model.model.layers[1]
    mods = {"q": block.self_attn.q_proj, "v": block.self_attn.v_proj, "up": block.mlp.up_proj}
    for name, mod in mods.items():  # each linear keeps its own weights, though q/k/v share an input
        np.testing.assert_array_equal(
            pm.tensors[f"layers.1.{name}.sub_norm"], mod.sub_norm.weight.detach().numpy()
        )
    assert not np.array_equal(pm.tensors["layers.1.q.sub_norm"], pm.tensors["layers.1.k.sub_norm"])
    _compare(model, load(tmp_path / "p", threads=1), prompt=PROMPT, steps=16)


def test_allnorm_threads_agree_bit_for_bit(tmp_path) -> None:
    """Each thread keeps its own normed rows (tl->o), and a long prompt (at least 8 rows per thread) quantizes
    each linear's input into its own shared slot: 1, 2 and 3 threads give identical logits."""
    pack_model(_model("qwen2", "all"), tmp_path / "p", head_dtype="int8")
    long = np.random.default_rng(1).integers(0, 96, 31).tolist()  # not a multiple of 2 or 3
    outs = []
    for threads in (1, 2, 3):
        engine = load(tmp_path / "p", threads=threads)
        engine.threads = threads  # past the clamp to this machine's cores
        engine._pick.threads = lambda kind, n=threads: n  # every call on exactly that many threads
        out = []
        for prompt in (PROMPT, long):
            engine.reset(40, max_batch=len(long))
            out += [engine.forward(prompt, all_logits=True), engine.forward([3])[None]]
        outs.append(np.concatenate(out))
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


def test_cli_pack_generate_classify_an_allnorm_model(tmp_path, capsys) -> None:
    """The user's path: a saved subln=all directory, `bitdistill pack`, then generate and classify."""
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from bitdistill.data import get_task, score_label_words
    from test_engine import FIX, SMALL

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(FIX / "tokenizer" / "tokenizer.json"), eos_token="<|endoftext|>"
    )
    model = _model("llama", "all", cfg=LlamaConfig(**{**SMALL, "vocab_size": len(tok)}))
    save(model, tmp_path / "m", tokenizer=tok)
    packed = str(tmp_path / "p")
    assert main(["pack", str(tmp_path / "m"), "--out", packed, "--head-dtype", "fp32"]) == 0
    capsys.readouterr()
    prompt = "the movie was"
    assert main(["generate", packed, "--prompt", prompt, "--max-new-tokens", "6", "--no-stop"]) == 0
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    n = len(tok(prompt)["input_ids"])
    assert capsys.readouterr().out == tok.decode(ids[n:], skip_special_tokens=True) + "\n"
    out = tmp_path / "preds.jsonl"
    args = [
        "classify",
        packed,
        "--task",
        "sst2",
        "--data",
        str(FIX / "sst2"),
        "--limit",
        "6",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    task = get_task("sst2")
    ref = score_label_words(model, tok, task.load("dev", FIX / "sst2", limit=6), task.label_words).numpy()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["pred"] for r in rows] == ref.argmax(1).tolist()


@pytest.mark.parametrize("subln, old", [("o_down", True), ("none", False)])
def test_format_1_packed_dirs_with_boolean_subln_still_load(subln: str, old: bool, tmp_path) -> None:
    model = _model("llama", subln)
    pack_model(model, tmp_path / "p", head_dtype="fp32")
    new = load(tmp_path / "p", threads=1)
    new.reset(16)
    ref = new.forward(PROMPT, all_logits=True)
    cfg_path = tmp_path / "p" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["packed"]["format_version"] == 2 and cfg["packed"]["arch"]["subln"] == subln
    cfg["packed"]["format_version"] = 1  # what bitdistill wrote before the modes existed
    cfg["packed"]["arch"]["subln"] = old
    cfg["bitdistill"]["subln"] = old
    cfg_path.write_text(json.dumps(cfg))
    engine = load(tmp_path / "p", threads=1)
    assert engine.arch["subln"] == subln
    engine.reset(16)
    np.testing.assert_array_equal(engine.forward(PROMPT, all_logits=True), ref)


def test_pack_refuses_norms_that_contradict_the_recorded_mode(tmp_path) -> None:
    model = _model("llama", "o_down")
    model.config.bitdistill["subln"] = "all"  # q/k/v/gate/up have no sub_norm
    with pytest.raises(BitDistillError, match=r"layer 0 q: lacks a SubLN norm.*subln='all'"):
        pack_model(model, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_gguf_export_refuses_allnorm(tmp_path, capsys) -> None:
    model = _model("llama", "all")
    save(model, tmp_path / "m")
    pack_model(model, tmp_path / "p", head_dtype="fp32")
    for src in (tmp_path / "m", tmp_path / "p"):
        assert main(["export", str(src), "--out", str(tmp_path / "m.gguf")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert err.startswith(f"bitdistill export: error: {src}: converted with subln=all"), err
        assert "--subln o_down" in err and "bitdistill pack" in err
        assert not (tmp_path / "m.gguf").exists()
    with pytest.raises(BitDistillError, match="subln=all"):  # the Python API too
        export_gguf(from_model(model), tmp_path / "m.gguf")


@pytest.mark.parametrize(
    "subln, count, where", [("all", 14, "every BitLinear"), ("o_down", 4, "o_proj"), ("none", 0, "none")]
)
def test_inspect_reports_the_mode(subln: str, count: int, where: str) -> None:
    from tiny_models import tiny_model

    info = summarize(to_bitnet(tiny_model("llama"), subln=subln))  # 2 blocks x 7 linears
    assert info["subln_mode"] == subln and info["num_subln"] == count
    lines = format_summary(info).splitlines()
    assert lines[3].startswith(f"SubLN norms      {count} (") and where in lines[3]
    assert f"subln={subln}" in lines[4]
