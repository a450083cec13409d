"""Capture the Q/K/V of one decoder block, for attention-relation distillation.

    with QKVCapture(student, layer=-1) as cap:
        out = student(input_ids=..., attention_mask=...)
    q, k, v = cap.qkv        # [B, T, D_q], [B, T, D_kv], [B, T, D_kv] of that forward

Two places to read them (`source`):
- "attention" (default, the authors' code): the tensors the block hands to its attention function — Q and
  K after Qwen3/Gemma3's q/k norms and RoPE, K and V before the GQA repeat — read by wrapping the model's
  attention implementation (transformers' AttentionInterface) while the capture is attached.
- "projection": what the q/k/v projection modules return (forward hooks; before norms and RoPE).
Heads are merged back to [B, T, heads · head_dim] either way. Tensors keep their autograd graph (the
student's loss back-propagates through them); run the teacher under `torch.no_grad()`.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..config.choices import QKV_SOURCES
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
    return default_relation_heads(widths)


class _AttentionTap:
    """Wraps transformers' attention functions so chosen attention modules report their Q/K/V inputs.

    Installed while at least one capture is attached and removed with the last one. The wrapper looks the
    original function up at call time (a registered implementation, or the modeling file's own eager one),
    so outputs are unchanged: it only records its arguments.
    """

    listeners: dict[int, QKVCapture] = {}
    saved: dict[str, object] = {}

    @classmethod
    def add(cls, attn: nn.Module, capture: QKVCapture) -> None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as fns

        key = getattr(unwrap(capture.model).config, "_attn_implementation", None) or "eager"
        if key not in cls.saved:
            # `_local_mapping` is where AttentionInterface keeps overrides; remember the old override (if
            # any) so removal restores exactly what was there.
            cls.saved[key] = fns._local_mapping.get(key)
            fns[key] = cls._wrapper(key)
        cls.listeners[id(attn)] = capture

    @classmethod
    def discard(cls, attn: nn.Module) -> None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as fns

        cls.listeners.pop(id(attn), None)
        if not cls.listeners:
            for key, old in cls.saved.items():
                if old is None:
                    fns._local_mapping.pop(key, None)
                else:
                    fns[key] = old
            cls.saved = {}

    @classmethod
    def _wrapper(cls, key: str):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as fns

        previous = cls.saved[key] or fns._global_mapping.get(key)

        def attention(module, query, key_states, value, *args, **kwargs):
            capture = cls.listeners.get(id(module))
            if capture is not None:
                capture._record(query, key_states, value)
            fn = previous or sys.modules[type(module).__module__].eager_attention_forward
            return fn(module, query, key_states, value, *args, **kwargs)

        return attention


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, head_dim] -> [B, T, heads · head_dim] (the layout the projections return)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class QKVCapture:
    """Context manager recording the Q/K/V of one block on every forward (see the module docstring)."""

    def __init__(self, model: nn.Module, layer: int = -1, source: str = "attention") -> None:
        if source not in QKV_SOURCES:
            raise BitDistillError(f"QKVCapture: source {source!r} is not one of {QKV_SOURCES}")
        self.model = model
        self.layer = layer
        self.source = source
        self.modules = projection_modules(model, layer)
        inner = unwrap(model)
        adapter = adapter_for(inner)
        blocks = adapter.blocks(inner)
        self.layer_index = layer % len(blocks)
        self.attention = adapter.attention(blocks[self.layer_index])
        self._outputs: list[torch.Tensor | None] = [None, None, None]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._tapped = False

    def _hook(self, slot: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self._outputs[slot] = output

        return hook

    def _record(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self._outputs = [_merge_heads(q), _merge_heads(k), _merge_heads(v)]

    def attach(self) -> QKVCapture:
        if self.source == "attention":
            if not self._tapped:
                _AttentionTap.add(self.attention, self)
                self._tapped = True
        elif not self._handles:
            self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._tapped:
            _AttentionTap.discard(self.attention)
            self._tapped = False

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
