"""Stage-1 conversion on tiny random models of every supported family."""

import pytest
import torch
from torch import nn

from bitdistill import BitDistillError, BitLinear, to_bitnet
from bitdistill.model import SubLNBitLinear, adapter_for
from tiny_models import FAMILIES, tiny_config, tiny_model

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip


def rms_norm(x, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_block_linear_becomes_bitlinear_with_subln_before_o_and_down(family):
    model = tiny_model(family)
    originals = {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    to_bitnet(model)
    eps = model.config.rms_norm_eps
    for i, block in enumerate(model.model.layers):
        for path in LINEARS:
            layer = block.get_submodule(path)
            assert isinstance(layer, BitLinear), (i, path)
            assert layer.weight is originals[f"model.layers.{i}.{path}"]  # shared latent weight
            has_subln = path in ("self_attn.o_proj", "mlp.down_proj")
            assert isinstance(layer, SubLNBitLinear) == has_subln, (i, path)
            if has_subln:
                assert torch.equal(layer.sub_norm.weight, torch.ones(layer.in_features))
                assert layer.sub_norm.eps == eps
    # Embeddings and head untouched (same objects, still full precision).
    assert model.get_input_embeddings() is embed and isinstance(embed, nn.Embedding)
    assert model.get_output_embeddings() is head and type(head) is nn.Linear
    n_bit = sum(isinstance(m, BitLinear) for m in model.modules())
    n_subln = sum(isinstance(m, SubLNBitLinear) for m in model.modules())
    assert (n_bit, n_subln) == (7 * 2, 2 * 2)
    assert model.config.bitdistill["family"] == adapter_for(model).family


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_subln_normalizes_the_projection_input(family):
    model = to_bitnet(tiny_model(family)).eval()
    seen = {}
    o_proj = model.model.layers[1].self_attn.o_proj
    o_proj.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0], y=out))
    model(torch.randint(0, 128, (2, 6)))
    x, y = seen["x"], seen["y"]
    normed = rms_norm(x, model.config.rms_norm_eps)
    w = o_proj.weight.detach()
    delta = w.abs().mean()
    wq = torch.clamp(torch.round(w / delta), -1, 1)
    s = 127.0 / normed.abs().amax(-1, keepdim=True)
    xq = torch.clamp(torch.round(normed * s), -128, 127)
    ref = (xq @ wq.t()) * delta / s
    assert torch.allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_no_subln_leaves_plain_bitlinears():
    for off in (False, "none"):
        model = to_bitnet(tiny_model("llama"), subln=off)
        assert not any(isinstance(m, SubLNBitLinear) for m in model.modules())
        assert sum(isinstance(m, BitLinear) for m in model.modules()) == 14
        assert model.config.bitdistill["subln"] == "none"


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_allnorm_puts_an_rmsnorm_before_every_bitlinear(family):
    """The authors' "allnorm": q, k, v (which share one input) each get their own norm, as do gate/up."""
    model = to_bitnet(tiny_model(family, seed=2), subln="all").eval()
    assert model.config.bitdistill["subln"] == "all"
    eps = model.config.rms_norm_eps
    block = model.model.layers[0]
    x = torch.randn(2, 5, model.config.hidden_size)
    for path in LINEARS:
        layer = block.get_submodule(path)
        assert isinstance(layer, SubLNBitLinear), path
        with torch.no_grad():
            layer.sub_norm.weight.uniform_(0.5, 1.5)  # a trained norm: not the identity gain
            width = layer.in_features
            xi = x[..., :width] if width <= x.shape[-1] else torch.randn(2, 5, width)
            want = BitLinear.forward(layer, rms_norm(xi, eps) * layer.sub_norm.weight)
            torch.testing.assert_close(layer(xi), want)
    assert sum(isinstance(m, SubLNBitLinear) for m in model.modules()) == 14


def test_subln_modes_and_old_booleans():
    from bitdistill.model.convert import BitNetSettings

    assert to_bitnet(tiny_model("llama"), subln=True).config.bitdistill["subln"] == "o_down"
    # config.json files written before the modes existed hold booleans
    assert BitNetSettings.from_dict({"subln": True}).subln == "o_down"
    assert BitNetSettings.from_dict({"subln": False}).subln == "none"
    with pytest.raises(BitDistillError, match="'everywhere' is not one of o_down, all, none"):
        to_bitnet(tiny_model("llama"), subln="everywhere")


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward_and_loss_decreases(family):
    model = to_bitnet(tiny_model(family, seed=1)).train()
    torch.manual_seed(0)
    batch = torch.randint(0, 128, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses


def test_unsupported_architecture_lists_supported_ones():
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(BitDistillError) as err:
        to_bitnet(model)
    msg = str(err.value)
    assert "gpt2" in msg and "llama" in msg and "qwen3" in msg and "register_adapter" in msg


def test_double_conversion_and_bad_group_size_are_refused():
    model = to_bitnet(tiny_model("llama"))
    with pytest.raises(BitDistillError, match="already converted"):
        to_bitnet(model)
    with pytest.raises(BitDistillError, match="group_size=40"):
        to_bitnet(tiny_model("llama"), granularity="group", group_size=40)


def test_group_granularity_converts_and_runs():
    model = to_bitnet(tiny_model("llama"), granularity="group", group_size=32).eval()
    out = model(torch.randint(0, 128, (1, 5))).logits
    assert torch.isfinite(out).all()
    assert tiny_config("llama").hidden_size % 32 == 0
