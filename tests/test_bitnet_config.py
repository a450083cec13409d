"""One spelling of the BitNet options: BitNetConfig is what to_bitnet applies, what a recipe's `bitnet:`
section parses into, and what a converted model records (with its family) in config.json."""

from __future__ import annotations

import pytest
import torch

from bitdistill.config import BitNetConfig, parse_recipe
from bitdistill.model import BitNetSettings, settings_of, to_bitnet
from tiny_models import tiny_model


def test_a_config_converts_exactly_like_the_same_keyword_options():
    cfg = BitNetConfig(subln="all", granularity="channel", quantize_activations=False)
    a = to_bitnet(tiny_model("llama", seed=3), cfg).eval()
    b = to_bitnet(tiny_model("llama", seed=3), subln="all", granularity="channel", quantize_activations=False)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a(input_ids=ids).logits, b.eval()(input_ids=ids).logits)
    assert a.config.bitdistill == b.config.bitdistill
    recorded = settings_of(a)
    assert isinstance(recorded, BitNetConfig) and recorded.family == "llama"
    assert (recorded.subln, recorded.granularity, recorded.quantize_activations) == ("all", "channel", False)


def test_a_recorded_setting_rebuilds_the_same_conversion():
    model = to_bitnet(tiny_model("llama", seed=4), BitNetConfig(subln=True))  # the old boolean: o_down
    again = to_bitnet(tiny_model("llama", seed=4), BitNetSettings.from_dict(model.config.bitdistill))
    assert again.config.bitdistill == model.config.bitdistill and model.config.bitdistill["subln"] == "o_down"


def test_config_or_options_not_both():
    with pytest.raises(TypeError, match="not both"):
        to_bitnet(tiny_model("llama"), BitNetConfig(), subln="none")


def test_defaults_the_api_and_a_recipe_each_document():
    assert BitNetConfig().subln == "o_down"  # to_bitnet(model): the paper's SubLN
    recipe = parse_recipe({"bitnet": {"granularity": "group"}, "continue_pretrain": {"enabled": False}})
    assert isinstance(recipe.bitnet, BitNetConfig)
    assert (recipe.bitnet.subln, recipe.bitnet.granularity) == ("all", "group")  # a recipe: the authors' code
    with pytest.raises(AttributeError):
        recipe.bitnet.subln = "none"  # frozen: a conversion is changed by building another one
