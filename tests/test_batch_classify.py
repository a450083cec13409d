"""Batched (padding-free) classification equals the per-prompt runtime path bit for bit and predicts what the
PyTorch BitNet model predicts, on every SIMD level this CPU has.

Why bit for bit: in a batch every token still gets the same per-token integer dot products, norms and
attention over exactly its own sequence's cache rows, in the same order as alone; only which tokens share
a native call changes. The torch comparison has the float-noise tolerance of test_engine.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from bitdistill.errors import BitDistillError
from bitdistill.model.convert import to_bitnet
from bitdistill.runtime.engine import load, load_tokenizer
from bitdistill.runtime.pack_writer import pack_model
from bitdistill.runtime.scoring import score_label_words, score_label_words_batch, shared_prefix
from test_kernels import simd  # noqa: F401 - the per-SIMD-level fixture
from tiny_models import tiny_model

FIX = Path(__file__).parent / "fixtures"
PROMPTS = [
    "Sentence: it 's a charming and often affecting journey .\nSentiment:",
    "Sentence: unflinchingly bleak and desperate\nSentiment:",
    "Sentence: a",
    "Sentence: the movie was a long , long and rather tedious affair that never quite finds its feet , "
    "despite the cast\nSentiment:",
    "Sentence: great\nSentiment:",
]
WORDS = [" negative", " so-so", " bad", " mediocre"]  # 1, 5, 3 and 7 tokens with the fixture's BPE


def _bitnet(family: str, vocab: int, **overrides) -> torch.nn.Module:
    model = tiny_model(family, seed=1, vocab_size=vocab, **overrides)
    model.config._attn_implementation = "eager"
    to_bitnet(model, subln=True)
    with torch.no_grad():  # larger weights and non-trivial norms, as test_engine does
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
            elif p.dim() == 2:
                p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(torch BitNet model, HF tokenizer, packed dir) of a tiny Llama with the fixture BPE tokenizer."""
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(FIX / "tokenizer" / "tokenizer.json"), eos_token="<|endoftext|>"
    )
    model = _bitnet("llama", len(tok))
    out = tmp_path_factory.mktemp("batch") / "packed"
    pack_model(model, out, head_dtype="fp32", tokenizer=tok)
    return model, tok, out


def test_words_span_several_tokens(packed) -> None:
    """Both the first-token pass and continuation passes of different lengths are exercised."""
    _, tok, _ = packed
    assert [len(tok(w, add_special_tokens=False)["input_ids"]) for w in WORDS] == [1, 5, 3, 7]


@pytest.mark.parametrize("batch_tokens", [512, 40, 1])
def test_batch_equals_per_prompt_and_torch(packed, simd, batch_tokens) -> None:  # noqa: F811
    from bitdistill.data.scoring import score_label_words as torch_scores
    from bitdistill.data.tasks import Example

    model, hf_tok, path = packed
    engine, tok = load(path, threads=1), load_tokenizer(path)
    # batch_tokens 40 splits the prompts over several batches; 1 gives each prompt a batch of its own
    batched = np.array(score_label_words_batch(engine, tok, PROMPTS, WORDS, batch_tokens=batch_tokens))
    alone = np.array([score_label_words(engine, tok, p, WORDS) for p in PROMPTS])
    np.testing.assert_array_equal(batched, alone)
    ref = torch_scores(model, hf_tok, [Example(p, "", None) for p in PROMPTS], WORDS).numpy()
    assert batched.argmax(1).tolist() == ref.argmax(1).tolist()
    diff = np.abs(batched - ref)
    assert np.median(diff) < 1e-4 and diff.max() < 0.02 * np.abs(ref).max(), diff


def test_sequences_side_by_side_see_only_themselves(simd, tmp_path) -> None:  # noqa: F811
    """forward_seqs on three sequences laid side by side (a sliding-window model, sequences longer than
    the window) gives each one's logits exactly as a forward over that sequence alone."""
    model = _bitnet("mistral", 128, sliding_window=4)
    pack_model(model, tmp_path / "p", head_dtype="fp32")
    engine = load(tmp_path / "p", threads=2)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 128, n) for n in (9, 1, 6)]
    alone = []
    for s in seqs:
        engine.reset(len(s))
        alone.append(engine.forward(s.tolist(), all_logits=True))
    gap = 3  # unused cache slots between sequences must not matter either
    lens = np.array([len(s) for s in seqs])
    base = np.concatenate([[0], np.cumsum(lens + gap)[:-1]])
    engine.reset(int((lens + gap).sum()), max_batch=int(lens.sum()))
    got = engine.forward_seqs(
        np.concatenate(seqs), np.concatenate([np.arange(n) for n in lens]), np.repeat(base, lens),
        np.arange(lens.sum()),
    )  # fmt: skip
    np.testing.assert_array_equal(got, np.concatenate(alone))
    with torch.no_grad():  # and the model itself agrees
        ref = model(torch.tensor(seqs[0][None])).logits[0].numpy()
    assert np.median(np.abs(alone[0] - ref)) < 1e-5, np.abs(alone[0] - ref)


def test_forward_seqs_rejects_bad_arguments(packed) -> None:
    _, _, path = packed
    engine = load(path, threads=1)
    engine.reset(8, max_batch=4)
    ok = dict(tokens=[1, 2], pos=[0, 1], seq0=[0, 0], out_rows=[1])
    for bad, msg in [
        (dict(pos=[0]), "positions"),
        (dict(tokens=[1, 10**6]), "out of range"),
        (dict(seq0=[0, 7]), "do not fit"),
        (dict(tokens=[1] * 5, pos=list(range(5)), seq0=[0] * 5), "do not fit"),
        (dict(out_rows=[2]), "out_rows"),
        (dict(tokens=[], pos=[], seq0=[]), "no tokens"),
    ]:
        with pytest.raises(BitDistillError, match=msg):
            engine.forward_seqs(**{**ok, **bad})


