"""Capture the q/k/v projection outputs of one decoder block, for attention-relation distillation.

    with QKVCapture(student, layer=-1) as cap:
        out = student(input_ids=..., attention_mask=...)
    q, k, v = cap.qkv        # [B, T, D_q], [B, T, D_kv], [B, T, D_kv] of that forward

Forward hooks sit on the block's q/k/v projection modules (found through the family adapter), so they see
exactly what the projection returns — nn.Linear or BitLinear alike, before RoPE and before Qwen3/Gemma3's
q/k norms. Tensors keep their autograd graph (the student's loss back-propagates through them); run the
teacher under `torch.no_grad()`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BitDistillError
from ..model.adapters import adapter_for


def unwrap(model: nn.Module) -> nn.Module:
    """The HF model inside DDP/FSDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while not hasattr(model, "config"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            break
        model = inner
    return model


def projection_modules(model: nn.Module, layer: int = -1) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The (q, k, v) projection modules of decoder block `layer` (negative counts from the end)."""
    model = unwrap(model)
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    n = len(blocks)
    if not -n <= layer < n:
        raise BitDistillError(
            f"distillation layer {layer} is out of range: the model has {n} decoder layers "
            f"(use 0..{n - 1}, or -1 for the last)"
        )
    attn = adapter.attention(blocks[layer])
    return tuple(attn.get_submodule(name) for name in (adapter.q, adapter.k, adapter.v))  # type: ignore[return-value]


def layer_relation_heads(student: nn.Module, teacher: nn.Module, layers: dict[int, int]) -> int:
    """The default A_r (losses.default_relation_heads) over the q/k/v widths of every student layer in
    `layers` and of the teacher layer it maps to: the one rule the distill stage and the layer tools share."""
    from .losses import default_relation_heads

    widths = [m.out_features for i in layers for m in projection_modules(student, i)]
    widths += [m.out_features for j in set(layers.values()) for m in projection_modules(teacher, j)]
    return default_relation_heads(widths, unwrap(student).config.num_attention_heads)


class QKVCapture:
    """Context manager recording the q/k/v projection outputs of one block on every forward."""

    def __init__(self, model: nn.Module, layer: int = -1) -> None:
        self.model = model
        self.layer = layer
        self.modules = projection_modules(model, layer)
        inner = unwrap(model)
        n = len(adapter_for(inner).blocks(inner))
        self.layer_index = layer % n
        self._outputs: list[torch.Tensor | None] = [None, None, None]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, slot: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self._outputs[slot] = output

        return hook

    def attach(self) -> QKVCapture:
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget the last forward's tensors (frees their memory and graph)."""
        self._outputs = [None, None, None]

    def __enter__(self) -> QKVCapture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def qkv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q, K, V) of the last forward pass."""
        if any(t is None for t in self._outputs):
            raise RuntimeError(
                f"QKVCapture(layer={self.layer}): no forward pass has run through the hooked block yet"
            )
        return tuple(self._outputs)  # type: ignore[return-value]
