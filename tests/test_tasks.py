"""Tasks, loaders, encoding with target-only labels, and label-word scoring."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bitdistill import to_bitnet
from bitdistill.data import (
    TASKS,
    Collator,
    Example,
    TaskDataset,
    check_label_words,
    classification_predictions,
    collate,
    encode_example,
    get_task,
    score_label_words,
)
from bitdistill.errors import BitDistillError

FIX = Path(__file__).parent / "fixtures"
TOKENIZER = FIX / "tokenizer" / "tokenizer.json"
SHARED_SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    if not bos:
        return PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), eos_token="<|endoftext|>")
    raw = Tokenizer.from_file(str(TOKENIZER))
    raw.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", raw.token_to_id("<|endoftext|>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def tsv_rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    return [line.split("\t") for line in lines[1:]]


# -- loading ----------------------------------------------------------------------------------------------


def test_sst2_tsv_matches_the_file_row_by_row():
    task = get_task("sst2")
    examples = task.load("train", FIX / "sst2")
    rows = tsv_rows(FIX / "sst2" / "train.tsv")
    assert len(examples) == len(rows) == 10
    for ex, (sentence, label) in zip(examples, rows, strict=True):
        assert ex.prompt == f"Sentence: {sentence.strip()}\nSentiment:"
        assert ex.label == int(label)
        assert ex.target == [" negative", " positive"][int(label)]
        assert ex.prompt[slice(*ex.spans[0])] == sentence.strip()
        assert not ex.eos
    assert '"depressed"' in examples[8].prompt  # quotes kept verbatim (GLUE TSVs are not CSV-quoted)
    assert "clichés" in examples[4].prompt


def test_split_names_limit_and_unlabeled_test_split():
    task = get_task("sst2")
    dev = task.load("dev", FIX / "sst2")
    assert dev == task.load("validation", FIX / "sst2") == task.load("dev", FIX / "sst2" / "dev.tsv")
    assert len(dev) == 5 and [e.label for e in dev] == [1, 0, 1, 1, 0]
    assert task.load("train", FIX / "sst2", limit=3) == task.load("train", FIX / "sst2")[:3]
    test = task.load("test", FIX / "sst2")
    assert [(e.label, e.target) for e in test] == [(None, ""), (None, "")]
    with pytest.raises(BitDistillError, match="no file for split 'train'"):
        task.load("train", FIX / "qnli")
    with pytest.raises(BitDistillError, match="no such file or directory"):
        task.load("train", FIX / "does-not-exist")
    with pytest.raises(BitDistillError, match="no label column"):
        task.load("train", FIX / "sst2" / "test.tsv")  # only the test split may be unlabeled
    with pytest.raises(BitDistillError, match="no rows"):
        task.load("train", FIX / "malformed" / "header_only.tsv")


def test_jsonl_csv_parquet_give_the_same_examples():
    task = get_task("sst2")
    by_format = {
        ext: task.load("train", FIX / "sst2_formats" / f"train.{ext}") for ext in ("jsonl", "csv", "parquet")
    }
    assert by_format["jsonl"] == by_format["csv"] == by_format["parquet"]
    ex = by_format["csv"]
    assert [e.label for e in ex] == [0, 0, 1, 0, 1]  # "negative" and "1" parse as label ids
    assert ex[3].prompt == 'Sentence: a "depressed" fifteen-year-old \'s suicidal poetry\nSentiment:'
    assert ex[4].prompt == "Sentence: of saucy, with commas\nSentiment:"


def test_mnli_and_qnli_glue_tsv_columns():
    mnli = get_task("mnli")
    train = mnli.load("train", FIX / "mnli")
    assert [e.label for e in train] == [1, 0, 0, 2]  # neutral, entailment, entailment, contradiction
    rows = tsv_rows(FIX / "mnli" / "train.tsv")
    assert train[0].prompt == mnli.template.format(text=rows[0][8].strip(), text_pair=rows[0][9].strip())
    assert train[0].target == " maybe" and train[3].target == " no"
    dev = mnli.load("dev", FIX / "mnli")  # resolves dev_matched.tsv
    assert dev == mnli.load("validation_matched", FIX / "mnli") == mnli.load("dev_matched", FIX / "mnli")
    assert [e.label for e in dev] == [1, 2] and '"Government Executive"' in dev[1].prompt
    qnli = get_task("qnli")
    ex = qnli.load("dev", FIX / "qnli")
    assert [e.label for e in ex] == [0, 1, 1] and [e.target for e in ex] == [" yes", " no", " no"]
    assert ex[2].prompt.startswith(
        "Question: What is the minimum required if you want to teach in Canada?\nSentence: "
    )


def test_cnndm_jsonl_summaries():
    task = get_task("cnndm")
    assert task.kind == "summarization" and "rouge1" in task.metric
    ex = task.load("validation", FIX / "cnndm")
    assert len(ex) == 2 and ex[0].label is None and ex[0].eos
    assert ex[1].prompt == (
        "Article: Editor's note: In our Behind the Scenes series, CNN correspondents share their experiences "
        "in covering news and analyze the stories behind the events.\nSummary:"
    )
    assert ex[1].target == " Mentally ill inmates in Miami are housed on the forgotten floor ."


def test_custom_task_from_a_csv():
    task = get_task(
        "custom",
        text_column="review",
        label_column="stars",
        label_words=[" bad", " good"],
        template="Review: {text}\nVerdict:",
    )
    ex = task.load("train", FIX / "custom" / "reviews.csv")
    assert [e.label for e in ex] == [1, 0, 1]  # label values are matched to the label words
    assert (
        ex[0].prompt == "Review: Great blender, crushes ice in seconds.\nVerdict:" and ex[0].target == " good"
    )
    pair = get_task(
        "custom",
        text_column="title",
        text_pair_column="review",
        label_column="stars",
        label_words=[" no", " yes"],
        label_names=["bad", "good"],
        template="{text}: {text_pair}\nRecommended?",
        path=str(FIX / "custom" / "reviews.csv"),
    )
    ex = pair.load("train")
    assert (
        ex[1].prompt == "Kettle: Broke after two days. Waste of money.\nRecommended?"
        and ex[1].target == " no"
    )
    summ = get_task("custom", kind="summarization", text_column="review", target_column="title")
    assert summ.load("x", FIX / "custom" / "reviews.csv")[2].target == " Toaster"


def test_registry_and_option_errors():
    assert {"sst2", "mnli", "qnli", "cnndm", "custom"} <= set(TASKS)
    assert TASKS["sst2"].label_words == [" negative", " positive"]
    assert get_task("sst2", label_words=[" bad", " good"]).label_words == [" bad", " good"]
    get_task("sst2").label_words.append(" neutral")
    assert TASKS["sst2"].label_words == [" negative", " positive"]  # copies never touch the registry
    with pytest.raises(BitDistillError, match="unknown task 'sst3'"):
        get_task("sst3")
    with pytest.raises(BitDistillError, match="unknown option"):
        get_task("sst2", text_column="x")
    with pytest.raises(BitDistillError, match="set label_column and label_words"):
        get_task("custom", text_column="review")
    with pytest.raises(BitDistillError, match="must contain"):
        get_task("sst2", template="no placeholder")
    with pytest.raises(BitDistillError, match="distinct"):
        get_task("sst2", label_words=[" a", " a"])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad_label.tsv", r"bad_label\.tsv line 4: label 'x' is not one of 0, 1"),
        ("bad_fields.tsv", r"bad_fields\.tsv line 3: expected 2 tab-separated fields"),
        ("bad_json.jsonl", r"bad_json\.jsonl line 3: invalid JSON"),
        ("bad_label.csv", r"bad_label\.csv line 5: label 2 is not one of 0, 1"),
        ("bad_label.parquet", r"bad_label\.parquet row 3: label 7 is not one of 0, 1"),
        ("missing_column.tsv", r"missing_column\.tsv: no text column \(expected one of 'sentence'\)"),
        ("null_text.jsonl", r"null_text\.jsonl line 1: field 'sentence' is missing or null"),
    ],
)
def test_malformed_rows_name_file_and_line(name, message):
    with pytest.raises(BitDistillError, match=message):
        get_task("sst2").load("train", FIX / "malformed" / name)


def test_hub_without_network_says_to_pass_a_path(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-bitdistill-test-cache")
    with pytest.raises(BitDistillError, match="pass a local path"):
        get_task("qnli").load("dev", limit=2)


def test_hub_rows_use_the_hub_columns_and_split_names(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []
    rows = [
        {"premise": "A man sleeps.", "hypothesis": "A person rests.", "label": 0, "idx": 0},
        {"premise": "A dog runs.", "hypothesis": "A cat sits.", "label": 2, "idx": 1},
    ]

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ex = get_task("mnli").load("dev", limit=2)
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched[:2]")]
    assert [e.label for e in ex] == [0, 2] and ex[0].target == " yes"
    assert ex[0].prompt.startswith("Premise: A man sleeps.\nHypothesis: A person rests.\n")
    # -1 marks the hub's unlabeled test rows: in a scored split it is an error naming the row, not a row
    # silently left out of the accuracy
    rows[1]["label"] = -1
    with pytest.raises(BitDistillError, match=r"row 2: label -1 \(unlabeled\) in split 'dev'"):
        get_task("mnli").load("dev", limit=2)


@pytest.mark.skipif(not SHARED_SST2.is_dir(), reason="../shared/data/sst2 not present")
def test_real_sst2_files_load():
    task = get_task("sst2")
    train, dev = task.load("train", SHARED_SST2), task.load("dev", SHARED_SST2)
    assert (len(train), len(dev)) == (67349, 872)
    assert train[0].prompt == "Sentence: hide new secretions from the parental units\nSentiment:"
    assert {e.label for e in dev} == {0, 1} and sum(e.label for e in dev) == 444


# -- encoding ---------------------------------------------------------------------------------------------


def test_labels_mask_the_prompt_and_keep_the_target():
    tok = tokenizer()
    ex = get_task("sst2").load("train", FIX / "sst2")[2]
    enc = encode_example(tok, ex, max_length=512)
    prompt = tok(ex.prompt)["input_ids"]
    target = tok(ex.target, add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == prompt + target
    assert enc["labels"] == [-100] * len(prompt) + target
    assert len(target) == 1 and tok.decode(target) == " positive"


def test_summaries_end_with_eos_and_truncation_cuts_the_article_not_the_target():
    tok = tokenizer()
    ex = get_task("cnndm").load("validation", FIX / "cnndm")[0]
    full = encode_example(tok, ex, max_length=4096)
    target = tok(ex.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert full["labels"][-len(target) :] == target and full["input_ids"][-len(target) :] == target
    assert sum(x != -100 for x in full["labels"]) == len(target)

    short = encode_example(tok, ex, max_length=len(target) + 30)
    assert len(short["input_ids"]) == len(target) + 30
    assert short["labels"] == [-100] * 30 + target
    head = tok("Article:")["input_ids"]
    tail = tok("\nSummary:")["input_ids"]
    prompt = short["input_ids"][:30]
    assert prompt[: len(head)] == head and prompt[-len(tail) :] == tail
    # What is left of the article is its beginning.
    article = tok(ex.prompt)["input_ids"][len(head) : -len(tail)]
    kept = prompt[len(head) : -len(tail)]
    assert kept == article[: len(kept)] and len(kept) == 30 - len(head) - len(tail)

    with pytest.raises(BitDistillError, match="targets are never truncated"):
        encode_example(tok, ex, max_length=len(target))


def test_truncation_without_spans_keeps_the_end_and_the_bos():
    tok = tokenizer(bos=True)
    bos = tok.bos_token_id
    ex = Example(prompt="one two three four five six seven eight nine ten\nAnswer:", target=" yes")
    enc = encode_example(tok, ex, max_length=6)
    prompt = tok(ex.prompt)["input_ids"]
    target = tok(ex.target, add_special_tokens=False)["input_ids"]
    assert prompt[0] == bos and bos not in target
    assert enc["input_ids"] == [bos] + prompt[-(5 - len(target)) :] + target
    assert enc["labels"] == [-100] * (6 - len(target)) + target


def test_collate_right_pads_and_masks():
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(feats, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_batch_left_aligns_rows_for_generation():
    from bitdistill.data.encode import pad_batch

    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_eval_mode_restores_the_training_flag_even_on_error():
    from bitdistill.model.eval_mode import eval_mode

    model = torch.nn.Dropout().train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError
    assert model.training
    with eval_mode(model.eval()):
        pass
    assert not model.training


def test_task_dataset_in_a_dataloader():
    tok = tokenizer()
    examples = get_task("sst2").load("train", FIX / "sst2")
    ds = TaskDataset(tok, examples, max_length=64)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=Collator(tok.eos_token_id))
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    first = batches[0]
    for i in range(4):
        enc = encode_example(tok, examples[i], 64)
        n = len(enc["input_ids"])
        assert first["input_ids"][i, :n].tolist() == enc["input_ids"]
        assert first["labels"][i, :n].tolist() == enc["labels"]
        assert int(first["attention_mask"][i].sum()) == n


# -- label-word scoring -----------------------------------------------------------------------------------


def tiny_llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def naive_scores(model, tok, examples, words) -> torch.Tensor:
    """One example and one label word at a time, no padding, no batching."""
    out = torch.zeros(len(examples), len(words))
    with torch.no_grad():
        for n, ex in enumerate(examples):
            prompt = tok(ex.prompt)["input_ids"]
            for w, word in enumerate(words):
                target = tok(word, add_special_tokens=False)["input_ids"]
                logits = model(input_ids=torch.tensor([prompt + target])).logits[0].double()
                total = 0.0
                for j, token in enumerate(target):
                    row = logits[len(prompt) + j - 1]
                    total += float(row[token] - torch.logsumexp(row, dim=0))
                out[n, w] = total
    return out


@pytest.mark.parametrize("bitnet", [False, True])
@pytest.mark.parametrize("words", [[" negative", " positive"], [" terrible film", " great", " so so"]])
def test_label_word_scores_match_one_at_a_time(words, bitnet):
    tok = tokenizer()
    model = tiny_llama(len(tok))
    if bitnet:
        model = to_bitnet(model).eval()
    examples = get_task("sst2").load("train", FIX / "sst2")[:7]
    longest = max(len(tok(w, add_special_tokens=False)["input_ids"]) for w in words)
    assert (longest == 1) == (len(words) == 2)  # covers the one-forward and the per-word path
    model.train()  # scoring switches to eval itself and restores the mode
    got = score_label_words(model, tok, examples, words, batch_size=3)
    assert model.training
    model.eval()
    want = naive_scores(model, tok, examples, words)
    assert got.shape == (7, len(words))
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    assert classification_predictions(model, tok, examples, words, batch_size=5) == want.argmax(-1).tolist()


def test_check_label_words():
    tok = tokenizer()
    ids = check_label_words(tok, [" negative", " positive"])
    assert ids == [tok(w, add_special_tokens=False)["input_ids"] for w in (" negative", " positive")]
    assert math.prod(len(x) for x in ids) == 1
    with pytest.raises(BitDistillError, match="same tokens"):
        check_label_words(tok, [" yes", " yes"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_label_words(tok, [" so good", " so bad"])
    assert any("share their first token" in str(w.message) for w in caught)


class PlainForward(torch.nn.Module):
    """A causal LM whose forward takes no `logits_to_keep` (scoring then projects every position)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_scoring_models_without_logits_to_keep():
    tok = tokenizer()
    model = tiny_llama(len(tok))
    examples = get_task("qnli").load("dev", FIX / "qnli")
    words = [" yes", " no way"]
    got = score_label_words(PlainForward(model), tok, examples, words, batch_size=2)
    torch.testing.assert_close(got, naive_scores(model, tok, examples, words), atol=2e-4, rtol=1e-4)
