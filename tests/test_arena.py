"""The weights' memory block (runtime/arena.py): one 2 MiB-aligned, huge-page-advised block holding every
tensor of a packed model on its own cache line, with the same values as the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bitdistill.runtime.arena import ALIGN, HUGE_PAGE, arena, gather
from bitdistill.runtime.packed import read_safetensors


def _check_one_block(tensors: dict[str, np.ndarray]) -> None:
    """Every array starts on a cache line and they do not overlap, one after another in one block."""
    spans = sorted((t.ctypes.data, t.ctypes.data + t.nbytes) for t in tensors.values())
    for begin, _ in spans:
        assert begin % ALIGN == 0
    for (_, end), (begin, _) in zip(spans, spans[1:], strict=False):
        assert end <= begin < end + ALIGN  # next cache line after the previous tensor, no gap beyond padding


def test_arena_is_aligned_zeroed_and_writable():
    a = arena(5 * 2**20 + 3)
    assert a.size == 5 * 2**20 + 3 and a.dtype == np.uint8
    assert a.ctypes.data % HUGE_PAGE == 0
    assert not a[:: 4096].any() and a[-1] == 0
    a[-1] = 7
    assert a[-1] == 7


def test_arena_that_cannot_be_reserved_is_a_one_line_error(monkeypatch):
    import mmap

    from bitdistill.errors import BitDistillError

    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refuse)
    with pytest.raises(BitDistillError, match=r"cannot reserve 3 MiB for the model's weights .*ulimit -v"):
        arena(3 * 2**20)


def _vm_flags(addr: int) -> list[str] | None:
    """The VmFlags of the mapping holding `addr` (Linux /proc/self/smaps)."""
    flags, current = None, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(v, 16) for v in head.split("-"))
            current = lo <= addr < hi
        elif line.startswith("VmFlags:") and current:
            flags = line.split()[1:]
    return flags


@pytest.mark.skipif(
    not Path("/sys/kernel/mm/transparent_hugepage").is_dir(), reason="a Linux kernel with transparent huge pages"
)
def test_arena_is_advised_huge_pages_unless_turned_off():
    on, off = arena(4 * HUGE_PAGE), arena(4 * HUGE_PAGE, huge_pages=False)
    assert "hg" in _vm_flags(on.ctypes.data)  # the kernel recorded MADV_HUGEPAGE for the mapping
    assert "hg" not in _vm_flags(off.ctypes.data)


def test_gather_copies_values_dtypes_and_shapes():
    rng = np.random.default_rng(0)
    src = {
        "a": rng.integers(0, 255, (3, 5), dtype=np.uint8),
        "b": rng.standard_normal((7,)).astype(np.float32),
        "c": rng.standard_normal((2, 3)).astype(np.float16),
        "empty": np.zeros((0, 4), np.int8),
    }
    out = gather(src)
    assert list(out) == list(src)
    for name, t in src.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        np.testing.assert_array_equal(out[name], t)
    _check_one_block({k: v for k, v in out.items() if v.size})


def test_read_safetensors_reads_into_one_block(tmp_path):
    rng = np.random.default_rng(1)
    src = {
        "w": rng.integers(0, 255, (33, 17), dtype=np.uint8),
        "scale": rng.standard_normal((33,)).astype(np.float32),
        "h": rng.standard_normal((5, 9)).astype(np.float16),
        "q": rng.integers(-128, 127, (11,), dtype=np.int8),
    }
    path = tmp_path / "model.safetensors"
    save_file(src, str(path))
    got = read_safetensors(path)
    assert set(got) == set(src)
    for name, t in src.items():
        assert got[name].dtype == t.dtype
        np.testing.assert_array_equal(got[name], t)
        got[name].reshape(-1)[0] = got[name].reshape(-1)[0]  # writable (the engine does not write, numpy may)
    _check_one_block(got)


@pytest.mark.parametrize("bits", ["2", "1.58"])
def test_loaded_model_lies_in_one_block(tmp_path, bits):
    """Both formats end in one block: the base-3 linears are converted to the 2-bit layout, then gathered."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bitdistill.model.convert import to_bitnet
    from bitdistill.runtime.pack_writer import pack_model
    from bitdistill.runtime.packed import load_packed

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    pack_model(to_bitnet(AutoModelForCausalLM.from_config(cfg)).eval(), tmp_path / "p", bits=bits)
    pm = load_packed(tmp_path / "p")
    _check_one_block({k: v for k, v in pm.tensors.items() if v.size})
    assert min(t.ctypes.data for t in pm.tensors.values()) % HUGE_PAGE == 0


def test_engine_state_with_and_without_huge_pages_gives_the_same_logits(tmp_path):
    """A KV cache over 2 MiB takes the huge-page allocation in engine.c; BITDISTILL_HUGEPAGES=0's plain one
    must hold the same values (the cache is zero-filled either way and written before it is read)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bitdistill.env import read_env
    from bitdistill.model.convert import to_bitnet
    from bitdistill.runtime.engine import load
    from bitdistill.runtime.native import lib
    from bitdistill.runtime.pack_writer import pack_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    pack_model(to_bitnet(AutoModelForCausalLM.from_config(cfg)).eval(), tmp_path / "p", bits="2")
    engine = load(tmp_path / "p", threads=1)
    max_seq = 3 * HUGE_PAGE // (2 * 2 * 16 * 4)  # K and V, 2 layers, 16 kv values per slot, fp32: 3 MiB each
    out = {}
    try:
        for on in (1, 0):
            lib().bd_set_huge_pages(on)
            engine.reset(max_seq)
            out[on] = engine.forward([1, 5, 9, 3])
    finally:
        lib().bd_set_huge_pages(int(read_env().huge_pages))
    np.testing.assert_array_equal(out[1], out[0])


@pytest.mark.parametrize("bits", ["2", "1.58"])
def test_linears_lie_in_the_order_a_forward_step_reads_them(tmp_path, bits):
    """stream_order: globals first, then layer by layer q, k, v, o, gate, up, down at rising addresses (the
    file holds them alphabetically: layers.0, layers.1, layers.10, ...; down before q), the head last."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bitdistill.model.convert import to_bitnet
    from bitdistill.runtime.pack_writer import pack_model
    from bitdistill.runtime.packed import load_packed

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=11,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    pack_model(to_bitnet(AutoModelForCausalLM.from_config(cfg)).eval(), tmp_path / "p", bits=bits)
    t = load_packed(tmp_path / "p").tensors
    calls = [f"layers.{i}.{n}.packed" for i in range(11) for n in ("q", "k", "v", "o", "gate", "up", "down")]
    addrs = [t[name].ctypes.data for name in calls]
    assert addrs == sorted(addrs)
    assert t["embed"].ctypes.data < addrs[0] < addrs[-1] < t["head"].ctypes.data
    for i in range(10):  # only layer i+1's small tensors (norms, scales) between one layer's down and the next q
        gap = t[f"layers.{i + 1}.q.packed"].ctypes.data - (t[f"layers.{i}.down.packed"].ctypes.data + t[f"layers.{i}.down.packed"].nbytes)
        assert gap < 4096, gap
