"""The shared training loop: exact resume, schedules, accumulation, data order, NaN handling, atomicity."""

from __future__ import annotations

import math
import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bitdistill.errors import BitDistillError
from bitdistill.train import (
    ShuffledBatches,
    StreamBatches,
    TrainConfig,
    make_accelerator,
    resolve_precision,
    train,
)
from bitdistill.train.checkpoint import LATEST, clean_stale, latest_checkpoint
from bitdistill.train.loop import _lr_lambda


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def dataset(n: int = 40, length: int = 12) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [{"input_ids": torch.randint(0, 64, (length,), generator=g)} for _ in range(n)]


def collate(items):
    ids = torch.stack([it["input_ids"] for it in items])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def lm_loss(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return out.loss, {"lm": float(out.loss.detach())}


def config(**kw) -> TrainConfig:
    # fp32: these tests check the loop's arithmetic; "auto" would pick bf16 on AVX512-BF16 CPUs.
    base = dict(steps=10, lr=5e-3, batch_size=4, warmup_steps=2, save_every=3, progress=False, log_every=1,
                precision="fp32")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Crash(Exception):
    pass


def crashing(loss_fn, at_call: int):
    calls = [0]

    def fn(model, batch):
        calls[0] += 1
        if calls[0] == at_call:
            raise Crash
        return loss_fn(model, batch)

    return fn


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_after_crash_gives_identical_weights(tmp_path, grad_accum):
    data = dataset()
    ref = tiny_model()
    train(
        ref, ShuffledBatches(data, 4, collate, seed=3), lm_loss, config(grad_accum=grad_accum), tmp_path / "a"
    )

    model = tiny_model()
    batches = ShuffledBatches(data, 4, collate, seed=3)
    # Crash in the middle of step 5 (after the checkpoint of step 3): steps 4-5 are lost and redone.
    with pytest.raises(Crash):
        train(
            model,
            batches,
            crashing(lm_loss, 4 * grad_accum + 1),
            config(grad_accum=grad_accum),
            tmp_path / "b",
        )
    assert latest_checkpoint(tmp_path / "b").name == "ckpt-000003"
    resumed = tiny_model(seed=123)  # a fresh process would rebuild the model; the checkpoint overrides it
    result = train(resumed, ShuffledBatches(data, 4, collate, seed=3), lm_loss, config(grad_accum=grad_accum),
                   tmp_path / "b")  # fmt: skip
    assert result.steps == 10
    for key, value in weights(ref).items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    # The log forgets the undone steps: every step appears exactly once.
    import json

    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == 10


def test_loss_falls_on_a_tiny_batch(tmp_path):
    data = dataset(n=8)
    model = tiny_model()
    result = train(model, ShuffledBatches(data, 8, collate, seed=0), lm_loss, config(steps=30, lr=1e-2),
                   tmp_path)  # fmt: skip
    assert result.last_loss < 0.5 * result.first_loss
    assert result.tokens == 30 * 8 * 12


def test_warmup_cosine_and_linear_schedules_match_formula():
    total, warmup = 20, 4
    cos = _lr_lambda(TrainConfig(steps=total, warmup_steps=warmup, schedule="cosine"), total)
    lin = _lr_lambda(TrainConfig(steps=total, warmup_steps=warmup, schedule="linear"), total)
    for s in range(total):
        if s < warmup:
            expect = (s + 1) / (warmup + 1)
            assert cos(s) == pytest.approx(expect) and lin(s) == pytest.approx(expect)
        else:
            p = (s - warmup) / (total - warmup)
            assert cos(s) == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))
            assert lin(s) == pytest.approx(1 - p)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    data = dataset(n=8)
    a, b = tiny_model(), tiny_model()
    cfg = dict(steps=1, warmup_steps=0, schedule="constant", max_grad_norm=0.0, lr=1e-2)
    train(a, ShuffledBatches(data, 8, collate, seed=1), lm_loss, config(batch_size=8, **cfg), tmp_path / "a")
    train(b, ShuffledBatches(data, 4, collate, seed=1), lm_loss, config(batch_size=4, grad_accum=2, **cfg),
          tmp_path / "b")  # fmt: skip
    for key, value in a.state_dict().items():
        # Adam's first step is about lr·sign(g): tolerate 1% of a step for fp summation-order noise;
        # training on one micro-batch only (wrong accumulation) moves weights by a whole step.
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=1e-4)


def test_shuffled_batches_are_epoch_permutations_and_shard_disjointly():
    data = [{"input_ids": torch.tensor([i])} for i in range(12)]
    take = lambda items: {"input_ids": torch.cat([it["input_ids"] for it in items])}  # noqa: E731
    one = ShuffledBatches(data, 4, take, seed=9)
    epoch0 = torch.cat([one.batch(i)["input_ids"] for i in range(3)]).tolist()
    epoch1 = torch.cat([one.batch(i)["input_ids"] for i in range(3, 6)]).tolist()
    assert sorted(epoch0) == list(range(12)) and sorted(epoch1) == list(range(12)) and epoch0 != epoch1
    # Same micro-step, same batch, whatever was asked before (resume needs no replay).
    assert (
        ShuffledBatches(data, 4, take, seed=9).batch(4)["input_ids"].tolist()
        == one.batch(4)["input_ids"].tolist()
    )
    r0 = ShuffledBatches(data, 2, take, seed=9, num_processes=2, process_index=0)
    r1 = ShuffledBatches(data, 2, take, seed=9, num_processes=2, process_index=1)
    both = torch.cat([r0.batch(0)["input_ids"], r1.batch(0)["input_ids"]]).tolist()
    assert both == one.batch(0)["input_ids"].tolist()


