"""Write a Hugging Face byte-level BPE tokenizer as GGUF `gpt2` vocabulary (what llama.cpp tokenizes with).

Token strings, types and merges follow llama.cpp's convert_hf_to_gguf.py: ids the tokenizer lacks become
`[PAD{i}]` (UNUSED), special added tokens are CONTROL, other added tokens USER_DEFINED. llama.cpp picks its
pre-tokenizer regex by name (`tokenizer.ggml.pre`); we derive the name from the tokenizer.json
pre-tokenizer, and refuse (naming the override) when it is not one we can recognise.
"""

from __future__ import annotations

import json
from pathlib import Path

from gguf import GGUFWriter, SpecialVocab, TokenType

from ..errors import BitDistillError

LLAMA3_DIGITS = r"\p{N}{1,3}"
QWEN2_WORDS = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"


def _flatten(pre: dict | None) -> list[dict]:
    if pre is None:
        return []
    if pre.get("type") == "Sequence":
        return [p for sub in pre.get("pretokenizers", []) for p in _flatten(sub)]
    return [pre]


def detect_pre(tokenizer_json: dict) -> str | None:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json, or None when unrecognised."""
    parts = _flatten(tokenizer_json.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    if kinds and kinds[-1] == "ByteLevel" and parts[-1].get("add_prefix_space"):
        return None
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and parts[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex", "")
        if LLAMA3_DIGITS in regex:
            return "llama-bpe"
        if QWEN2_WORDS in regex:
            return "qwen2"
    return None


def add_tokenizer(writer: GGUFWriter, tokenizer_dir: Path, n_vocab: int, pre: str | None = None) -> dict:
    """Add tokenizer.ggml.* keys for the tokenizer saved in `tokenizer_dir`; return a summary dict."""
    from ..model.io import load_tokenizer

    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise BitDistillError(
            f"{path}: missing. GGUF needs the tokenizer: save the model with its tokenizer "
            "(bitdistill.save(model, dir, tokenizer=tok); `bitdistill convert` does this)"
        )
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BitDistillError(f"{path}: not valid JSON ({err}); re-save the tokenizer") from None
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise BitDistillError(
            f"{path}: a {model.get('type')} tokenizer{' with byte_fallback' if model.get('byte_fallback') else ''}; "
            "the GGUF exporter writes byte-level BPE (GPT-2 style: Llama-3, SmolLM, Qwen) tokenizers only"
        )
    pre = pre or detect_pre(tj)
    if pre is None:
        raise BitDistillError(
            f"{path}: unrecognised pre-tokenizer {json.dumps(tj.get('pre_tokenizer'))[:200]}; pass "
            "--tokenizer-pre NAME with llama.cpp's name for it (e.g. gpt-2, smollm, llama-bpe, qwen2)"
        )
    tok = load_tokenizer(tokenizer_dir)
    vocab = tok.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise BitDistillError(
            f"{path}: token id {max(vocab.values())} does not fit the model's {n_vocab}-row embedding; the "
            "tokenizer belongs to another model"
        )
    reverse = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=n_vocab)
    # Whether BOS/EOS are added is what the HF tokenizer actually does, not a config guess.
    probe = tok("a")["input_ids"]
    special.add_special_token["bos"] = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
    special.add_special_token["eos"] = tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id]
    if "pad" not in special.special_token_ids and tok.pad_token_id is not None:
        special.special_token_ids["pad"] = tok.pad_token_id
    special.add_to_gguf(writer, quiet=True)
    return {"pre": pre, "tokens": len(tokens), "merges": len(special.merges), **special.special_token_ids}
