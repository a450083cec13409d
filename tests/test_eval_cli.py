"""`bitdistill eval` end to end on tiny random models (FP and BitNet) against a naive per-example loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bitdistill
from bitdistill.cli import main
from tiny_models import save_tiny_hf_dir, tiny_model, tiny_tokenizer

DATA = Path(__file__).parent / "fixtures" / "eval_tiny" / "dev.tsv"
WORDS = [" w1", " w2"]  # label words the tiny word-level tokenizer knows (" negative" would be <unk>)
TEMPLATE = "Sentence: {text}\nSentiment:"


def _rows() -> list[tuple[str, int]]:
    lines = DATA.read_text().splitlines()[1:]
    return [(s, int(y)) for s, y in (line.split("\t") for line in lines)]


def _naive(model, tok) -> tuple[list[int], list[int]]:
    """Predictions one example at a time: compare log p(w1) and log p(w2) after the prompt."""
    ids_words = [tok.convert_tokens_to_ids(w.strip()) for w in WORDS]
    preds, gold = [], []
    with torch.no_grad():
        for sentence, label in _rows():
            ids = tok(TEMPLATE.format(text=sentence))["input_ids"]
            logp = model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
            preds.append(int(logp[ids_words].argmax()))
            gold.append(label)
    return preds, gold


def _f1_by_hand(preds, gold) -> float:
    scores = []
    for c in sorted(set(preds) | set(gold)):
        tp = sum(p == c and g == c for p, g in zip(preds, gold))
        fp = sum(p == c and g != c for p, g in zip(preds, gold))
        fn = sum(p != c and g == c for p, g in zip(preds, gold))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


ARGS = ["--task", "sst2", "--data", str(DATA), "--task-option", "label_words= w1, w2", "--batch-size", "4",
        "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("kind", ["fp", "bitnet"])
def test_eval_cli_matches_naive_loop(tmp_path, capsys, kind):
    if kind == "fp":
        model = save_tiny_hf_dir(tmp_path / "m", "llama", seed=1).eval()
    else:
        model = bitdistill.to_bitnet(tiny_model("llama", seed=2)).eval()
        bitdistill.save(model, tmp_path / "m", tokenizer=tiny_tokenizer())
    tok = tiny_tokenizer()
    preds, gold = _naive(model, tok)
    out = tmp_path / "out.json"
    assert main(["eval", str(tmp_path / "m"), *ARGS, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    acc = sum(p == g for p, g in zip(preds, gold)) / len(gold)
    assert result["metrics"]["n"] == len(gold) == 14
    assert result["metrics"]["accuracy"] == pytest.approx(acc)
    assert result["metrics"]["macro_f1"] == pytest.approx(_f1_by_hand(preds, gold))
    assert [p["prediction"] for p in result["predictions"]] == preds
    assert [p["label"] for p in result["predictions"]] == gold
    assert result["model"]["format"] == kind
    assert f"accuracy={acc * 100:.2f}" in capsys.readouterr().out


def test_eval_cli_limit(tmp_path):
    model = save_tiny_hf_dir(tmp_path / "m", "llama", seed=1).eval()
    preds, gold = _naive(model, tiny_tokenizer())
    out = tmp_path / "o.json"
    assert main(["eval", str(tmp_path / "m"), *ARGS, "--limit", "5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["n"] == 5
    assert result["metrics"]["accuracy"] == pytest.approx(
        sum(p == g for p, g in zip(preds[:5], gold[:5])) / 5
    )


def test_eval_cli_user_errors(tmp_path, capsys):
    save_tiny_hf_dir(tmp_path / "m", "llama", seed=1)
    # The default SST-2 label words are unknown to the tiny tokenizer: both encode to <unk>.
    assert main(["eval", str(tmp_path / "m"), "--data", str(DATA), "--no-progress"]) == 2
    assert "encodes to the unknown token '<unk>'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope"), *ARGS]) == 2
    assert main(["eval", str(tmp_path / "m"), *ARGS, "--task-option", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_eval_summarization_end_to_end(tmp_path):
    """A generative task: the metrics equal ROUGE/BLEU of a naive greedy loop's outputs."""
    from bitdistill.data.tasks import get_task
    from bitdistill.eval.evaluate import evaluate_dir
    from bitdistill.eval.generate import prompt_ids
    from bitdistill.eval.metrics import summarization_metrics
    from test_metrics import _naive_greedy

    data = tmp_path / "sum.jsonl"
    rows = [{"doc": "w5 w6 w7 w8", "sum": "w6 w7"}, {"doc": "w9 w10", "sum": "w10 w11 w12"},
            {"doc": "w13 w14 w15", "sum": "w13"}]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = save_tiny_hf_dir(tmp_path / "m", "llama", seed=4).eval()
    tok = tiny_tokenizer()
    opts = dict(kind="summarization", text_column="doc", target_column="sum", template="{text} w0")
    task = get_task("custom", **opts)
    examples = task.load("dev", path=data)
    hyps = [_naive_greedy(model, tok, ids, 5) for ids in prompt_ids(tok, examples, 64, 5)]
    got = evaluate_dir(tmp_path / "m", task, data=data, max_new_tokens=5, max_length=64, batch_size=2,
                       keep_predictions=True)  # fmt: skip
    assert [p["prediction"] for p in got["predictions"]] == hyps
    want = summarization_metrics(hyps, [r["sum"] for r in rows])
    assert got["metrics"] == pytest.approx(want)
    assert got["generation"] == {"max_new_tokens": 5, "num_beams": 1}


