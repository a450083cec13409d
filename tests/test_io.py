"""save -> load round trips exactly; corrupt or mismatched directories give clear errors."""

import json

import pytest
import torch

import bitdistill
from bitdistill import BitDistillError, to_bitnet
from bitdistill.model import SubLNBitLinear
from tiny_models import tiny_model, tiny_tokenizer


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.mark.parametrize(
    "family,kwargs",
    [
        ("llama", {}),
        ("qwen3", {"subln": False}),
        ("gemma3", {}),
        ("qwen2", {"granularity": "channel"}),
        ("mistral", {"granularity": "group", "group_size": 32, "quantize_activations": False}),
    ],
)
def test_round_trip_is_bit_identical(tmp_path, family, kwargs):
    model = to_bitnet(tiny_model(family, seed=3), **kwargs)
    with torch.no_grad():  # SubLN weights that are not 1 prove they are saved too
        for m in model.modules():
            if isinstance(m, SubLNBitLinear):
                m.sub_norm.weight.uniform_(0.5, 1.5)
    ids = torch.randint(0, 128, (2, 9))
    expected = logits(model, ids)
    bitdistill.save(model, tmp_path / "m", tokenizer=tiny_tokenizer())
    loaded = bitdistill.load(tmp_path / "m")
    assert not loaded.training
    assert loaded.config.bitdistill == model.config.bitdistill
    assert torch.equal(logits(loaded, ids), expected)
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert bitdistill.load_tokenizer(tmp_path / "m").convert_tokens_to_ids("w5") == 9


def test_tied_embeddings_stay_tied(tmp_path):
    model = to_bitnet(tiny_model("llama", tie_word_embeddings=True))
    bitdistill.save(model, tmp_path / "m")
    loaded = bitdistill.load(tmp_path / "m")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_full_precision_round_trip(tmp_path):
    model = tiny_model("qwen3")
    bitdistill.save(model, tmp_path / "fp")
    ids = torch.randint(0, 128, (1, 7))
    assert torch.equal(logits(bitdistill.load(tmp_path / "fp"), ids), logits(model, ids))


def test_save_replaces_existing_dir_and_failed_save_keeps_old(tmp_path, monkeypatch):
    out = tmp_path / "m"
    bitdistill.save(to_bitnet(tiny_model("llama", seed=1)), out)
    first = (out / "model.safetensors").read_bytes()
    import bitdistill.model.io as io

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "save_model", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        bitdistill.save(to_bitnet(tiny_model("llama", seed=2)), out)
    assert (out / "model.safetensors").read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp dirs left behind


@pytest.fixture
def saved(tmp_path):
    bitdistill.save(to_bitnet(tiny_model("llama")), tmp_path / "m")
    return tmp_path / "m"


def test_missing_directory_and_files(tmp_path, saved):
    with pytest.raises(BitDistillError, match="not a directory"):
        bitdistill.load(tmp_path / "nope")
    (saved / "model.safetensors").unlink()
    with pytest.raises(BitDistillError, match="model.safetensors: missing"):
        bitdistill.load(saved)


def test_corrupt_config(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(BitDistillError, match="config.json: not valid JSON"):
        bitdistill.load(saved)


def test_truncated_weights(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BitDistillError, match="unreadable or mismatched"):
        bitdistill.load(saved)


def test_weights_from_another_model(tmp_path, saved):
    bitdistill.save(to_bitnet(tiny_model("llama", num_hidden_layers=3)), tmp_path / "other")
    (saved / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(BitDistillError, match="does not match"):
        bitdistill.load(saved)


def test_newer_format_is_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    config["bitdistill"]["format_version"] = 99
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(BitDistillError, match="newer bitdistill"):
        bitdistill.load(saved)
