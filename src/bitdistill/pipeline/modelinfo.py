"""A model's shape from its config alone (config.json or GGUF metadata), never its weights.

`bitdistill run --check` needs the layer count, the q/k/v widths, every linear's input width and the
parameter count of each model a recipe names, in well under a second, before anything trains. Loading a
model would take seconds to minutes; this reads a few kilobytes. `gguf.GGUFReader` builds numpy arrays of
the whole vocabulary (5 s for SmolLM2), so GGUF headers are walked here directly and arrays skipped.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import BitDistillError


@dataclass(frozen=True)
class ModelShape:
    """What the pre-flight checks need to know about a causal LM."""

    where: str  # the spec as the recipe names it
    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @property
    def qkv_widths(self) -> tuple[int, int, int]:
        return self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim

    def linear_inputs(self) -> dict[str, int]:
        """in_features of each decoder-block linear that stage 1 turns into a BitLinear."""
        attn = self.heads * self.head_dim
        return {"q_proj": self.hidden, "k_proj": self.hidden, "v_proj": self.hidden, "o_proj": attn,
                "gate_proj": self.hidden, "up_proj": self.hidden, "down_proj": self.intermediate}  # fmt: skip

    def parameters(self) -> int:
        """Parameter count of the full-precision model (norm weights included, rotary buffers not)."""
        return self.root_parameters() + self.layers * self.layer_parameters()

    def layer_parameters(self) -> int:
        """Parameters of one decoder layer (one FSDP unit of train/sharding.py)."""
        q, k, v = self.qkv_widths
        attn = self.hidden * (q + k + v) + q * self.hidden + (q + k + v if self.qkv_bias else 0)
        if self.model_type in ("qwen3", "gemma3_text"):
            attn += 2 * self.head_dim  # q_norm and k_norm
        mlp = 3 * self.hidden * self.intermediate
        norms = (4 if self.model_type == "gemma3_text" else 2) * self.hidden
        return attn + mlp + norms

    def root_parameters(self) -> int:
        """Parameters outside the decoder layers: the embeddings, LM head (unless tied) and final norm (the
        root FSDP unit)."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


