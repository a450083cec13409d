"""The native decode engine reproduces the PyTorch BitNet model (eval mode) for every supported family.

Stated tolerance (fp32 head): at every step the largest logit difference is below 2% of the largest |logit|,
and the median over steps is below 1e-5 absolute (observed ~5e-7). The engine and PyTorch differ only in
float summation order; that noise occasionally flips one int8 activation rounding at a .5 boundary, which
moves logits by ~1e-3 to ~5e-2 for that step (more often with subln "all", which quantizes 7 inputs per
block instead of 4) — hence two bounds. Greedy decoding must pick identical tokens for 32 steps, except at a
near-tie: where the engine's pick trails PyTorch's by no more than that step's measured logit difference
(within the bounds), PyTorch's token is fed to both. Lower-precision heads are checked against their own
formulas in test_kernels.py and loosely here.

The engine runs single-threaded beside PyTorch here: two OpenMP runtimes spinning on a 2-core machine slow
each other down 1000x; threaded runs are covered by the kernel tests and the benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from bitdistill.errors import BitDistillError
from bitdistill.model.convert import to_bitnet
from bitdistill.quant.numerics import ternarize
from bitdistill.runtime.engine import SamplingParams, load
from bitdistill.runtime.pack_writer import pack_model
from bitdistill.runtime.packed import load_packed, unpack_weight
from tiny_models import tiny_config

SMALL = dict(
    vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256,
)  # fmt: skip

CONFIGS = {
    "llama": lambda: tiny_config("llama", **SMALL, tie_word_embeddings=True),
    "mistral": lambda: tiny_config("mistral", **SMALL, sliding_window=8, tie_word_embeddings=False),
    "qwen2": lambda: tiny_config(
        "qwen2", **SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=1, tie_word_embeddings=True
    ),
    "qwen3": lambda: tiny_config("qwen3", **SMALL, head_dim=32, tie_word_embeddings=True),
    "gemma3": lambda: tiny_config(
        "gemma3", **SMALL, layer_types=["sliding_attention", "full_attention", "sliding_attention"]
    ),  # head_dim 16 and sliding_window 8: tiny_config's
}
STEPS = 32
MEDIAN_ATOL = 1e-5
MAX_RTOL = 0.02


def _model(family: str, subln: bool | str, seed: int = 0, cfg=None, **convert) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = cfg or CONFIGS[family]()
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg)
    to_bitnet(model, subln=subln, **convert)
    with torch.no_grad():  # non-trivial norms (SubLN, q/k norms, Gemma's 1+w) and larger weights
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
            elif "bias" in name:
                p.normal_(0, 0.5)
            elif p.dim() == 2:
                p.normal_(0, 0.1)
    return model.eval()


def _compare(model, engine, prompt: list[int], steps: int = STEPS) -> None:
    """Greedy-decode with both: logits agree (see the module docstring) and tokens are identical."""
    engine.reset(len(prompt) + steps + 1, max_batch=8)  # batch 8: the prompt prefill spans several chunks
    ids = list(prompt)
    logits = engine.forward(prompt, all_logits=True)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    diffs = list(np.abs(logits - ref).max(axis=1))
    scale = np.abs(ref).max()
    for _ in range(steps):
        last = logits[-1] if logits.ndim == 2 else logits
        with torch.no_grad():
            ref_last = model(torch.tensor([ids])).logits[0, -1].numpy()
        diffs.append(np.abs(last - ref_last).max())
        tok, mine = int(np.argmax(ref_last)), int(np.argmax(last))
        tie = ref_last[tok] - ref_last[mine] <= diffs[-1]  # a flip within the logit tolerance, not an error
        assert tok == mine or tie, f"greedy token differs at position {len(ids)}"
        ids.append(tok)
        logits = engine.forward([tok])
    assert np.median(diffs) < MEDIAN_ATOL, diffs
    assert max(diffs) < MAX_RTOL * scale, diffs


@pytest.mark.parametrize("subln", ["o_down", "all", "none"])
@pytest.mark.parametrize("family", list(CONFIGS))
def test_engine_matches_pytorch(family: str, subln: str, tmp_path) -> None:
    model = _model(family, subln)
    pack_model(model, tmp_path / "p", head_dtype="fp32")
    engine = load(tmp_path / "p", threads=1)
    _compare(model, engine, prompt=[1, 7, 3, 11, 42, 5, 9, 2, 60, 33, 17, 8, 4])


@pytest.mark.parametrize("bits", ["2", "1.58"])
def test_packed_weights_are_the_trained_ternary_weights(bits: str, tmp_path) -> None:
    model = _model("qwen3", subln=True)
    pack_model(model, tmp_path / "p", bits=bits, head_dtype="fp32")
    pm = load_packed(tmp_path / "p")
    layer = model.model.layers[1]
    for name, mod in (
        ("q", layer.self_attn.q_proj),
        ("down", layer.mlp.down_proj),
        ("up", layer.mlp.up_proj),
    ):
        np.testing.assert_array_equal(unpack_weight(pm, 1, name), ternarize(mod.weight)[0].numpy())


@pytest.mark.parametrize(
    "convert",
    [dict(granularity="channel"), dict(granularity="group", group_size=128)],
    ids=["channel", "group"],
)
def test_engine_channel_and_group_scales(convert: dict, tmp_path) -> None:
    # every layer width a multiple of the 128-column block, as group scales need
    cfg = tiny_config("llama", **{**SMALL, "hidden_size": 128, "intermediate_size": 256})
    model = _model("llama", subln=True, cfg=cfg, **convert)
    pack_model(model, tmp_path / "p", head_dtype="fp32", bits="1.58")
    _compare(model, load(tmp_path / "p", threads=1), prompt=[3, 1, 4, 1, 5, 9, 2, 6], steps=8)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8", "q4"])
def test_engine_low_precision_heads(dtype: str, tmp_path) -> None:
    """fp16/bf16/int8/q4 embeddings + head: the engine equals PyTorch run with the same rounded weights."""
    model = _model("llama", subln=True)
    pack_model(model, tmp_path / "p", head_dtype=dtype)
    pm = load_packed(tmp_path / "p")
    emb = model.get_input_embeddings().weight
    with torch.no_grad():  # give the PyTorch model exactly the weights the packed file holds
        if dtype == "int8":
            w = pm.tensors["embed"].astype(np.float32) * pm.tensors["embed.scale"][:, None]
        elif dtype == "bf16":
            w = (pm.tensors["embed"].astype(np.uint32) << 16).view(np.float32)
        elif dtype == "q4":  # written out: low nibbles are columns 0-31 of each 64-column group
            c = pm.tensors["embed"].reshape(emb.shape[0], -1, 32)
            codes = np.concatenate([c & 15, c >> 4], axis=2).astype(np.float32) - 8
            w = (codes * pm.tensors["embed.gscale"][..., None]).reshape(emb.shape[0], -1)[:, : emb.shape[1]]
        else:
            w = pm.tensors["embed"].astype(np.float32)
        emb.copy_(torch.from_numpy(np.ascontiguousarray(w)))
    engine = load(tmp_path / "p", threads=1)
    engine.reset(64)
    prompt = [5, 6, 7, 8, 9, 10]
    logits = engine.forward(prompt, all_logits=True)
    with torch.no_grad():
        out = model(torch.tensor([prompt]), output_hidden_states=True)
    ref = out.logits[0].numpy()
    if dtype == "int8":  # the int8 head's own numerics: symmetric per-token int8 x, integer sums, row scales
        h = out.hidden_states[-1][0].numpy()
        s = (127.0 / np.maximum(np.abs(h).max(axis=1), 1e-5)).astype(np.float32)
        hq = np.clip(np.rint(h * s[:, None]), -127, 127).astype(np.int64)
        acc = (hq @ pm.tensors["embed"].astype(np.int64).T).astype(np.float32)
        ref = acc * (pm.tensors["embed.scale"][None, :] / s[:, None])
    if dtype == "q4":  # same int8 x; integer sums per 64-column group, scaled by the group's d, summed
        h = out.hidden_states[-1][0].numpy()
        s = (127.0 / np.maximum(np.abs(h).max(axis=1), 1e-5)).astype(np.float32)
        hq = np.clip(np.rint(h * s[:, None]), -127, 127).astype(np.int64)
        v, hd = w.shape
        ng = -(-hd // 64)
        hp = np.zeros((len(prompt), ng * 64), np.int64)
        hp[:, :hd] = hq
        c = pm.tensors["embed"].reshape(v, -1, 32)
        cp = np.concatenate([c & 15, c >> 4], axis=2).astype(np.int64) - 8
        acc = np.einsum("tgj,vgj->tvg", hp.reshape(len(prompt), ng, 64), cp)
        ref = (acc * pm.tensors["embed.gscale"][None].astype(np.float64)).sum(axis=2) / s[:, None]
    np.testing.assert_allclose(logits, ref, atol=1e-4 * np.abs(ref).max(), rtol=1e-4)


def test_generate_greedy_and_sampling(tmp_path) -> None:
    model = _model("qwen2", subln=True)
    pack_model(model, tmp_path / "p", head_dtype="fp32")
    engine = load(tmp_path / "p", threads=1)
    prompt = [1, 2, 3, 4, 5]
    out, stats = engine.generate(prompt, 10)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert out == ids[len(prompt) :]
    assert stats.new_tokens == 10 and stats.prompt_tokens == 5
    # stop ids end generation right after the stop token
    stop_out, _ = engine.generate(prompt, 10, stop_ids=[out[2]])
    assert stop_out == out[: out.index(out[2]) + 1]
    # seeded sampling is reproducible, and top_k=1 is greedy
    p = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=3)
    assert engine.generate(prompt, 8, p)[0] == engine.generate(prompt, 8, p)[0]
    assert engine.generate(prompt, 10, SamplingParams(temperature=1.5, top_k=1, seed=0))[0] == out


def test_long_prompt_in_one_call_equals_token_by_token_on_any_thread_count(tmp_path) -> None:
    """A 50-token prompt in one call (the GEMM path, its kv heads' attention handed to whichever thread is
    free) gives the same logits on 1, 2 and 3 threads as token by token, with a sliding window (mistral: 8)
    and without."""
    for family in ("llama", "mistral"):
        model = _model(family, "o_down")
        pack_model(model, tmp_path / family, head_dtype="fp32")
        prompt = np.random.default_rng(2).integers(0, 96, 50).tolist()
        engine = load(tmp_path / family, threads=1)
        engine.reset(len(prompt))
        ref = np.stack([engine.forward([tok]) for tok in prompt])
        for threads in (1, 2, 3):
            engine = load(tmp_path / family, threads=threads)
            engine.threads = threads  # past the clamp to this machine's cores: correctness when oversubscribed
            engine._pick.threads = lambda kind, n=threads: n  # every call on exactly that many threads
            engine.reset(len(prompt), max_batch=len(prompt))
            np.testing.assert_array_equal(engine.forward(prompt, all_logits=True), ref)


def test_prefetch_distance_changes_no_value(tmp_path) -> None:
    """The decode GEMVs' software prefetch (BITDISTILL_PREFETCH) only moves weights into the cache earlier:
    decode logits with none (0), the 1 KiB and 8 KiB defaults and the 64 KiB maximum agree bit for bit."""
    from bitdistill.runtime.native import lib, prefetch_ahead

    model = _model("llama", subln=True)
    pack_model(model, tmp_path / "p", head_dtype="int8")
    engine = load(tmp_path / "p", threads=1)
    default = prefetch_ahead()
    outs = []
    try:
        for bytes_ahead in (0, 1024, 8192, 1 << 16):
            lib().bd_set_prefetch_ahead(bytes_ahead)
            assert prefetch_ahead() == bytes_ahead
            engine.reset(32)
            out = [engine.forward([4, 8, 15, 16])[None]] + [engine.forward([t])[None] for t in (23, 42, 7)]
            outs.append(np.concatenate(out))
    finally:
        lib().bd_set_prefetch_ahead(-1)
    assert prefetch_ahead() == default
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


def test_threads_give_identical_results(tmp_path) -> None:
    """Work is split by output rows and kv heads, never inside a sum: 1, 2, 3 and 5 threads agree bit for bit
    (whichever thread takes a chunk from the dispenser). A 9-token prompt has every thread norm and quantize
    all rows itself; a 45-token one (at least 8 rows per thread) splits those steps by rows into shared
    buffers (engine.c, bd_rows); the decode steps after it are private again."""
    model = _model("gemma3", subln=True)
    pack_model(model, tmp_path / "p", head_dtype="int8")
    short = [4, 8, 15, 16, 23, 42, 7, 1, 9]
    long = np.random.default_rng(5).integers(0, 96, 45).tolist()
    outs = []
    for threads in (1, 2, 3, 5):
        engine = load(tmp_path / "p", threads=threads)
        engine.threads = threads  # past the clamp to this machine's cores: correctness when oversubscribed
        engine._pick.threads = lambda kind, n=threads: n  # every call on exactly that many (no ThreadPicker)
        out = []
        for prompt in (short, long):
            engine.reset(64, max_batch=len(long))
            out += [engine.forward(prompt, all_logits=True), engine.forward([3])[None], engine.forward([5])[None]]
        outs.append(np.concatenate(out))
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


def test_last_layer_computes_only_the_rows_that_get_logits(tmp_path) -> None:
    """The last layer runs its attention, o_proj and FFN only on the rows that get logits (engine.c, keep_rows),
    gathered through private or shared buffers: any set of output rows (the last, a few, enough to split by
    rows on 2-3 threads, and, computed in full, unsorted with a repeat) has the same bits as those rows of the all-logits call, and
    the keys/values of every token are still cached (the next decode step agrees too)."""
    model = _model("llama", "o_down")
    pack_model(model, tmp_path / "p", head_dtype="fp32")
    prompt = np.random.default_rng(7).integers(0, 96, 45).tolist()
    picks = [[44], [3, 17, 44], list(range(0, 45, 2)), [30, 2, 30, 44, 0] + list(range(5, 25))]
    for threads in (1, 2, 3):
        engine = load(tmp_path / "p", threads=threads)
        engine.threads = threads
        engine._pick.threads = lambda kind, n=threads: n
        engine.reset(64, max_batch=len(prompt))
        full = engine.forward(prompt, all_logits=True)
        after = engine.forward([3])
        for rows in picks:
            engine.reset(64, max_batch=len(prompt))
            n = len(prompt)
            got = engine.forward_seqs(np.array(prompt), np.arange(n), np.zeros(n), np.array(rows))
            np.testing.assert_array_equal(got, full[rows])
            engine.pos = n  # decode on from the prompt forward_seqs cached
            np.testing.assert_array_equal(engine.forward([3]), after)
        engine.reset(64, max_batch=len(prompt))
        np.testing.assert_array_equal(engine.forward(prompt), full[-1])
        np.testing.assert_array_equal(engine.forward([3]), after)


def test_thread_count_is_validated_and_clamped(tmp_path) -> None:
    """Counts outside 1..4 per core are refused; a valid count is clamped to the cores this process may use."""
    import os

    from bitdistill._threads import max_threads

    model = _model("llama", subln=False)
    pack_model(model, tmp_path / "p", head_dtype="fp32")
    cores = len(os.sched_getaffinity(0))
    engine = load(tmp_path / "p", threads=max_threads())
    assert engine.requested_threads == max_threads() and engine.threads == min(max_threads(), cores)
    assert load(tmp_path / "p", threads=1).threads == 1
    for bad in (0, -1, max_threads() + 1):
        with pytest.raises(BitDistillError, match="threads"):
            load(tmp_path / "p", threads=bad)


FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def bitnet_dir(tmp_path_factory):
    """A saved tiny BitNet Llama with the fixture BPE tokenizer (vocab 400), as `bitdistill pack` reads it."""
    from transformers import PreTrainedTokenizerFast

    from bitdistill.model.io import save

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(FIX / "tokenizer" / "tokenizer.json"), eos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    model = _model("llama", subln=True, cfg=tiny_config("llama", **{**SMALL, "vocab_size": len(tok)}))
    out = tmp_path_factory.mktemp("cli") / "bitnet"
    save(model, out, tokenizer=tok)
    return model, tok, out


def test_cli_pack_generate_classify(bitnet_dir, tmp_path, capsys) -> None:
    from bitdistill.cli import main
    from bitdistill.data import get_task, score_label_words

    model, tok, src = bitnet_dir
    packed = tmp_path / "packed"
    assert main(["pack", str(src), "--out", str(packed), "--bits", "1.58", "--head-dtype", "fp32"]) == 0
    assert "smaller than fp16" in capsys.readouterr().out

    # generate streams the same greedy continuation PyTorch produces
    prompt = "the movie was"
    assert main(["generate", str(packed), "--prompt", prompt, "--max-new-tokens", "8", "--no-stop"]) == 0
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    expect = tok.decode(ids[len(tok(prompt)["input_ids"]) :], skip_special_tokens=True)
    assert capsys.readouterr().out == expect + "\n"

    # classify predicts what the trainer's scorer predicts on the PyTorch model
    out_file = tmp_path / "preds.jsonl"
    args = ["classify", str(packed), "--task", "sst2", "--data", str(FIX / "sst2"), "--limit", "6"]
    assert main([*args, "--out", str(out_file)]) == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    task = get_task("sst2")
    examples = task.load("dev", FIX / "sst2", limit=6)
    ref = score_label_words(model, tok, examples, task.label_words).numpy()
    assert [r["pred"] for r in rows] == ref.argmax(1).tolist()
    # the module docstring's tolerance: float summation order may flip one int8 activation rounding, which
    # moves a log-probability by up to ~1e-2 in one example; the typical difference stays float noise
    diff = np.abs(np.array([r["scores"] for r in rows]) - ref)
    assert np.median(diff) < 1e-4, diff
    assert diff.max() < MAX_RTOL * np.abs(ref).max(), diff
    assert "accuracy:" in capsys.readouterr().out

    # user errors are reported, not raised
    assert main(["generate", str(tmp_path / "missing"), "--prompt", "x"]) == 2


def test_packed_model_records_its_task_for_classify(bitnet_dir, tmp_path, capsys) -> None:
    """`pack --task` records the task in the packed config; classify then needs no task flags and predicts
    exactly what the same task given by flags predicts; a model recording no task asks for the flags."""
    from bitdistill.cli import main
    from bitdistill.data.task_record import CONFIG_KEY, task_record
    from bitdistill.data.tasks import get_task

    _, _, src = bitnet_dir
    template = r"Review: {text}\nMood:"
    packed = tmp_path / "packed"
    flags = ["--task", "sst2", "--labels", "bad,good", "--template", template]
    assert main(["pack", str(src), "--out", str(packed), "--head-dtype", "fp32", *flags]) == 0
    config = json.loads((packed / "config.json").read_text())
    expect = get_task("sst2", label_words=[" bad", " good"], template="Review: {text}\nMood:")
    assert config[CONFIG_KEY] == task_record(expect)
    capsys.readouterr()

    def preds(*extra: str) -> list[int]:
        out_file = tmp_path / "preds.jsonl"
        args = ["classify", str(packed), "--data", str(FIX / "sst2"), "--limit", "6", "--out", str(out_file)]
        assert main([*args, *extra]) == 0
        return [json.loads(line)["pred"] for line in out_file.read_text().splitlines()]

    recorded = preds()
    assert "task: sst2, the one" in capsys.readouterr().err
    assert recorded == preds(*flags)
    # a flag still overrides the record: the other label order flips every prediction
    assert preds("--labels", "good,bad") == [1 - p for p in recorded]

    bare = tmp_path / "bare"
    assert main(["pack", str(src), "--out", str(bare), "--head-dtype", "fp32"]) == 0
    assert CONFIG_KEY not in json.loads((bare / "config.json").read_text())
    capsys.readouterr()
    assert main(["classify", str(bare), "--text", "fine"]) == 2
    assert "records no task: give --task" in capsys.readouterr().err


def test_sampling_filters_match_brute_force() -> None:
    """Top-k then top-p keep exactly the tokens a sort over the full vocabulary keeps (large vocab path too)."""
    from bitdistill.runtime.sampling import sample

    rng = np.random.default_rng(0)
    for v, k, p in [(50, 0, 0.5), (50, 10, 0.9), (3000, 0, 0.3), (3000, 0, 0.999), (3000, 100, 0.8)]:
        logits = (rng.normal(size=v) * 3).astype(np.float32)
        z = logits.astype(np.float64) / 0.7
        order = np.argsort(-z)
        if k:
            order = order[:k]
        probs = np.exp(z[order] - z[order].max())
        probs /= probs.sum()
        keep = set(order[: np.searchsorted(np.cumsum(probs), p) + 1].tolist())
        params = SamplingParams(temperature=0.7, top_k=k, top_p=p)
        drawn = {sample(logits, params, rng) for _ in range(300)}
        assert drawn <= keep, (v, k, p)
        if len(keep) <= 3:
            assert drawn == keep
    assert sample(np.array([0.1, 3.0, -1.0], np.float32), SamplingParams(), rng) == 1


def test_fp16_kv_cache(tmp_path) -> None:
    """kv_dtype="fp16" rounds keys/values to half; downstream that noise flips some int8 activation roundings,
    so logits move by up to a few percent of the largest |logit| (observed <2%); greedy tokens stay equal."""
    model = _model("qwen3", subln=True)
    pack_model(model, tmp_path / "p", head_dtype="fp32")
    engine = load(tmp_path / "p", threads=1, kv_dtype="fp16")
    engine.reset(64, max_batch=4)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    logits = engine.forward(ids, all_logits=True)
    for _ in range(16):
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        last = logits[-1] if logits.ndim == 2 else logits
        assert np.abs(last - ref[-1]).max() < 0.05 * np.abs(ref).max()
        assert int(np.argmax(last)) == int(np.argmax(ref[-1]))
        ids.append(int(np.argmax(ref[-1])))
        logits = engine.forward([ids[-1]])
    assert engine.kv16 == 1 and load(tmp_path / "p").kv16 == 0
    with pytest.raises(BitDistillError, match="kv_dtype"):
        load(tmp_path / "p", kv_dtype="int4")


def test_thread_picker_uses_the_faster_count_and_keeps_probing() -> None:
    """Calls 0 and 1 of every PROBE time all threads and one (all first: a single call runs as many as
    asked); between probes the faster count (by the median
    seconds per token of its last WINDOW calls) runs, per kind of call; one thread never picks more."""
    from bitdistill.runtime.engine import ThreadPicker

    pick = ThreadPicker(2)
    assert [pick.threads("decode") for _ in range(2)] == [2, 1]
    assert pick.threads("decode") == 2  # nothing recorded yet: all threads
    pick.record("decode", 1, 0.010)
    pick.record("decode", 2, 0.020)  # another process holds a core: two threads are slower
    assert pick.threads("decode") == 1 and pick.threads("prefill") == 2  # prefill: its own probe, call 0
    assert pick.threads("prefill") == 1
    pick.record("decode", 2, 0.001)  # median of [0.020, 0.001] = 0.0105: one thread no longer 5 % faster
    assert pick.threads("decode") == 2
    for _ in range(ThreadPicker.WINDOW):
        pick.record("decode", 2, 0.030)  # the window forgets: only the last WINDOW calls count
    assert pick.sec_per_token("decode", 2) == 0.030 and pick.threads("decode") == 1
    calls = [pick.threads("decode") for _ in range(ThreadPicker.PROBE)]
    assert calls.count(2) == 1  # the next probe still times all threads
    assert ThreadPicker(1).threads("decode") == 1
    assert pick.used[("decode", 2)] == 4 and pick.used[("decode", 1)] == 3 + ThreadPicker.PROBE - 1
    before = dict(pick.used)
    pick.threads("decode")
    assert pick.picks()["decode 1"] == 3 + ThreadPicker.PROBE and pick.picks(before) == {
        "decode 1": 1, "decode 2": 0, "prefill 1": 0, "prefill 2": 0}  # fmt: skip


def test_thread_picker_needs_one_thread_clearly_faster_and_ignores_outliers() -> None:
    """One thread takes over only when 5 % faster (MARGIN) than all threads, and a single slow call of all
    threads (a noisy VM) does not make it so."""
    from bitdistill.runtime.engine import ThreadPicker

    pick = ThreadPicker(2)
    pick.threads("decode"), pick.threads("decode")  # the two probes
    pick.record("decode", 1, 0.0095)
    pick.record("decode", 2, 0.0098)  # 3 % slower: within the noise of one call
    assert pick.threads("decode") == 2
    for sec in (0.0070, 0.0072, 0.0500, 0.0071):  # one stalled token among fast ones
        pick.record("decode", 2, sec)
    assert pick.threads("decode") == 2
    pick.record("decode", 1, 0.0010)
    pick.record("decode", 1, 0.0010)  # median of [0.0095, 0.001, 0.001]: now clearly faster
    assert pick.threads("decode") == 1


def test_profile_counts_phases_only_when_on(tmp_path) -> None:
    """The per-phase counters (BITDISTILL_PROFILE, passed in by native.lib()) stay at zero while profiling is
    off, and count every phase a decode step runs once it is on; results do not change either way."""
    from bitdistill.runtime.native import lib, profile_ticks

    pack_model(_model("llama", subln=True), tmp_path / "p", head_dtype="q4")
    engine = load(tmp_path / "p", threads=1)
    engine.reset(16)
    L = lib()
    L.bd_set_profile(0)
    L.bd_profile_reset()
    off = engine.forward([4, 8, 15])
    assert all(t == [0] for t in profile_ticks(1).values())
    L.bd_set_profile(1)
    try:
        engine.reset(16)
        on = engine.forward([4, 8, 15])
        ticks = profile_ticks(1)
    finally:
        L.bd_set_profile(0)
    np.testing.assert_array_equal(off, on)
    ran = ("norm+quant", "q/k/v", "attention", "o_proj", "gate/up+act", "down", "lm head")
    assert all(ticks[p][0] > 0 for p in ran) and set(ran) < set(ticks)


def test_cli_kv_dtype_reaches_the_engine(bitnet_dir, tmp_path, capsys) -> None:
    """generate / classify --kv-dtype fp16 give what the Python engine loaded with kv_dtype="fp16" gives (the
    same greedy tokens, the same scores), the flag's choices are the engine's, and a bad value exits 2."""
    from bitdistill.cli import main
    from bitdistill.cli._kv_dtype import KV_DTYPES as CLI_KV_DTYPES
    from bitdistill.data import get_task
    from bitdistill.runtime.engine import KV_DTYPES, load_tokenizer
    from bitdistill.runtime.scoring import score_label_words as runtime_scores

    assert CLI_KV_DTYPES == KV_DTYPES
    _, tok, src = bitnet_dir
    packed = tmp_path / "packed"
    assert main(["pack", str(src), "--out", str(packed), "--head-dtype", "fp32"]) == 0
    capsys.readouterr()
    prompt = "the movie was"
    assert main(["generate", str(packed), "--prompt", prompt, "--max-new-tokens", "8", "--no-stop",
                 "--kv-dtype", "fp16", "--threads", "1"]) == 0  # fmt: skip
    engine = load(packed, threads=1, kv_dtype="fp16")
    ids = tok(prompt)["input_ids"]
    engine.reset(len(ids) + 9)
    logits, new = engine.forward(ids), []
    for _ in range(8):
        new.append(int(np.argmax(logits)))
        logits = engine.forward([new[-1]])
    assert capsys.readouterr().out == tok.decode(new, skip_special_tokens=True) + "\n"

    out_file = tmp_path / "preds.jsonl"
    assert main(["classify", str(packed), "--task", "sst2", "--data", str(FIX / "sst2"), "--limit", "4",
                 "--kv-dtype", "fp16", "--threads", "1", "--out", str(out_file)]) == 0  # fmt: skip
    task = get_task("sst2")
    examples = task.load("dev", FIX / "sst2", limit=4)
    rt_tok = load_tokenizer(packed)
    ref = [runtime_scores(engine, rt_tok, ex.prompt, list(task.label_words)) for ex in examples]
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    np.testing.assert_allclose([r["scores"] for r in rows], ref, atol=1e-5)  # the file rounds to 6 decimals
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:
        main(["generate", str(packed), "--prompt", "x", "--kv-dtype", "fp8"])
    assert bad.value.code == 2 and "fp8" in capsys.readouterr().err


def test_short_calls_keep_their_own_thread_picker_records(tmp_path) -> None:
    """call_kind: 1 token is decode, fewer than SHORT_CALL tokens a short call, more a prefill; a short
    forward_seqs call (a classification's shared prompt prefix) is timed into the short records only, so its
    fixed costs per token cannot make the picker move the long batches to one thread."""
    from bitdistill.runtime.engine import SHORT_CALL, call_kind

    assert [call_kind(n) for n in (1, 2, SHORT_CALL - 1, SHORT_CALL, 512)] == [
        "decode", "short", "short", "prefill", "prefill"]  # fmt: skip
    model = _model("llama", subln=True)
    pack_model(model, tmp_path / "p", head_dtype="int8")
    engine = load(tmp_path / "p", threads=2)
    engine.threads = engine._pick.max = 2  # a 1-core CI machine would clamp the picker to one thread
    engine.reset(128, max_batch=64)
    engine.forward_seqs([4, 8, 15], [0, 1, 2], [0, 0, 0], [2])
    assert set(engine._pick.recent) == {("short", 2)}
    engine.forward_seqs(list(range(40)), list(range(40)), [64] * 40, [39])
    assert set(engine._pick.recent) == {("short", 2), ("prefill", 2)}
    engine.reset(128)
    engine.forward([1, 2, 3])
    engine.forward([4])
    assert ("decode", 2) in engine._pick.recent and len(engine._pick.recent[("short", 1)]) == 1


def test_thread_picker_probes_less_while_the_same_count_stays_faster() -> None:
    """Probe pairs start at calls 0 and PROBE; then each pair whose records name the same faster count doubles
    the gap to the next (x8 when the slower count took at least twice as long), up to PROBE_MAX, and a
    change of the faster count brings the gap back to PROBE."""
    from bitdistill.runtime.engine import ThreadPicker

    def probes(pick: ThreadPicker, calls: int, one: float, full: float) -> list[int]:
        """Drive `calls` decode calls, recording the given seconds per token; the calls that probed one thread."""
        starts = []
        for _ in range(calls):
            i = pick.calls.get("decode", -1) + 1
            if i == pick.next_probe.get("decode", 0):
                starts.append(i)
            n = pick.threads("decode")
            pick.record("decode", n, one if n == 1 else full)
        return starts

    P, M = ThreadPicker.PROBE, ThreadPicker.PROBE_MAX
    pick = ThreadPicker(2)
    # idle cores: two threads 1.3x faster, not clearly: the gap doubles each pair up to PROBE_MAX
    expected, at, gap = [0, P], P, P
    while at + min(2 * gap, M) < 4000:
        gap = min(2 * gap, M)
        at += gap
        expected.append(at)  # 0, 32, 96, 224, 480, 992, 1504, ...
    assert probes(pick, 4000, one=0.013, full=0.010) == expected
    assert pick.gap["decode"] == M
    # a core gets busy: the next pair finds one thread 3x faster, a change: back to PROBE, then x8 steps
    start = pick.next_probe["decode"]
    got = probes(pick, start + 2 * P + 8 * P - pick.calls["decode"] + 1, one=0.010, full=0.030)
    assert got == [start, start + P, start + P + 8 * P]
    pick2 = ThreadPicker(2)
    assert probes(pick2, 2 * P + 1, one=0.010, full=0.030) == [0, P]  # the first finding backs off at once
    assert pick2.gap["decode"] == 8 * P