def test_eval_packed_dir_on_native_runtime(tmp_path):
    """A packed directory is scored by the native engine: predictions equal a naive loop over its logits."""
    import numpy as np

    from bitdistill.runtime.engine import load
    from bitdistill.runtime.pack_writer import pack_model

    model = bitdistill.to_bitnet(tiny_model("llama", seed=2)).eval()
    tok = tiny_tokenizer()
    pack_model(model, tmp_path / "p", bits="1.58", head_dtype="fp32", tokenizer=tok)
    out = tmp_path / "o.json"
    assert main(["eval", str(tmp_path / "p"), *ARGS, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"]["format"] == "packed"
    engine = load(tmp_path / "p")
    words = [tok.convert_tokens_to_ids(w.strip()) for w in WORDS]
    preds, gold = [], []
    for sentence, label in _rows():
        ids = tok(TEMPLATE.format(text=sentence))["input_ids"]
        engine.reset(len(ids) + 1)
        logits = engine.forward(ids)
        preds.append(int(np.argmax(logits[words])))
        gold.append(label)
    assert [p["prediction"] for p in result["predictions"]] == preds
    assert result["metrics"]["accuracy"] == pytest.approx(
        sum(p == g for p, g in zip(preds, gold)) / len(gold)
    )
    # the packed model computes what the BitNet model computes: same predictions as the torch path
    torch_preds, _ = _naive(model, tok)
    # (one disagreement allowed: int8 rounding may flip a near-tie between the two numerics)
    assert sum(a == b for a, b in zip(preds, torch_preds)) >= len(preds) - 1, (preds, torch_preds)


def test_eval_packed_summarization_greedy(tmp_path):
    """Packed summarization: the engine's greedy continuation of the training-style prompt ids, scored."""
    import numpy as np

    from bitdistill.data.tasks import get_task
    from bitdistill.eval.evaluate import evaluate_dir
    from bitdistill.eval.generate import prompt_ids
    from bitdistill.eval.metrics import summarization_metrics
    from bitdistill.runtime.engine import load
    from bitdistill.runtime.pack_writer import pack_model

    data = tmp_path / "sum.jsonl"
    rows = [{"doc": "w5 w6 w7 w8", "sum": "w6 w7"}, {"doc": "w9 w10", "sum": "w10 w11 w12"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = tiny_tokenizer()
    pack_model(
        bitdistill.to_bitnet(tiny_model("llama", seed=6)).eval(),
        tmp_path / "p",
        head_dtype="fp32",
        tokenizer=tok,
    )
    task = get_task(
        "custom", kind="summarization", text_column="doc", target_column="sum", template="{text} w0"
    )
    got = evaluate_dir(
        tmp_path / "p", task, data=data, max_new_tokens=4, max_length=64, keep_predictions=True
    )
    engine = load(tmp_path / "p")
    hyps = []
    for ids in prompt_ids(tok, task.load("dev", path=data), 64, 4):
        engine.reset(len(ids) + 4)
        logits, new = engine.forward(ids), []
        for _ in range(4):
            t = int(np.argmax(logits))
            if t == tok.eos_token_id:
                break
            new.append(t)
            logits = engine.forward([t])
        hyps.append(tok.decode(new, skip_special_tokens=True).strip())
    assert any(hyps)
    assert [p["prediction"] for p in got["predictions"]] == hyps
    assert got["metrics"] == pytest.approx(summarization_metrics(hyps, [r["sum"] for r in rows]))
    with pytest.raises(bitdistill.BitDistillError, match="decodes greedily"):
        evaluate_dir(tmp_path / "p", task, data=data, max_new_tokens=4, max_length=64, num_beams=2)