def test_stream_batches_fast_forward():
    blocks = [{"input_ids": torch.tensor([i, i])} for i in range(10)]
    full = [b["input_ids"][:, 0].tolist() for b in StreamBatches(blocks, 2).iterate(0)]
    assert full == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [b["input_ids"][:, 0].tolist() for b in StreamBatches(blocks, 2).iterate(3)] == full[3:]
    # The budget's tail smaller than a batch still trains (one process), so budget/batch steps are taken.
    assert [b["input_ids"][:, 0].tolist() for b in StreamBatches(blocks, 4).iterate(0)] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # fmt: skip


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    data = dataset()

    def nan_at_step_5(model, batch):
        loss, parts = lm_loss(model, batch)
        nan_at_step_5.calls += 1
        return (loss * float("nan") if nan_at_step_5.calls == 5 else loss), parts

    nan_at_step_5.calls = 0
    with pytest.raises(BitDistillError, match=r"step 5: the loss is nan.*ckpt-000003"):
        train(tiny_model(), ShuffledBatches(data, 4, collate, seed=0), nan_at_step_5, config(), tmp_path)
    assert latest_checkpoint(tmp_path).name == "ckpt-000003"


def test_latest_checkpoint_survives_torn_writes(tmp_path):
    train(tiny_model(), ShuffledBatches(dataset(), 4, collate, seed=0), lm_loss, config(steps=6), tmp_path)
    assert latest_checkpoint(tmp_path).name == "ckpt-000006"
    # A kill during a later write leaves a temporary directory: it is ignored and cleaned.
    stale = tmp_path / ".ckpt-000009.tmp-xyz"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "ckpt-000006"
    clean_stale(tmp_path)
    assert not stale.exists()
    # A kill between the rename and the LATEST update: the complete newer checkpoint is found anyway.
    (tmp_path / LATEST).write_text("ckpt-000099\n")
    assert latest_checkpoint(tmp_path).name == "ckpt-000006"


def test_precision_auto_is_bf16_only_on_native_bf16_hardware():
    if torch.cuda.is_available():
        native = torch.cuda.is_bf16_supported()
    else:  # the CPU flag, read independently of torch
        flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
        native = "avx512_bf16" in flags.split()
    assert resolve_precision("auto") == ("bf16" if native else "no")
    assert resolve_precision("fp32") == "no" and resolve_precision("bf16") == "bf16"


def test_invalid_config_names_the_field():
    with pytest.raises(BitDistillError, match=r"train\.schedule"):
        TrainConfig(schedule="step").validate()
    with pytest.raises(BitDistillError, match=r"train\.grad_accum"):
        TrainConfig(grad_accum=0).validate()


@pytest.mark.parametrize(
    "field, value",
    [("lr", float("inf")), ("lr", 0.0), ("lr", float("nan")), ("weight_decay", float("nan")),
     ("weight_decay", -0.1), ("max_grad_norm", -1.0), ("warmup_ratio", float("inf")),
     ("keep_checkpoints", 0), ("log_every", 0), ("eval_every", -1), ("warmup_steps", -2)],
)  # fmt: skip
def test_direct_callers_get_the_range_checks_recipes_get(field, value):
    # train() validates its TrainConfig itself, so a Python caller without a recipe gets the same one-line
    # errors as `bitdistill run` instead of NaN losses or a silently ignored value.
    with pytest.raises(BitDistillError, match=rf"^train\.{field}: must be"):
        TrainConfig(**{field: value}).validate()


def test_group_by_length_batches_similar_lengths_and_stays_deterministic():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (1003,), generator=g).tolist()
    items = list(range(len(lengths)))

    def ids(batch_items):
        return {"input_ids": torch.tensor(batch_items)}

    grouped = ShuffledBatches(items, 8, ids, seed=3, lengths=lengths)
    plain = ShuffledBatches(items, 8, ids, seed=3)
    per_epoch = grouped.batches_per_epoch
    assert per_epoch == 1003 // 8
    epoch = [grouped.batch(i)["input_ids"].tolist() for i in range(per_epoch)]
    seen = [i for b in epoch for i in b]
    assert len(seen) == len(set(seen)) == per_epoch * 8  # a permutation minus the ragged tail

    def mean_padding(batches):  # padded slots per batch, the compute grouping saves
        return sum(max(lengths[i] for i in b) * 8 - sum(lengths[i] for i in b) for b in batches) / len(
            batches
        )

    plain_epoch = [plain.batch(i)["input_ids"].tolist() for i in range(per_epoch)]
    assert mean_padding(epoch) < 0.25 * mean_padding(plain_epoch)
    # A resumed run (a new instance) serves the same batches, also in later epochs.
    again = ShuffledBatches(items, 8, ids, seed=3, lengths=lengths)
    for i in (0, 7, per_epoch + 5):
        assert again.batch(i)["input_ids"].tolist() == grouped.batch(i)["input_ids"].tolist()
    # Batches are not simply in length order: the order of batches is shuffled.
    maxima = [max(lengths[i] for i in b) for b in epoch[:20]]
    assert maxima != sorted(maxima, reverse=True)


def test_group_by_length_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="lengths has 3 entries for 4 examples"):
        ShuffledBatches([0, 1, 2, 3], 2, lambda x: x, seed=0, lengths=[1, 2, 3])


def test_stages_of_different_precisions_run_in_one_process():
    # A recipe may train its teacher in fp32 and its student in bf16, all inside one `bitdistill run`.
    first = make_accelerator("fp32")
    assert first.mixed_precision == "no"
    second = make_accelerator("bf16")
    assert second.mixed_precision == "bf16"
    assert make_accelerator("fp32").mixed_precision == "no"
