"""Corrupt, truncated and inconsistent packed directories give a clear BitDistillError, never a crash.

The CRC-32 in config.json catches any change to model.safetensors; to exercise the structural checks behind
it, most cases below re-stamp the CRC of the damaged file so the loader must find the damage itself. A load
that succeeds must then run a forward step without crashing (flipped bits inside valid values are legal).
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from bitdistill.errors import BitDistillError
from bitdistill.model.convert import to_bitnet
from bitdistill.runtime.engine import Engine, load
from bitdistill.runtime.pack_writer import pack_model
from bitdistill.runtime.packed import load_packed


@pytest.fixture(scope="module", params=["2", "1.58"])
def packed_dir(request, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16,
    )  # fmt: skip
    model = to_bitnet(AutoModelForCausalLM.from_config(cfg)).eval()
    out = tmp_path_factory.mktemp("fuzz") / f"packed-{request.param}"
    pack_model(model, out, bits=request.param, head_dtype="int8")
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _restamp_crc(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["packed"]["weights_crc32"] = zlib.crc32((d / "model.safetensors").read_bytes())
    (d / "config.json").write_text(json.dumps(cfg))


def _load_and_run(d: Path) -> None:
    """Either a BitDistillError or a model that runs a step; anything else fails the test."""
    try:
        pm = load_packed(d)
    except BitDistillError as err:
        assert str(err), "error without a message"
        return
    engine = Engine(pm, threads=1)
    engine.reset(8)
    engine.forward([1, 2, 3])


def test_clean_directory_loads(packed_dir: Path) -> None:
    engine = load(packed_dir, threads=1)
    engine.reset(16)
    assert np.isfinite(engine.forward([1, 2, 3])).all()


def test_truncated_weights(packed_dir: Path, tmp_path: Path) -> None:
    data = (packed_dir / "model.safetensors").read_bytes()
    cuts = sorted({0, 1, 7, 8, 9, 20, 100, len(data) // 3, len(data) // 2, len(data) - 1, len(data) - 100})
    for i, cut in enumerate(cuts):
        d = _copy(packed_dir, tmp_path / f"t{i}")
        (d / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(BitDistillError, match="CRC-32 mismatch"):
            load_packed(d)
        _restamp_crc(d)  # now the structural checks must catch it
        with pytest.raises(BitDistillError, match="model.safetensors"):
            load_packed(d)


def test_bit_flipped_weights(packed_dir: Path, tmp_path: Path) -> None:
    data = bytearray((packed_dir / "model.safetensors").read_bytes())
    header_len = int.from_bytes(data[:8], "little") + 8
    rng = np.random.default_rng(0)
    # half the flips land in the 8-byte length + JSON header, half in tensor data
    positions = list(rng.integers(0, header_len, 60)) + list(rng.integers(header_len, len(data), 60))
    d = _copy(packed_dir, tmp_path / "flip")
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        (d / "model.safetensors").write_bytes(bytes(bad))
        with pytest.raises(BitDistillError, match="CRC-32"):
            load_packed(d)
        _restamp_crc(d)
        _load_and_run(d)


def test_bit_flipped_and_truncated_config(packed_dir: Path, tmp_path: Path) -> None:
    text = (packed_dir / "config.json").read_bytes()
    rng = np.random.default_rng(1)
    d = _copy(packed_dir, tmp_path / "cfg")
    for _ in range(120):
        bad = bytearray(text)
        pos = int(rng.integers(0, len(bad)))
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        (d / "config.json").write_bytes(bytes(bad))
        _load_and_run(d)
    for cut in (0, 1, len(text) // 2, len(text) - 2):
        (d / "config.json").write_bytes(text[:cut])
        with pytest.raises(BitDistillError, match="config.json"):
            load_packed(d)


@pytest.mark.parametrize(
    "edit",
    [
        lambda a: a.update(hidden=65),
        lambda a: a.update(n_layers=3),
        lambda a: a.update(vocab=10**9),
        lambda a: a.update(n_kv=3),
        lambda a: a.update(head_dim="16"),
        lambda a: a.update(eps=-1.0),
        lambda a: a.update(bits="3"),
        lambda a: a.update(head_dtype="fp8"),
        lambda a: a.update(layer_window=[0]),
        lambda a: a.update(layer_rope=["default", "nope"]),
        lambda a: a.update(tied=not a["tied"]),
        lambda a: a.update(subln=False),
        lambda a: a.pop("inter"),
    ],
)
def test_inconsistent_arch_fields(packed_dir: Path, tmp_path: Path, edit) -> None:
    d = _copy(packed_dir, tmp_path / "arch")
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg["packed"]["arch"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BitDistillError):
        load_packed(d)


def test_wrong_dtype_and_bad_values(packed_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(packed_dir / "model.safetensors"))
    cases = {
        "layers.0.q.scale": lambda t: t.astype(np.float64),
        "layers.1.down.scale": lambda t: -t,
        "norm": lambda t: t * np.nan,
        "layers.0.k.packed": lambda t: np.full_like(t, 255),  # code 3 (2-bit) / byte > 242 (1.58-bit)
        "embed": lambda t: t[:-1],
    }
    for i, (name, f) in enumerate(cases.items()):
        d = _copy(packed_dir, tmp_path / f"v{i}")
        bad = dict(tensors)
        bad[name] = np.ascontiguousarray(f(tensors[name]))
        save_file(bad, str(d / "model.safetensors"))
        _restamp_crc(d)
        with pytest.raises(BitDistillError, match="corrupt"):
            load_packed(d)


def test_missing_files_and_bad_inputs(packed_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BitDistillError, match="not a directory"):
        load_packed(tmp_path / "nope")
    d = _copy(packed_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(BitDistillError, match="missing"):
        load_packed(d)
    engine = load(packed_dir, threads=1)
    engine.reset(4)
    with pytest.raises(BitDistillError, match="out of range"):
        engine.forward([64])
    with pytest.raises(BitDistillError, match="context full"):
        engine.forward([1, 2, 3, 4, 5])