def _positive(cfg: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None and default is None:
        raise BitDistillError(f"{where}: config has no {key}; not a decoder-only causal LM config")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BitDistillError(f"{where}: config {key} is {value!r}, expected a positive integer; the model "
                              "config is invalid")  # fmt: skip
    return value


def shape_from_config(cfg: dict[str, Any], where: str) -> ModelShape:
    """ModelShape of an HF config mapping (a multimodal config's text_config when it has one)."""
    cfg = cfg.get("text_config") or cfg
    heads = _positive(cfg, "num_attention_heads", where)
    hidden = _positive(cfg, "hidden_size", where)
    model_type = str(cfg.get("model_type", "?"))
    return ModelShape(
        where=where,
        model_type=model_type,
        layers=_positive(cfg, "num_hidden_layers", where),
        hidden=hidden,
        intermediate=_positive(cfg, "intermediate_size", where),
        heads=heads,
        kv_heads=_positive(cfg, "num_key_value_heads", where, heads),
        head_dim=_positive(cfg, "head_dim", where, hidden // heads or 1),
        vocab=_positive(cfg, "vocab_size", where),
        tied=bool(cfg.get("tie_word_embeddings", model_type == "gemma3_text")),
        qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
    )


# -- GGUF headers ---------------------------------------------------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_COUNT = 1 << 24  # more keys, tensors or array items than any real model: a corrupt header


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    if n > _MAX_COUNT:
        raise ValueError(f"string of {n} bytes")
    return f.read(n).decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int, keep: bool) -> Any:
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind != _ARRAY:
        raise ValueError(f"value type {kind}")
    item, n = _read(f, "<I"), _read(f, "<Q")
    if n > _MAX_COUNT:
        raise ValueError(f"array of {n} items")
    if item in _SCALARS and not keep:
        f.seek(n * struct.calcsize(_SCALARS[item]), os.SEEK_CUR)
        return n
    if item == _STRING and not keep:
        for _ in range(n):  # strings are length-prefixed: walk their lengths, read none of them
            f.seek(_read(f, "<Q"), os.SEEK_CUR)
        return n
    return [_value(f, item, True) for _ in range(n)]


def gguf_config(path: Path) -> dict[str, Any]:
    """An HF-style config mapping from a GGUF file's metadata (the keys llama.cpp writes)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise BitDistillError(f"{path}: not a GGUF file (no GGUF magic bytes)")
            version = _read(f, "<I")
            count = "<Q" if version >= 2 else "<I"
            n_tensors, n_kv = _read(f, count), _read(f, count)
            if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
                raise ValueError(f"{n_tensors} tensors, {n_kv} keys")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = _string(f)
                meta[key] = _value(f, _read(f, "<I"), keep=False)
            names = set()
            for _ in range(n_tensors):
                names.add(_string(f))
                f.seek(8 * _read(f, "<I") + 4 + 8, os.SEEK_CUR)  # dims, type, offset
    except (EOFError, ValueError, struct.error, OSError) as err:
        raise BitDistillError(f"{path}: a corrupt or truncated GGUF header ({err or 'ends early'}); "
                              "download it again") from None  # fmt: skip
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise BitDistillError(f"{path}: GGUF metadata has no general.architecture")

    def get(key: str) -> Any:
        return meta.get(f"{arch}.{key}")

    vocab = get("vocab_size") or meta.get("tokenizer.ggml.tokens")
    heads = get("attention.head_count")
    cfg = {
        "model_type": {"gemma3": "gemma3_text"}.get(arch, arch),
        "num_hidden_layers": get("block_count"),
        "hidden_size": get("embedding_length"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv") or heads,
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in names,
    }
    if get("attention.key_length"):
        cfg["head_dim"] = get("attention.key_length")
    return cfg


def hub_config(spec: str) -> dict[str, Any] | None:
    """The config.json of a hub id from the local Hugging Face cache, or None when it is not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec, "config.json")
    except ValueError:  # an id the cache layer refuses (HFValidationError): the loader will say why
        return None
    return json.loads(Path(found).read_text()) if isinstance(found, str) else None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def model_shape(spec: str, where: str) -> ModelShape | None:
    """ModelShape of any model spec bitdistill loads; None for a hub id that is not cached while online.

    Errors (missing path, unreadable config, a hub id while HF_HUB_OFFLINE is set) name `where`.
    """
    from ..model.hub import resolve

    try:
        path, kwargs = resolve(spec)
    except BitDistillError as err:
        raise BitDistillError(f"{where}: {err}") from None
    if "gguf_file" in kwargs:
        return shape_from_config(gguf_config(Path(path) / kwargs["gguf_file"]), f"{where} ({spec})")
    if Path(path).is_dir():
        config = Path(path) / "config.json"
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise BitDistillError(f"{where}: {config}: unreadable config ({err})") from None
        if not isinstance(cfg, dict):
            raise BitDistillError(f"{where}: {config}: not a JSON object")
        return shape_from_config(cfg, f"{where} ({config})")
    cfg = hub_config(path)
    if cfg is not None:
        return shape_from_config(cfg, f"{where} ({spec}, cached)")
    from .known_models import known_config

    cfg = known_config(path)
    if cfg is not None:
        return shape_from_config(cfg, f"{where} ({spec}, shipped config)")
    if hub_offline():
        raise BitDistillError(
            f"{where}: {spec!r} is a hub id, not a local path, and HF_HUB_OFFLINE is set (it is not in the "
            "local cache); pass a local directory or .gguf, or unset HF_HUB_OFFLINE"
        )
    return None


__all__ = ["ModelShape", "gguf_config", "hub_offline", "model_shape", "shape_from_config"]
