"""The packed model directory: its format, and reading and validating it without torch (pack_writer.py writes it).

A packed directory holds
  config.json        the HF config, the "bitdistill" conversion settings, and a "packed" key with the format
                     version, the architecture the engine needs ("arch"), the tensor index (name -> dtype,
                     shape) and the CRC-32 of the weights file;
  model.safetensors  ternary linears (2-bit kernel layout or base-3), their scales/biases/SubLN weights, the
                     norms (fp32, Gemma's 1+w folded in), RoPE inverse frequencies, the embedding / LM head
                     in one of the dtypes of dense_dtypes.py (fp32, fp16, bf16 as uint16 bits, int8 per
                     row + fp32 row scales, q4 + fp32 group scales);
  tokenizer files    whatever the source model's tokenizer saved.

Everything a C pointer will be derived from is checked here first: the CRC, every tensor's dtype and shape
against the architecture, value ranges of the packed codes, finiteness of scales, and sane dimensions.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..env import read_env
from ..errors import BitDistillError
from ..quant.bit_layout import (
    BLOCK,
    base3_to_2bit,
    has_invalid_2bit_code,
    packed_2bit_shape,
    packed_base3_shape,
)
from .arena import arena, gather, padded
from .dense_dtypes import DENSE, DENSE_DTYPES, Q4_GROUP, dense_scale_name

# 2: "arch.subln" is a mode ("o_down", "all", "none") instead of a bool; version-1 files (true = o_down,
# false = none) still load.
PACKED_FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LINEARS = ("q", "k", "v", "o", "gate", "up", "down")
BITS = ("2", "1.58")
ACTS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}
_MAX_DIM = 1 << 20
# Which linears carry a `.sub_norm` (an RMSNorm on their input) in each SubLN mode: the paper's SubLN, the
# authors' allnorm (every BitLinear, q/k/v and gate/up each with their own weights), or none.
SUBLN_LINEARS = {"o_down": ("o", "down"), "all": LINEARS, "none": ()}


@dataclass
class PackedModel:
    """A validated packed model in memory: `arch` (dict) and `tensors` (name -> numpy array, 2-bit layout)."""

    path: Path
    arch: dict
    tensors: dict[str, np.ndarray] = field(repr=False)
    config: dict = field(repr=False)

    def linear_bytes(self) -> int:
        """Bytes of the ternary linear weights as stored on disk (2-bit or base-3)."""
        return int(self.arch.get("linear_bytes_on_disk", 0))


# ----------------------------------------------------------------------------------------------------------
# format pieces the writer (pack_writer.py) and the reader share


def _linear_dims(arch: dict) -> dict[str, tuple[int, int]]:
    h, qd, kvd, inter = (
        arch["hidden"],
        arch["n_heads"] * arch["head_dim"],
        arch["n_kv"] * arch["head_dim"],
        arch["inter"],
    )
    return {"q": (qd, h), "k": (kvd, h), "v": (kvd, h), "o": (h, qd), "gate": (inter, h), "up": (inter, h), "down": (h, inter)}  # fmt: skip


def stream_order(arch: dict):
    """Sort key placing tensors in the order a forward step reads them: the embedding and other globals, then
    layer by layer its small tensors and its packed linears in call order (q, k, v, o, gate, up, down), then
    the head. Decode streams the linears back to back, so in this order the stream (and the kernels'
    prefetch past the end of a matrix) runs on into the next weight instead of an unrelated tensor; the file
    itself is in safetensors' alphabetical order (layers.0, layers.1, layers.10, ...; down before q)."""
    calls = {name: i for i, name in enumerate(_linear_dims(arch))}

    def key(name: str):
        parts = name.split(".")
        if parts[0] == "layers" and len(parts) > 2 and parts[1].isdigit():
            linear = calls.get(parts[2], -1) if parts[-1] == "packed" else -1
            return (1, int(parts[1]), linear, name)
        return (2 if parts[0] == "head" else 0, 0, 0, name)

    return key


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


# ----------------------------------------------------------------------------------------------------------
# reading and validation (numpy + safetensors only)


def _fail(path: Path, what: str) -> BitDistillError:
    return BitDistillError(
        f"{path}: {what}; the packed model is corrupt or incomplete — re-run bitdistill pack"
    )


