"""Corpus reading and packing, against a naive concatenation of the same documents."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from bitdistill.data import PackedCorpus, iter_text
from bitdistill.errors import BitDistillError

FIX = Path(__file__).parent / "fixtures"
CORPUS = FIX / "corpus"

A_DOCS = [
    "First document, first paragraph line one.\nStill the first document.",
    "Second document here.",
    "Third document after two blank lines.",
]
B_DOCS = ["jsonl document one", "jsonl document two is a little longer than the first one"]
C_DOCS = [
    f"parquet document {i}: " + "the quick brown fox jumps over the lazy dog " * (i + 1) for i in range(6)
]


def tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_file=str(FIX / "tokenizer" / "tokenizer.json"), eos_token="<|endoftext|>"
    )


def naive_blocks(tok, docs: list[str], block: int, passes: int = 1) -> list[list[int]]:
    stream: list[int] = []
    for _ in range(passes):
        for d in docs:
            stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]


def test_iter_text_reads_txt_jsonl_parquet_in_sorted_order():
    assert list(iter_text([str(CORPUS)])) == A_DOCS + B_DOCS + C_DOCS
    assert list(iter_text([str(CORPUS / "*.jsonl"), str(CORPUS / "a.txt")])) == B_DOCS + A_DOCS
    with pytest.raises(BitDistillError, match="no such file"):
        list(iter_text(["/nonexistent/corpus.txt"]))
    with pytest.raises(BitDistillError, match=r"bad_corpus\.jsonl line 3: invalid JSON"):
        list(iter_text([str(FIX / "malformed" / "bad_corpus.jsonl")]))
    with pytest.raises(BitDistillError, match=r"bad_json\.jsonl line 1: no string field 'text'"):
        list(iter_text([str(FIX / "malformed" / "bad_json.jsonl")]))
    with pytest.raises(BitDistillError, match="hub:name:split"):
        list(iter_text(["hub:only-a-name"]))


@pytest.mark.parametrize("block", [4, 16, 33])
def test_packing_matches_naive_concatenation(block):
    tok = tokenizer()
    corpus = PackedCorpus(tok, [str(CORPUS)], block_size=block)
    got = [b["input_ids"].tolist() for b in corpus]
    want = naive_blocks(tok, A_DOCS + B_DOCS + C_DOCS, block)
    assert got == want and len(got) > 2
    first = next(iter(corpus))
    assert first["input_ids"].dtype == torch.long and torch.equal(first["labels"], first["input_ids"])


def test_token_budget_stops_and_repeats_the_corpus():
    tok = tokenizer()
    once = naive_blocks(tok, A_DOCS + B_DOCS + C_DOCS, 16)
    corpus = PackedCorpus(tok, [str(CORPUS)], block_size=16, token_budget=16 * 5 + 1)
    assert len(corpus) == corpus.num_blocks == 6  # ceil(81 / 16)
    assert [b["input_ids"].tolist() for b in corpus] == once[:6]
    big = 16 * (len(once) * 2 + 3)
    corpus = PackedCorpus(tok, [str(CORPUS)], block_size=16, token_budget=big)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [b["input_ids"].tolist() for b in corpus]
    assert got == naive_blocks(tok, A_DOCS + B_DOCS + C_DOCS, 16, passes=3)[: len(once) * 2 + 3]
    assert any("repeating" in str(w.message) for w in caught)
    with pytest.raises(BitDistillError, match="less than one block"):
        list(PackedCorpus(tok, [str(CORPUS / "b.jsonl")], block_size=500, token_budget=1000))


def test_resume_continues_at_the_same_block():
    tok = tokenizer()
    full = [b["input_ids"].tolist() for b in PackedCorpus(tok, [str(CORPUS)], 8, token_budget=8 * 20)]
    first = PackedCorpus(tok, [str(CORPUS)], 8, token_budget=8 * 20)
    seen = [b["input_ids"].tolist() for b in itertools.islice(iter(first), 7)]
    state = first.state_dict()
    assert state == {"blocks": 7} and seen == full[:7]
    resumed = PackedCorpus(tok, [str(CORPUS)], 8, token_budget=8 * 20)
    resumed.load_state_dict(state)
    assert len(resumed) == 13
    assert [b["input_ids"].tolist() for b in resumed] == full[7:]
    again = PackedCorpus(tok, [str(CORPUS)], 8, token_budget=8 * 20)
    again.skip_blocks(19)
    assert [b["input_ids"].tolist() for b in again] == full[19:]


@pytest.mark.parametrize("chunk", [None, 2])
def test_dataloader_workers_keep_the_order(chunk):
    tok = tokenizer()
    corpus = PackedCorpus(tok, [str(CORPUS)], 8, token_budget=8 * 13, worker_chunk=chunk)
    corpus.skip_blocks(1)
    loader = torch.utils.data.DataLoader
    single = torch.cat([b["input_ids"] for b in loader(corpus, batch_size=2)])
    multi = torch.cat([b["input_ids"] for b in loader(corpus, batch_size=2, num_workers=2)])
    assert torch.equal(single, multi) and single.shape == (12, 8)
