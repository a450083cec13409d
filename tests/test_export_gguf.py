"""GGUF export: round trips through gguf.GGUFReader against the reference ternary numerics, metadata,
tokenizer arrays, and refusals for models llama.cpp cannot represent.

Tolerance: every ternary tensor must dequantize to exactly W_q · fp16(Δ) (bit-identical float32), where
(W_q, Δ) = bitdistill.quant.numerics.ternarize(W); fp16(Δ) is within 2^-11 relative of Δ.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from gguf.quants import dequantize
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from bitdistill import BitDistillError, save, to_bitnet
from bitdistill.cli import main as cli_main
from bitdistill.export import export_directory, qk_permutation
from bitdistill.quant.numerics import dequantize_weight, ternarize

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "BitNet distillation turns a full-precision model into ternary weights.",
    "llama.cpp loads GGUF files with TQ2_0 blocks; 1234 5678 numbers too!",
    "Hello world, hello tokenizer, hello merges and special tokens.",
]
SMALL = dict(
    vocab_size=320, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def bpe_tokenizer():
    """A byte-level BPE tokenizer trained offline on a few sentences (ids 0-2 special, one added token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.add_tokens(["<custom>"])  # a non-special added token -> USER_DEFINED
    return fast


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer()


def make_dir(tmp_path, tokenizer, config, subln=False, seed=0, name="m", **convert):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config)).float()  # to_bitnet marks the config
    to_bitnet(model, subln=subln, **convert)
    with torch.no_grad():  # non-trivial norms so a swapped or missing norm is caught
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.5 * torch.rand_like(p))
    out = tmp_path / name
    save(model, out, tokenizer=tokenizer)
    return model.eval(), out


def read(path):
    reader = GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def deq(t) -> np.ndarray:
    """Dequantize a GGUF tensor to float32 [rows, cols] (GGUF shapes are reversed)."""
    cols, rows = (int(x) for x in t.shape[:2])
    return dequantize(t.data, t.tensor_type).reshape(rows, cols).astype(np.float32)


def interleave_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's q/k permutation as an explicit loop: new row h·d + 2i + j = old h·d + j·d/2 + i."""
    d = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for i in range(d // 2):
            for j in range(2):
                out[h * d + 2 * i + j] = w[h * d + j * (d // 2) + i]
    return out


def expected_linear(lin, permute_heads: int | None = None) -> np.ndarray:
    q, delta = ternarize(lin.weight, lin.granularity, lin.group_size)
    w = dequantize_weight(q, delta.half().float(), lin.group_size).numpy()
    return interleave_rows(w, permute_heads) if permute_heads else w


LINEAR_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}  # fmt: skip


def check_linears(model, tensors, permute: bool, want_type=GGMLQuantizationType.TQ2_0):
    cfg = model.config
    for i, block in enumerate(model.model.layers):
        for path, gname in LINEAR_NAMES.items():
            lin = block.get_submodule(path)
            heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}.get(gname)
            want = expected_linear(lin, heads if permute else None)
            t = tensors[f"blk.{i}.{gname}.weight"]
            got = deq(t)
            assert np.array_equal(got, want), f"blk.{i}.{gname}"
            if lin.in_features % 256 == 0:
                assert t.tensor_type == want_type, f"blk.{i}.{gname} is {t.tensor_type.name}"
            else:
                assert t.tensor_type == GGMLQuantizationType.Q4_0
            # the fp16 scale is the only loss against the fp32 absmean Δ
            q, delta = ternarize(lin.weight, lin.granularity, lin.group_size)
            ref = dequantize_weight(q, delta, lin.group_size).numpy()
            ref = interleave_rows(ref, heads) if (permute and heads) else ref
            assert np.allclose(got, ref, rtol=2.0**-11, atol=0)


def check_common_metadata(fields, cfg, arch, n_vocab):
    assert fields["general.architecture"] == arch
    assert fields[f"{arch}.block_count"] == cfg.num_hidden_layers
    assert fields[f"{arch}.embedding_length"] == cfg.hidden_size
    assert fields[f"{arch}.feed_forward_length"] == cfg.intermediate_size
    assert fields[f"{arch}.attention.head_count"] == cfg.num_attention_heads
    assert fields[f"{arch}.attention.head_count_kv"] == cfg.num_key_value_heads
    assert fields[f"{arch}.context_length"] == cfg.max_position_embeddings
    assert fields[f"{arch}.vocab_size"] == n_vocab
    assert fields[f"{arch}.rope.freq_base"] == pytest.approx(cfg.rope_parameters["rope_theta"])
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)


