"""QKVCapture returns exactly the chosen block's Q/K/V: its projections' outputs, or what its attention
function receives (after q/k norms and RoPE, before the GQA repeat), recomputed here by hand."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from bitdistill import to_bitnet
from bitdistill.distill import QKVCapture, attention_relation_loss
from bitdistill.errors import BitDistillError
from bitdistill.quant import BitLinear

COMMON = dict(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip


def build(family: str):
    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**COMMON))
    return Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=16))


def by_hand(model, ids, mask, layer):
    """Run the model for the block's input, then call its norm and projections directly."""
    n = model.config.num_hidden_layers
    i = layer % n
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[i]
        block = model.model.layers[i]
        x = block.input_layernorm(hidden)
        attn = block.self_attn
        return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("layer", [0, 1, -1])
@pytest.mark.parametrize("bitnet", [False, True])
def test_capture_equals_calling_the_projections(family, layer, bitnet):
    model = build(family)
    if bitnet:
        model = to_bitnet(model)
        assert isinstance(model.model.layers[0].self_attn.q_proj, BitLinear)
    model.eval()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with QKVCapture(model, layer=layer, source="projection") as cap, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    want = by_hand(model, ids, mask, layer)
    assert [tuple(t.shape) for t in cap.qkv] == [(2, 9, 64), (2, 9, 32), (2, 9, 32)]
    for got, ref in zip(cap.qkv, want, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_capture_keeps_the_graph_for_the_student_and_removes_its_hooks():
    student, teacher = to_bitnet(build("llama")).train(), build("qwen3").eval()
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(2))
    with QKVCapture(teacher) as t_cap, torch.no_grad():
        teacher(input_ids=ids)
    with QKVCapture(student, layer=-2) as s_cap:
        student(input_ids=ids)
    loss = attention_relation_loss(t_cap.qkv, s_cap.qkv, None, num_relation_heads=4)
    loss.backward()
    q_proj = student.model.layers[1].self_attn.q_proj
    assert q_proj.weight.grad is not None and q_proj.weight.grad.abs().sum() > 0
    assert student.model.layers[2].self_attn.q_proj.weight.grad is None  # past the captured layer
    for module in s_cap.modules + t_cap.modules:
        assert not module._forward_hooks
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert not ALL_ATTENTION_FUNCTIONS._local_mapping  # the attention tap is gone too


def attention_inputs_by_hand(model, ids, mask, layer):
    """Q, K, V as the block's attention function sees them: projections, q/k norms (Qwen3), RoPE; merged
    back to [B, T, heads · head_dim]. Written from the model's own pieces, not from the capture code."""
    i = layer % model.config.num_hidden_layers
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[i]
        block = model.model.layers[i]
        attn = block.self_attn
        x = block.input_layernorm(hidden)
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, attn.head_dim) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        positions = torch.arange(t)[None].expand(b, t)
        cos, sin = model.model.rotary_emb(x, positions)
        q, k = sys.modules[type(attn).__module__].apply_rotary_pos_emb(q, k, cos, sin)
        return tuple(z.transpose(1, 2).reshape(b, t, -1) for z in (q, k, v))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("bitnet", [False, True])
def test_attention_source_equals_roped_q_k_and_unrepeated_v(family, implementation, bitnet):
    model = build(family)
    model.config._attn_implementation = implementation
    if bitnet:
        model = to_bitnet(model)
    model.eval()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    with QKVCapture(model, layer=1) as cap, torch.no_grad():
        tapped = model(input_ids=ids).logits
    torch.testing.assert_close(tapped, plain, atol=0, rtol=0)  # the tap only reads
    want = attention_inputs_by_hand(model, ids, None, 1)
    assert [tuple(t.shape) for t in cap.qkv] == [(2, 9, 64), (2, 9, 32), (2, 9, 32)]
    for got, ref in zip(cap.qkv, want, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # RoPE moved Q away from the plain projection output: the two sources really differ.
    assert not torch.allclose(cap.qkv[0], by_hand(model, ids, None, 1)[0], atol=1e-3)


def test_capture_through_a_wrapper():
    model = build("llama").eval()

    class Wrapper(torch.nn.Module):  # stands in for DDP / FSDP, which keep the model as `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kwargs):
            return self.module(**kwargs)

    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(3))
    with QKVCapture(Wrapper(model), layer=1, source="projection") as cap, torch.no_grad():
        Wrapper(model)(input_ids=ids)
    for got, ref in zip(cap.qkv, by_hand(model, ids, None, 1), strict=True):
        torch.testing.assert_close(got, ref)


def test_capture_errors():
    model = build("llama")
    with pytest.raises(BitDistillError, match="out of range: the model has 3 decoder layers"):
        QKVCapture(model, layer=3)
    cap = QKVCapture(model, layer=-3)
    assert cap.layer_index == 0
    with pytest.raises(RuntimeError, match="no forward pass"):
        _ = cap.qkv
