"""A tiny offline world for pipeline tests: a word-level tokenizer, a random Llama, SST-2-style files.

Nothing here touches the network: the tokenizer is trained on the fixture sentences with `tokenizers`,
the model is built from a config, and the data are generated deterministically.
"""

from __future__ import annotations

import random
from pathlib import Path

POS = ["good", "great", "fine", "lovely", "superb", "warm", "funny", "smart"]
NEG = ["bad", "awful", "dull", "boring", "weak", "cold", "stupid", "messy"]
NOUNS = ["film", "movie", "story", "cast", "plot", "script", "ending", "score"]


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        adj = rng.choice(POS if label else NEG)
        out.append((f"a {rng.choice(['very', 'quite', 'really'])} {adj} {rng.choice(NOUNS)} .", label))
    return out


def write_sst2(root: Path, n_train: int = 64, n_dev: int = 24) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", sentences(n_train, 1)), ("dev", sentences(n_dev, 2))):
        text = "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows)
        (root / f"{name}.tsv").write_text(text)
    return root


def write_corpus(path: Path, n: int = 200) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(s for s, _ in sentences(n, 3)) + "\n")
    return path


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = POS + NEG + NOUNS + "a very quite really . Sentence : Sentiment positive negative".split()
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [" ".join(words)] * 2, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[BOS]", "[EOS]"])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]"
    )


def build_model_dir(path: Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A random tiny Llama + tokenizer saved as a local Hugging Face directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_world(root: Path) -> dict[str, Path]:
    return {
        "model": build_model_dir(root / "base"),
        "data": write_sst2(root / "sst2"),
        "corpus": write_corpus(root / "corpus" / "text.txt"),
    }


TINY_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"


def write_tiny_recipe(tmp: Path, world: dict[str, Path], ablations: dict | None = None, **changes) -> Path:
    """configs/tiny-test.yaml pointed at `world`, every task stage 3 steps, output under tmp/run; `changes`
    are extra dotted-key overrides written with `__` for dots (train__steps=3). Returns the YAML file."""
    import yaml

    data = yaml.safe_load(TINY_RECIPE.read_text())
    data.update(model=str(world["model"]), output_dir=str(tmp / "run"), ablations=ablations or {})
    data["task"]["path"] = str(world["data"])
    data["continue_pretrain"]["corpus"]["sources"] = [str(world["corpus"])]
    for stage in ("teacher", "bitnet_sft", "distill"):
        data[stage]["train"] = {"steps": 3}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path