def _int(arch: dict, key: str, path: Path, lo: int = 1, hi: int = _MAX_DIM) -> int:
    v = arch.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _fail(path, f'"packed.arch.{key}" = {v!r} is not an integer in [{lo}, {hi}]')
    return v


def _float(arch: dict, key: str, path: Path, positive: bool = False) -> float:
    v = arch.get(key)
    if (
        not isinstance(v, (int, float))
        or isinstance(v, bool)
        or not math.isfinite(v)
        or v < 0
        or (positive and v == 0)
    ):
        raise _fail(
            path,
            f'"packed.arch.{key}" = {v!r} is not a finite {"positive" if positive else "non-negative"} number',
        )
    return float(v)


def validate_arch(arch: object, path: Path) -> dict:
    """Check every architecture field the engine relies on; return the arch dict."""
    if not isinstance(arch, dict):
        raise _fail(path, '"packed.arch" is missing or not an object')
    for key in ("n_layers", "hidden", "n_heads", "n_kv", "head_dim", "inter"):
        _int(arch, key, path, hi=4096 if key == "n_layers" else _MAX_DIM)
    _int(arch, "vocab", path, hi=1 << 24)
    if arch["n_heads"] % arch["n_kv"] or arch["head_dim"] % 2:
        raise _fail(path, "n_heads must be a multiple of n_kv and head_dim even")
    for key in ("eps", "attn_scale", "embed_scale"):
        _float(arch, key, path, positive=True)
    for key in ("final_softcap", "attn_softcap"):
        _float(arch, key, path)
    checks = {
        "act": ("silu", "gelu_tanh", "gelu"),
        "bits": BITS,
        "head_dtype": DENSE_DTYPES,
        "embed_dtype": DENSE_DTYPES,
        "granularity": ("tensor", "channel", "group"),
    }
    for key, allowed in checks.items():
        if arch.get(key) not in allowed:
            raise _fail(path, f'"packed.arch.{key}" = {arch.get(key)!r} is not one of {allowed}')
    if arch["granularity"] == "group":
        gs = _int(arch, "group_size", path)
        for _n, k in _linear_dims(arch).values():
            if gs % BLOCK or k % gs:
                raise _fail(path, f"group_size {gs} does not divide the layer width {k} in blocks of {BLOCK}")
    for key in ("tied", "sandwich_norms", "qk_norm"):
        if not isinstance(arch.get(key), bool):
            raise _fail(path, f'"packed.arch.{key}" is not true/false')
    subln = arch.get("subln")
    if isinstance(subln, bool):  # format version 1
        arch["subln"] = "o_down" if subln else "none"
    elif subln not in SUBLN_LINEARS:
        modes = ", ".join(SUBLN_LINEARS)
        raise _fail(path, f'"packed.arch.subln" = {subln!r} is not one of {modes} (or true/false)')
    n = arch["n_layers"]
    rope_scale = arch.get("rope_scale")
    if not isinstance(rope_scale, dict) or not rope_scale:
        raise _fail(path, '"packed.arch.rope_scale" is missing')
    for k in rope_scale:
        _float(rope_scale, k, path, positive=True)
    lr, lw = arch.get("layer_rope"), arch.get("layer_window")
    if not isinstance(lr, list) or len(lr) != n or any(r not in rope_scale for r in lr):
        raise _fail(path, '"packed.arch.layer_rope" does not name a RoPE table for every layer')
    if (
        not isinstance(lw, list)
        or len(lw) != n
        or any(not isinstance(w, int) or not 0 <= w < 1 << 30 for w in lw)
    ):
        raise _fail(path, '"packed.arch.layer_window" is not a list of window sizes, one per layer')
    if not isinstance(arch.get("bias"), dict) or any(k not in LINEARS for k in arch["bias"]):
        raise _fail(path, '"packed.arch.bias" is malformed')
    return arch


