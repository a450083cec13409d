"""The memory planner of `bitdistill run --check` (recipe/memory.py) against independent references:
parameter and optimizer bytes against the tensors of a real model and AdamW after a step, activation
bytes against what autograd actually saves (saved_tensors_hooks) on small Qwen3 models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from bitdistill.distill.losses import distill_loss
from bitdistill.model.convert import to_bitnet
from bitdistill.pipeline.memory import FP32, activation_bytes, stage_memory
from bitdistill.pipeline.modelinfo import shape_from_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, tie_word_embeddings=True)  # fmt: skip


def qwen3(layers: int, subln: str | None) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    cfg = {**CONFIG, "num_hidden_layers": layers}
    model = Qwen3ForCausalLM(Qwen3Config(**cfg)).train()
    if subln is not None:
        model = to_bitnet(model, subln=subln, granularity="tensor", group_size=64).train()
    return model, shape_from_config({**cfg, "model_type": "qwen3"}, "test")


def saved_bytes(fn, exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while `fn` runs (parameters excluded)."""
    seen: dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def ce_step(model, ids, precision: str):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(input_ids=ids).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, 256).float(), ids[:, 1:].reshape(-1)
        )


@pytest.mark.parametrize("subln", [None, "none", "o_down", "all"])
def test_activation_estimate_matches_autograd_saved_tensors(subln):
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1))
    model, shape = qwen3(3, subln)
    params = list(model.parameters())
    measured = saved_bytes(lambda: ce_step(model, ids, "fp32"), params)
    estimate = activation_bytes(shape, 2, 48, "fp32", bitnet=subln is not None, subln=subln or "none")
    assert 0.9 <= estimate / measured <= 1.1, (estimate, measured)
    # Under bf16 autocast the float32 count is an upper bound that stays within 2x.
    measured_bf16 = saved_bytes(lambda: ce_step(model, ids, "bf16"), params)
    estimate_bf16 = activation_bytes(shape, 2, 48, "bf16", bitnet=subln is not None, subln=subln or "none")
    assert measured_bf16 <= estimate_bf16 <= 2 * measured_bf16, (estimate_bf16, measured_bf16)


def test_distill_terms_match_autograd_saved_tensors():
    # The logits-KD and attention-relation terms alone: the distill estimate minus the CE-only estimate.
    batch, length, heads = 2, 40, 4
    model, shape = qwen3(1, None)
    g = torch.Generator().manual_seed(2)
    student = torch.randn(batch, length, 256, generator=g, requires_grad=True)
    teacher = torch.randn(batch, length, 256, generator=g)
    s_qkv = [torch.randn(batch, length, w, generator=g, requires_grad=True) for w in shape.qkv_widths]
    t_qkv = [torch.randn(batch, length, w, generator=g) for w in shape.qkv_widths]
    labels = torch.randint(0, 256, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)

    def kd_and_ad():
        distill_loss(student, labels, teacher, t_qkv, s_qkv, mask, kd_weight=1.0, ad_weight=1.0,
                     num_relation_heads=heads, ce_weight=0.0)  # fmt: skip

    measured = saved_bytes(kd_and_ad, [student, *s_qkv]) + teacher.numel() * FP32  # the held teacher logits
    args = (shape, batch, length, "fp32", False)
    estimate = activation_bytes(*args, distill=True, relation_heads=heads) - activation_bytes(*args)
    assert 0.75 <= estimate / measured <= 1.25, (estimate, measured)


def test_weights_grads_and_adamw_state_match_the_real_tensors():
    model, shape = qwen3(2, None)
    batch = torch.randint(0, 256, (1, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ce_step(model, batch, "fp32").backward()
    opt.step()
    unique = {id(p): p for p in model.parameters()}.values()  # tied embeddings counted once
    weights = sum(p.numel() * p.element_size() for p in unique)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in unique)
    moments = sum(
        s[k].numel() * s[k].element_size() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")
    )
    est = stage_memory(shape, activation_bytes(shape, 1, 8, "fp32", bitnet=False), teacher=shape)
    assert (est.weights, est.grads, est.optimizer) == (weights, grads, moments)
    assert est.teacher == weights  # a frozen float32 copy of the same shape
    assert est.total == est.weights + est.grads + est.optimizer + est.activations + est.teacher


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("qwen3-*.yaml")))
def test_check_prints_memory_for_every_paper_config_offline(config):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "bitdistill.cli", "run", str(ROOT / "configs" / config), "--check"],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for stage in ("teacher", "bitnet_sft", "continue_pretrain", "distill"):
        line = next(
            line for line in out.splitlines() if line.strip().startswith(f"memory per device ({stage}):")
        )
        assert "weights" in line and "activations" in line and "GiB" in line, line
    assert "teacher " in next(
        line for line in out.splitlines() if line.strip().startswith("memory per device (distill)")
    )
    assert "devices: no CUDA device visible" in out


def test_stages_over_the_smallest_visible_device_are_warned_about():
    from bitdistill.pipeline.memory import Device, device_lines

    gib = 2**30
    devices = [Device("cuda:0 big", 141 * gib), Device("cuda:1 small", 80 * gib)]
    lines = device_lines({"teacher": 72 * gib, "distill": 103 * gib}, devices)
    assert lines[0] == "  devices: 2 visible, smallest cuda:1 small with 80.00 GiB"
    (warning,) = lines[1:]
    assert warning.startswith(
        "  warning: distill needs ~103.00 GiB per device, more than the 80.00 GiB of cuda:1 small"
    )
    assert device_lines({"teacher": 72 * gib}, devices[:1]) == [
        "  devices: 1 visible, smallest cuda:0 big with 141.00 GiB"
    ]