def test_shared_prefix_is_the_common_head_leaving_each_prompt_a_token() -> None:
    def naive(ids):  # the longest n with every prompt starting with ids[0][:n] and longer than n
        n = 0
        while all(len(p) > n + 1 and p[n] == ids[0][n] for p in ids):
            n += 1
        return n

    rng = np.random.default_rng(3)
    cases = [
        [[1, 2, 3, 4], [1, 2, 3, 5, 6]],
        [[1, 2, 3], [1, 2, 3]],
        [[7], [7, 8]],
        [[1, 2], [2, 1]],
        [[4, 4, 4]],
    ]
    cases += [[[1, 2] + rng.integers(0, 3, rng.integers(1, 6)).tolist() for _ in range(4)] for _ in range(50)]
    for ids in cases:
        assert shared_prefix(ids) == naive(ids), ids
    assert shared_prefix([]) == 0


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma3"])
def test_a_shared_prompt_prefix_is_computed_once_and_changes_no_bit(family, tmp_path) -> None:
    """The template's head that every prompt starts with is run once and its cached keys/values
    copied to each prompt (Engine.copy_kv): the scores equal those computed without sharing and prompt by
    prompt, bit for bit (sliding windows shorter than the prompts included), on 1 and 2 threads; and the
    native calls computed the prefix once for the run, not once per prompt."""
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(FIX / "tokenizer" / "tokenizer.json"), eos_token="<|endoftext|>"
    )
    extra = {"sliding_window": 5, "use_sliding_window": True} if family == "qwen2" else {}
    model = _bitnet(family, len(tok), **extra)
    pack_model(model, tmp_path / "p", head_dtype="fp32", tokenizer=tok)
    head = "Classify the sentiment of the movie review below as negative or positive.\nReview:"
    prompts = [head + p.split("Sentence:", 1)[1] for p in PROMPTS]
    for threads in (1, 2):
        engine, btok = load(tmp_path / "p", threads=threads), load_tokenizer(tmp_path / "p")
        engine.threads = threads
        computed = []
        real = engine.forward_seqs

        def spy(tokens, *args, computed=computed, real=real, **kw):
            computed.append(len(tokens))
            return real(tokens, *args, **kw)

        engine.forward_seqs = spy
        shared = np.array(score_label_words_batch(engine, btok, prompts, WORDS, batch_tokens=200))
        n_shared = sum(computed)
        computed.clear()
        unshared = np.array(
            score_label_words_batch(engine, btok, prompts, WORDS, batch_tokens=200, share_prefix=False)
        )
        alone = np.array([score_label_words(engine, btok, p, WORDS) for p in prompts])
        np.testing.assert_array_equal(shared, unshared)
        np.testing.assert_array_equal(shared, alone)
        P = shared_prefix([btok.encode(p).ids for p in prompts])
        assert P >= len(btok.encode(head).ids) - 2  # the template's head, up to the BPE seam at "Review:"
        assert n_shared == sum(computed) - (len(prompts) - 1) * P  # the prefix once, not once per prompt
        # one prompt alone saves nothing (MIN_SHARED_TOKENS): no extra cache-only call
        calls = []
        for share in (True, False):
            computed.clear()
            score_label_words_batch(engine, btok, prompts[:1], WORDS, share_prefix=share)
            calls.append(list(computed))
        assert calls[0] == calls[1]


def test_copy_kv_refuses_slots_outside_the_cache(packed) -> None:
    _, _, path = packed
    engine = load(path, threads=1)
    engine.reset(8, max_batch=4)
    engine.copy_kv(0, 4, 4)  # the last four slots: fine
    for src, dst, n in [(0, 5, 4), (6, 0, 3), (-1, 0, 1), (0, 0, -1)]:
        with pytest.raises(BitDistillError, match="leave the 8-slot cache"):
            engine.copy_kv(src, dst, n)


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_forward_seqs_without_output_rows_only_fills_the_cache(family, simd, tmp_path) -> None:  # noqa: F811
    """No out_rows: the call caches every token's keys/values (the last layer stops there, no head) and
    returns no logits; continuing the sequence from that cache gives the logits of one whole pass, bit for
    bit (a sliding window shorter than the sequence; 1 and 2 threads, 20 cached rows split by rows)."""
    extra = {"sliding_window": 6} if family == "mistral" else {}
    model = _bitnet(family, 128, **extra)
    pack_model(model, tmp_path / "p", head_dtype="fp32")
    seq = np.random.default_rng(1).integers(0, 128, 29)
    for threads in (1, 2):
        engine = load(tmp_path / "p", threads=threads)
        engine.threads = threads
        engine.reset(40, max_batch=29)
        whole = engine.forward(seq.tolist(), all_logits=True)
        engine.reset(40, max_batch=29)
        k = 20
        none = engine.forward_seqs(seq[:k], np.arange(k), np.full(k, 3), [])
        assert none.shape == (0, 128)
        rest = engine.forward_seqs(seq[k:], np.arange(k, 29), np.full(29 - k, 3), np.arange(29 - k))
        np.testing.assert_array_equal(rest, whole[k:])