def expected_tensors(arch: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (numpy dtype name, shape) of every tensor a packed file must hold, and nothing else."""
    h, hd, v = arch["hidden"], arch["head_dim"], arch["vocab"]
    exp: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in arch["rope_scale"]:
        exp[f"rope.{name}.inv_freq"] = ("float32", (hd // 2,))
    for i in range(arch["n_layers"]):
        for lname, (n, k) in _linear_dims(arch).items():
            p = f"layers.{i}.{lname}"
            shape = packed_2bit_shape(n, k) if arch["bits"] == "2" else packed_base3_shape(n, k)
            exp[f"{p}.packed"] = ("uint8", shape)
            gran = arch["granularity"]
            sshape = (1,) if gran == "tensor" else (n,) if gran == "channel" else (n, k // arch["group_size"])
            exp[f"{p}.scale"] = ("float32", sshape)
            if arch["bias"].get(lname):
                exp[f"{p}.bias"] = ("float32", (n,))
            if lname in SUBLN_LINEARS[arch["subln"]]:
                exp[f"{p}.sub_norm"] = ("float32", (k,))
        p = f"layers.{i}"
        exp[f"{p}.attn_norm"] = exp[f"{p}.ffn_norm"] = ("float32", (h,))
        if arch["sandwich_norms"]:
            exp[f"{p}.post_attn_norm"] = exp[f"{p}.post_ffn_norm"] = ("float32", (h,))
        if arch["qk_norm"]:
            exp[f"{p}.q_norm"] = exp[f"{p}.k_norm"] = ("float32", (hd,))
    exp["norm"] = ("float32", (h,))
    ng = -(-h // Q4_GROUP)
    for name, dtype in (
        ("embed", arch["embed_dtype"]),
        ("head", None if arch["tied"] else arch["head_dtype"]),
    ):
        if dtype is None:
            continue
        exp[name] = (DENSE[dtype].storage, (v, ng * 32) if dtype == "q4" else (v, h))
        # q4 group scales may be negative or zero (Q4_0's d = m / -8); only finiteness is checked
        if dtype in ("int8", "q4"):
            exp[dense_scale_name(name, dtype)] = ("float32", (v,) if dtype == "int8" else (v, ng))
    return exp


def read_packed_config(path: str | os.PathLike) -> dict:
    """config.json of a packed directory, parsed, with the "packed" key checked for presence and version."""
    d = Path(path)
    if not d.is_dir():
        raise BitDistillError(f"{d}: not a directory; pass the output directory of `bitdistill pack`")
    cfg_path = d / CONFIG_NAME
    try:
        config = json.loads(cfg_path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise BitDistillError(
            f"{cfg_path}: missing; {d} is not a packed model (run bitdistill pack)"
        ) from None
    except (ValueError, UnicodeDecodeError) as err:
        raise _fail(cfg_path, f"not valid JSON ({err})") from None
    packed = config.get("packed") if isinstance(config, dict) else None
    if not isinstance(packed, dict):
        raise BitDistillError(
            f'{cfg_path}: no "packed" section; {d} is not a packed model. Pack it: bitdistill pack {d} --out DIR'
        )
    version = packed.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise _fail(cfg_path, f'"packed.format_version" = {version!r} is invalid')
    if version > PACKED_FORMAT_VERSION:
        raise BitDistillError(
            f"{cfg_path}: packed format {version} is newer than this bitdistill; upgrade it"
        )
    return config


_ST_DTYPES = {"U8": np.uint8, "I8": np.int8, "U16": np.uint16, "F16": np.float16, "F32": np.float32}


def read_safetensors(path: Path, huge_pages: bool = True, order=None) -> dict[str, np.ndarray]:
    """Read a safetensors file into fresh numpy arrays, validating the header first.

    Every offset, dtype and shape is checked against the file size before anything is read. Tensors are
    read straight into views of one huge-page block (arena.py: one copy, no intermediate buffer), so peak
    RSS holds each weight byte once and the decode loop, which streams all weights every token, walks
    2 MiB pages instead of 4 KiB ones. `order` (a sort key on tensor names, e.g. stream_order) decides
    where each lands in the block; default: the file's order.
    """
    size = path.stat().st_size
    if size < 8:
        raise _fail(path, f"only {size} bytes, too short for a safetensors header")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n < 2 or 8 + n > size or n > 1 << 27:
            raise _fail(path, f"header length {n} does not fit the file size {size}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise _fail(path, f"header is not valid JSON ({err})") from None
        if not isinstance(header, dict):
            raise _fail(path, "header is not a JSON object")
        base, data_size = 8 + n, size - 8 - n
        entries = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(info, dict) or info.get("dtype") not in _ST_DTYPES:
                raise _fail(path, f"tensor {name!r}: missing or unsupported dtype in the header")
            shape, offs = info.get("shape"), info.get("data_offsets")
            if (
                not isinstance(shape, list)
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 40 for v in shape)
                or not isinstance(offs, list)
                or len(offs) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in offs)
            ):
                raise _fail(path, f"tensor {name!r}: malformed shape/data_offsets in the header")
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            begin, end = offs
            count = math.prod(shape)  # exact: an int64 product of a crafted shape can wrap to a small value
            if not 0 <= begin <= end <= data_size or end - begin != count * dtype.itemsize:
                raise _fail(
                    path, f"tensor {name!r}: data_offsets {offs} do not match its shape or the file size"
                )
            entries.append((begin, end, name, tuple(shape), dtype))
        entries.sort(key=lambda e: e[:2])
        for (_, e0, a, *_), (b1, _, b, *_) in zip(entries, entries[1:], strict=False):
            if b1 < e0:
                raise _fail(path, f"tensors {a!r} and {b!r} overlap")
        tensors: dict[str, np.ndarray] = {}
        block, at = arena(sum(padded(e - b) for b, e, *_ in entries), huge_pages), 0
        if order is not None:  # placed in the block in this order, read from the file wherever they are
            entries.sort(key=lambda e: order(e[2]))
        for begin, end, name, shape, dtype in entries:
            arr = block[at : at + end - begin].view(dtype).reshape(shape)
            at += padded(end - begin)
            f.seek(base + begin)
            if f.readinto(memoryview(arr.reshape(-1).view(np.uint8))) != end - begin:
                raise _fail(path, f"tensor {name!r}: the file ended early")
            tensors[name] = arr
    return tensors


def load_packed(path: str | os.PathLike) -> PackedModel:
    """Read and fully validate a packed directory. Linear weights come back in the 2-bit kernel layout."""
    d = Path(path)
    config = read_packed_config(d)
    cfg_path = d / CONFIG_NAME
    packed = config["packed"]
    arch = validate_arch(packed.get("arch"), cfg_path)
    wpath = d / WEIGHTS_NAME
    if not wpath.is_file():
        raise BitDistillError(
            f"{wpath}: missing; the packed directory is incomplete — re-run bitdistill pack"
        )
    crc = packed.get("weights_crc32")
    if not isinstance(crc, int):
        raise _fail(cfg_path, '"packed.weights_crc32" is missing')
    if _crc32(wpath) != crc:
        raise _fail(wpath, "CRC-32 mismatch (the file was truncated or modified after packing)")
    huge_pages = read_env().huge_pages
    order = stream_order(arch)
    tensors = read_safetensors(wpath, huge_pages, order)
    expected = expected_tensors(arch)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise _fail(
            wpath, f"tensors missing {missing[:4]} / unexpected {unexpected[:4]} for the recorded arch"
        )
    for name, (dtype, shape) in expected.items():
        t = tensors[name]
        if str(t.dtype) != dtype or tuple(t.shape) != tuple(shape):
            raise _fail(wpath, f"tensor {name!r} is {t.dtype}{list(t.shape)}, expected {dtype}{list(shape)}")
        if t.dtype.kind == "f" and name != "embed" and name != "head" and not np.isfinite(t).all():
            raise _fail(wpath, f"tensor {name!r} holds NaN/inf")
        if name.endswith(".scale") and not (t > 0).all():
            raise _fail(wpath, f"tensor {name!r} holds a non-positive scale")
    dims = _linear_dims(arch)
    for i in range(arch["n_layers"]):
        for lname, (n, k) in dims.items():
            key = f"layers.{i}.{lname}.packed"
            if arch["bits"] == "1.58":
                tensors[key] = base3_to_2bit(tensors[key], n, k)  # raises on bytes > 242
            elif has_invalid_2bit_code(tensors[key]):
                raise _fail(wpath, f"tensor {key!r} holds the invalid 2-bit code 3")
    if arch["bits"] == "1.58":  # the converted linears are fresh arrays: back into one huge-page block
        tensors = gather(dict(sorted(tensors.items(), key=lambda kv: order(kv[0]))), huge_pages)
    return PackedModel(path=d, arch=arch, tensors=tensors, config=config)


def unpack_weight(pm: PackedModel, layer: int, name: str) -> np.ndarray:
    """The exact int8 ternary matrix of one linear (for checks and export)."""
    from ..quant.bit_layout import unpack_2bit

    n, k = _linear_dims(pm.arch)[name]
    return unpack_2bit(pm.tensors[f"layers.{layer}.{name}.packed"], n, k)
