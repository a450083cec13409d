"""Per-family adapters: where a Hugging Face causal LM keeps its decoder blocks and projections.

Conversion, attention-relation capture, packing and export ask an adapter instead of matching module-name
strings of their own. Every family supported today names its modules the same way; a new family whose
names differ registers its own `FamilyAdapter`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import BitDistillError


@dataclass(frozen=True)
class FamilyAdapter:
    """Module paths inside one architecture family (relative to the model / to a decoder block)."""

    family: str
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    attn: str = "self_attn"
    mlp: str = "mlp"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    has_qk_norm: bool = False

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks of `model`, in order."""
        return model.get_submodule(self.layers)

    def attention(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.attn)

    def feed_forward(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.mlp)

    def linear_paths(self) -> tuple[str, ...]:
        """Paths, relative to a block, of every linear that becomes a BitLinear."""
        a, m = self.attn, self.mlp
        return (
            f"{a}.{self.q}", f"{a}.{self.k}", f"{a}.{self.v}", f"{a}.{self.o}",
            f"{m}.{self.gate}", f"{m}.{self.up}", f"{m}.{self.down}",
        )  # fmt: skip

    def subln_paths(self, mode: str = "o_down") -> tuple[str, ...]:
        """Paths, relative to a block, of the projections that get a SubLN in front of them.

        "o_down": the paper's SubLN (before o_proj and down_proj); "all": the authors' code ("allnorm",
        an RMSNorm before every BitLinear); "none": no extra norm.
        """
        if mode == "all":
            return self.linear_paths()
        if mode == "o_down":
            return (f"{self.attn}.{self.o}", f"{self.mlp}.{self.down}")
        return ()


ADAPTERS: dict[str, FamilyAdapter] = {}


def register_adapter(adapter: FamilyAdapter) -> FamilyAdapter:
    """Make a family convertible: map each of its config `model_type`s to `adapter`."""
    for model_type in adapter.model_types:
        ADAPTERS[model_type] = adapter
    return adapter


for _adapter in (
    FamilyAdapter("llama", ("llama",)),
    FamilyAdapter("mistral", ("mistral",)),
    FamilyAdapter("qwen2", ("qwen2",)),
    FamilyAdapter("qwen3", ("qwen3",), has_qk_norm=True),
    FamilyAdapter("gemma3", ("gemma3_text",), has_qk_norm=True),
):
    register_adapter(_adapter)


def adapter_for(model_or_type: nn.Module | str) -> FamilyAdapter:
    """The adapter of a model (or a config `model_type`), or a clear error naming what is supported."""
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", None)
        model_type = getattr(config, "model_type", None) or type(model_or_type).__name__
    try:
        return ADAPTERS[model_type]
    except KeyError:
        supported = ", ".join(sorted(ADAPTERS))
        raise BitDistillError(
            f"unsupported architecture {model_type!r}. Supported model_types: {supported}. "
            "Gemma3 multimodal checkpoints: load the text model (Gemma3ForCausalLM). To add a family, "
            "register a FamilyAdapter naming its decoder-block path and q/k/v/o, gate/up/down modules: "
            "bitdistill.model.adapters.register_adapter(FamilyAdapter('name', ('model_type',), ...))."
        ) from None
