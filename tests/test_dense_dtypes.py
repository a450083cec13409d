"""The dense (embedding / LM head) dtypes: one table, and what each dtype's stored bytes decode to."""

from __future__ import annotations

import numpy as np

from bitdistill.runtime.dense_dtypes import DENSE, dequantize_dense


def test_float_storage_decodes_to_the_values_written():
    """fp32/fp16 are stored as themselves, bf16 as the high 16 bits of the float32 pattern (written out)."""
    w = np.array([[1.0, -2.5, 3.140625, 65280.0]], np.float32)
    bits = (w.view(np.uint32) >> 16).astype(np.uint16)  # exact in bf16: every value has <= 8 mantissa bits
    stored = {"fp32": w, "fp16": w.astype(np.float16), "bf16": bits}
    for dtype, arr in stored.items():
        assert arr.dtype == np.dtype(DENSE[dtype].storage)
        np.testing.assert_array_equal(dequantize_dense({"e": arr}, "e", dtype, 4), w)


def test_export_of_a_tied_pair_stored_twice_keeps_the_finer_copy(tmp_path):
    """Packing a tied model with head != embedding dtype stores both; export must use the finer one, in either
    order: here the fp32 copy, which equals the model's float embedding exactly."""
    from bitdistill.export.source import from_packed
    from bitdistill.model.convert import to_bitnet
    from bitdistill.runtime.pack_writer import pack_model
    from tiny_models import tiny_model

    model = to_bitnet(tiny_model("llama", tie_word_embeddings=True), subln="none")
    emb = model.get_input_embeddings().weight.detach().numpy()
    for head, embed in (("fp32", "int8"), ("q4", "fp32")):
        src = from_packed(pack_model(model, tmp_path / f"{head}-{embed}", head_dtype=head, embed_dtype=embed))
        assert src.head is None
        np.testing.assert_array_equal(src.embed, emb)