def check_tokenizer(fields, tok, n_vocab):
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == n_vocab
    vocab = tok.get_vocab()
    for text, i in vocab.items():
        assert tokens[i] == text
    added = tok.added_tokens_decoder
    for i in range(n_vocab):
        if i not in vocab.values():
            assert tokens[i] == f"[PAD{i}]" and types[i] == TokenType.UNUSED
        elif i in added:
            assert types[i] == (TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            assert types[i] == TokenType.NORMAL
    assert types[vocab["<custom>"]] == TokenType.USER_DEFINED
    want_merges = [" ".join(m) for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]
    assert len(want_merges) > 0 and fields["tokenizer.ggml.merges"] == want_merges
    assert fields["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert fields["tokenizer.ggml.padding_token_id"] == tok.pad_token_id


def test_qk_permutation_matches_explicit_loop_and_turns_neox_rope_into_interleaved_rope():
    rows, n_head = 24, 3
    w = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    assert np.array_equal(w[qk_permutation(rows, n_head)], interleave_rows(w, n_head))
    # HF rotates (x_i, x_{i+d/2}) pairs (rotate_half); llama.cpp's llama graph rotates (x_2i, x_2i+1).
    d, pos = rows // n_head, 5
    theta = pos * 10000.0 ** (-np.arange(d // 2) * 2 / d)
    x = np.random.default_rng(0).standard_normal(rows)
    hf = x.reshape(n_head, d).copy()
    a, b = hf[:, : d // 2].copy(), hf[:, d // 2 :].copy()
    hf[:, : d // 2], hf[:, d // 2 :] = (
        a * np.cos(theta) - b * np.sin(theta),
        b * np.cos(theta) + a * np.sin(theta),
    )
    y = x[qk_permutation(rows, n_head)].reshape(n_head, d // 2, 2)
    gg = np.stack(
        [
            y[..., 0] * np.cos(theta) - y[..., 1] * np.sin(theta),
            y[..., 1] * np.cos(theta) + y[..., 0] * np.sin(theta),
        ],
        axis=-1,
    )
    assert np.allclose(gg.reshape(rows), hf.reshape(rows)[qk_permutation(rows, n_head)])


@pytest.mark.parametrize("ttype", ["tq2_0", "tq1_0"])
def test_llama_without_subln_round_trips_exactly(tmp_path, tokenizer, ttype):
    # intermediate 288: gate/up (in 256) are ternary blocks, down (in 288) falls back to exact Q4_0
    cfg = LlamaConfig(
        intermediate_size=288,
        max_position_embeddings=512,
        rope_theta=50000.0,
        tie_word_embeddings=True,
        **SMALL,
    )
    model, d = make_dir(tmp_path, tokenizer, cfg)
    report = export_directory(d, tmp_path / "m.gguf", ttype=ttype, head="f16")
    fields, tensors = read(tmp_path / "m.gguf")
    check_common_metadata(fields, cfg, "llama", SMALL["vocab_size"])
    want = {"tq2_0": GGMLQuantizationType.TQ2_0, "tq1_0": GGMLQuantizationType.TQ1_0}[ttype]
    check_linears(model, tensors, permute=True, want_type=want)
    assert fields["general.file_type"] == {"tq2_0": 37, "tq1_0": 36}[ttype]
    assert fields["bitdistill.subln"] == "none"
    assert len(report.fallbacks) == cfg.num_hidden_layers  # the down projections
    emb = model.model.embed_tokens.weight.detach().numpy()
    assert np.array_equal(deq(tensors["token_embd.weight"]), emb.astype(np.float16).astype(np.float32))
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    for i, block in enumerate(model.model.layers):
        assert np.array_equal(
            deq1(tensors[f"blk.{i}.attn_norm.weight"]), block.input_layernorm.weight.detach().numpy()
        )
        assert np.array_equal(
            deq1(tensors[f"blk.{i}.ffn_norm.weight"]), block.post_attention_layernorm.weight.detach().numpy()
        )
    assert np.array_equal(deq1(tensors["output_norm.weight"]), model.model.norm.weight.detach().numpy())
    check_tokenizer(fields, tokenizer, SMALL["vocab_size"])
    assert "attn_sub_norm" not in " ".join(tensors)


def deq1(t) -> np.ndarray:
    return np.asarray(t.data, dtype=np.float32).reshape(-1)


def test_head_types_and_untied_output(tmp_path, tokenizer):
    cfg = LlamaConfig(intermediate_size=512, tie_word_embeddings=False, **SMALL)
    model, d = make_dir(tmp_path, tokenizer, cfg)
    export_directory(d, tmp_path / "m.gguf", head="q8_0")
    _, tensors = read(tmp_path / "m.gguf")
    head = model.lm_head.weight.detach().numpy()
    t = tensors["output.weight"]
    assert t.tensor_type == GGMLQuantizationType.Q8_0
    # Q8_0: 32-blocks, d = max|x| / 127 stored in fp16 (relative error 2^-11), codes |q| <= 127, so
    # |x - q·fp16(d)| <= d/2 + 127·d·2^-11
    err = np.abs(deq(t) - head).reshape(head.shape[0], -1, 32).max(-1)
    bound = np.abs(head).reshape(head.shape[0], -1, 32).max(-1) / 127 * (0.5 + 127 * 2**-11) + 1e-7
    assert (err <= bound).all()
    assert tensors["token_embd.weight"].tensor_type == GGMLQuantizationType.Q8_0


def test_llama_with_subln_exports_bitnet_arch(tmp_path, tokenizer):
    cfg = LlamaConfig(intermediate_size=512, tie_word_embeddings=True, **SMALL)
    model, d = make_dir(tmp_path, tokenizer, cfg, subln=True)
    export_directory(d, tmp_path / "m.gguf")
    fields, tensors = read(tmp_path / "m.gguf")
    check_common_metadata(fields, cfg, "bitnet", SMALL["vocab_size"])
    check_linears(model, tensors, permute=False)  # bitnet uses NEOX RoPE, as HF does: no permutation
    for i, block in enumerate(model.model.layers):
        sub_a = block.self_attn.o_proj.sub_norm.weight.detach().numpy()
        sub_f = block.mlp.down_proj.sub_norm.weight.detach().numpy()
        assert np.array_equal(deq1(tensors[f"blk.{i}.attn_sub_norm.weight"]), sub_a)
        assert np.array_equal(deq1(tensors[f"blk.{i}.ffn_sub_norm.weight"]), sub_f)
    assert "output.weight" not in tensors
    assert fields["bitdistill.subln"] == "o_down"


def test_qwen3_without_subln_has_qk_norms_and_head_dim(tmp_path, tokenizer):
    cfg = Qwen3Config(intermediate_size=512, head_dim=32, tie_word_embeddings=True, **SMALL)
    model, d = make_dir(tmp_path, tokenizer, cfg)
    export_directory(d, tmp_path / "m.gguf", ttype="tq1_0")
    fields, tensors = read(tmp_path / "m.gguf")
    check_common_metadata(fields, cfg, "qwen3", SMALL["vocab_size"])
    assert fields["qwen3.attention.key_length"] == fields["qwen3.attention.value_length"] == 32
    # q_proj is [128, 256] and o_proj [256, 128]: o falls back to Q4_0 (in 128 is not a 256 multiple)
    check_linears(model, tensors, permute=False, want_type=GGMLQuantizationType.TQ1_0)
    for i, block in enumerate(model.model.layers):
        assert np.array_equal(
            deq1(tensors[f"blk.{i}.attn_q_norm.weight"]), block.self_attn.q_norm.weight.detach().numpy()
        )
        assert np.array_equal(
            deq1(tensors[f"blk.{i}.attn_k_norm.weight"]), block.self_attn.k_norm.weight.detach().numpy()
        )


def test_qwen2_biases_are_written(tmp_path, tokenizer):
    cfg = Qwen2Config(intermediate_size=512, **SMALL)
    model, d = make_dir(tmp_path, tokenizer, cfg)
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.q_proj.bias.normal_()
    save(model, d, tokenizer=tokenizer)
    export_directory(d, tmp_path / "m.gguf")
    fields, tensors = read(tmp_path / "m.gguf")
    assert fields["general.architecture"] == "qwen2"
    check_linears(model, tensors, permute=False)
    for i, block in enumerate(model.model.layers):
        for proj in ("q", "k", "v"):
            bias = getattr(block.self_attn, f"{proj}_proj").bias.detach().numpy()
            assert np.array_equal(deq1(tensors[f"blk.{i}.attn_{proj}.bias"]), bias)


def test_channel_granularity_is_exact_and_group_below_block_is_refused(tmp_path, tokenizer):
    cfg = LlamaConfig(intermediate_size=512, **SMALL)
    model, d = make_dir(tmp_path, tokenizer, cfg, granularity="channel", name="ch")
    export_directory(d, tmp_path / "ch.gguf")
    check_linears(model, read(tmp_path / "ch.gguf")[1], permute=True)

    model, d = make_dir(tmp_path, tokenizer, cfg, granularity="group", group_size=128, name="g")
    with pytest.raises(
        BitDistillError, match="scale changes inside TQ2_0's 256-weight blocks.*--allow-fallback"
    ):
        export_directory(d, tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists() and not list(tmp_path.glob(".g.gguf.tmp-*"))
    export_directory(d, tmp_path / "g.gguf", allow_fallback=True)
    tensors = read(tmp_path / "g.gguf")[1]
    for i, block in enumerate(model.model.layers):
        for path, gname in LINEAR_NAMES.items():
            lin = block.get_submodule(path)
            heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}.get(gname)
            assert tensors[f"blk.{i}.{gname}.weight"].tensor_type == GGMLQuantizationType.Q4_0
            assert np.array_equal(deq(tensors[f"blk.{i}.{gname}.weight"]), expected_linear(lin, heads))

    model, d = make_dir(tmp_path, tokenizer, cfg, granularity="group", group_size=256, name="g256")
    export_directory(d, tmp_path / "g256.gguf")  # one scale per 256-block: representable as TQ2_0
    check_linears(model, read(tmp_path / "g256.gguf")[1], permute=True)


@pytest.mark.parametrize(
    "config, kwargs, message",
    [
        (Qwen3Config(intermediate_size=512, head_dim=64, tie_word_embeddings=True, **SMALL), {}, "q/k norms"),
        (Qwen2Config(intermediate_size=512, tie_word_embeddings=True, **SMALL), {}, "biases"),
        (LlamaConfig(intermediate_size=512, tie_word_embeddings=False, **SMALL), {}, "not tied"),
        (LlamaConfig(intermediate_size=512, head_dim=32, **SMALL), {}, "square q/o"),
    ],
    ids=["qwen3-qknorm", "qwen2-bias", "untied-head", "head-dim"],
)
def test_subln_models_outside_the_bitnet_graph_are_refused(tmp_path, tokenizer, config, kwargs, message):
    _, d = make_dir(tmp_path, tokenizer, config, subln=True)
    with pytest.raises(BitDistillError, match=rf"cannot be represented in llama.cpp's `bitnet`.*{message}"):
        export_directory(d, tmp_path / "m.gguf", **kwargs)
    assert not (tmp_path / "m.gguf").exists()


def test_gemma3_and_unconverted_models_are_refused(tmp_path, tokenizer):
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(intermediate_size=512, head_dim=64, sliding_window=8, **SMALL)
    _, d = make_dir(tmp_path, tokenizer, cfg, subln=False)
    with pytest.raises(BitDistillError, match="gemma3"):
        export_directory(d, tmp_path / "m.gguf")
    torch.manual_seed(0)
    fp = AutoModelForCausalLM.from_config(LlamaConfig(intermediate_size=512, **SMALL))
    save(fp, tmp_path / "fp", tokenizer=tokenizer)
    with pytest.raises(BitDistillError, match="bitdistill convert"):
        export_directory(tmp_path / "fp", tmp_path / "m.gguf")


def test_cli_exports_and_reports_errors(tmp_path, tokenizer, capsys):
    _, d = make_dir(tmp_path, tokenizer, LlamaConfig(intermediate_size=512, **SMALL))
    assert (
        cli_main(["export", str(d), "--format", "gguf", "--out", str(tmp_path / "x.gguf"), "--type", "tq1_0"])
        == 0
    )
    out = capsys.readouterr().out
    assert "architecture  llama" in out and "TQ1_0" in out and (tmp_path / "x.gguf").is_file()
    (d / "tokenizer.json").unlink()
    assert cli_main(["export", str(d), "--out", str(tmp_path / "y.gguf")]) == 2
    assert "tokenizer.json: missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    "family, subln",
    [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", False)],
    ids=["llama", "bitnet", "qwen2", "qwen3"],
)
def test_llama_cpp_runs_the_export_when_installed(tmp_path, tokenizer, family, subln):
    """Optional: stock llama.cpp (llama-cpp-python) loads the file and computes the same logits as the
    PyTorch model with fp activations, within the error of its block-quantized activations."""
    llama_cpp = pytest.importorskip("llama_cpp")
    make = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    extra = {"head_dim": 32} if family == "qwen3" else {}
    cfg = make(intermediate_size=512, tie_word_embeddings=True, **extra, **SMALL)
    model, d = make_dir(tmp_path, tokenizer, cfg, subln=subln)
    if family == "qwen2":
        with torch.no_grad():
            for block in model.model.layers:
                block.self_attn.q_proj.bias.normal_()
        save(model, d, tokenizer=tokenizer)
    export_directory(d, tmp_path / "m.gguf", head="f16")
    ids = tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    for m in model.modules():
        if hasattr(m, "quantize_activations"):
            m.quantize_activations = False
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    rel = np.abs(got - want).max() / np.abs(want).max()
    print(f"llama.cpp vs torch: max relative logit difference {rel:.2e}")
    assert rel < 0.05, rel


@pytest.mark.parametrize("bits", ["2", "1.58"])
def test_packed_directory_exports_the_same_ternary_tensors(tmp_path, tokenizer, bits):
    from bitdistill.runtime.pack_writer import pack_model

    cfg = LlamaConfig(intermediate_size=512, tie_word_embeddings=True, **SMALL)
    model, d = make_dir(tmp_path, tokenizer, cfg, granularity="channel")
    pack_model(model, tmp_path / "packed", bits=bits, head_dtype="fp16", tokenizer=tokenizer)
    export_directory(d, tmp_path / "a.gguf", head="f16")
    export_directory(tmp_path / "packed", tmp_path / "b.gguf", head="f16")
    fa, ta = read(tmp_path / "a.gguf")
    fb, tb = read(tmp_path / "b.gguf")
    assert sorted(ta) == sorted(tb)
    for name, t in ta.items():
        assert t.tensor_type == tb[name].tensor_type, name
        assert np.array_equal(np.asarray(t.data), np.asarray(tb[name].data)), name
    for key in (
        "llama.block_count",
        "llama.rope.freq_base",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
    ):
        assert fa[key] == fb[key]


def test_bench_helpers_export_a_model_without_tokenizer(tmp_path):
    from bitdistill.export import llamacpp

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        LlamaConfig(intermediate_size=512, tie_word_embeddings=True, **SMALL)
    )
    to_bitnet(model, subln=False)
    gguf = llamacpp.prepare_gguf(model.eval(), tmp_path)
    fields, tensors = read(gguf)
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == SMALL["vocab_size"] and tokens[257] == "<|endoftext|>" and tokens[300] == "[PAD300]"
    check_linears(model, tensors, permute=True)
    if llamacpp.available():
        r = llamacpp.bench_worker(gguf, threads=1, prefill=8, decode=4, runs=1)
        assert len(r["decode"]) == len(r["prefill"]) == 1 and r["decode"][0] > 0 and r["peak_rss_mib"] > 0


def test_packed_q4_head_exports_its_4bit_values(tmp_path, tokenizer):
    """A model packed with the runtime's q4 head exports the embedding it holds: each value within one Q4_0
    step d = max|w| / 8 of its 64-column group (half a step from rounding, a whole one where -max clips to
    q = 7) of the trained float embedding; the linears are exact."""
    from bitdistill.runtime.pack_writer import pack_model

    cfg = LlamaConfig(intermediate_size=512, tie_word_embeddings=True, **SMALL)
    model, d = make_dir(tmp_path, tokenizer, cfg)
    pack_model(model, tmp_path / "packed", bits="2", head_dtype="q4", tokenizer=tokenizer)
    export_directory(tmp_path / "packed", tmp_path / "q4.gguf", head="f16")
    export_directory(d, tmp_path / "ref.gguf", head="f16")
    _, tq = read(tmp_path / "q4.gguf")
    _, tr = read(tmp_path / "ref.gguf")
    emb = model.model.embed_tokens.weight.detach().numpy()
    got = deq(tq["token_embd.weight"])
    assert got.shape == emb.shape
    groups = np.abs(emb).reshape(emb.shape[0], -1, 64).max(axis=2, keepdims=True)
    bound = np.broadcast_to(groups / 8, (*groups.shape[:2], 64)).reshape(emb.shape) * 1.01 + 1e-3
    assert np.all(np.abs(got - emb) <= bound)
    assert not np.array_equal(got, emb.astype(np.float16).astype(np.float32))  # it is the 4-bit copy
    for name, t in tr.items():
        if name != "token_embd.weight":
            assert np.array_equal(np.asarray(t.data), np.asarray(tq[name].data)), name

