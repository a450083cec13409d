"""A tiny packed model with a chat template, and a real uvicorn server for it on a free loopback port.

Shared by the serving tests. The model is a random 2-layer Llama over a word-level vocabulary ("w0".."w123"),
built offline; its context is long (CTX) so that a cancelled generation has thousands of tokens left to stop.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch
import uvicorn
from transformers import AutoModelForCausalLM, LlamaConfig

from tiny_models import tiny_tokenizer

CTX = 8192
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {{ eos_token }} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


def build_packed(root: Path, chat: bool = True, seed: int = 0, nan_head: bool = False) -> Path:
    """A BitNet-converted tiny Llama packed with fp32 head (so tests compare against exact references);
    `nan_head` puts a NaN in the LM head (the runtime refuses to sample from NaN logits)."""
    from bitdistill.model import to_bitnet
    from bitdistill.model.io import save
    from bitdistill.runtime.pack_writer import pack_model

    tok = tiny_tokenizer(128)
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CTX,
                      bos_token_id=2, eos_token_id=3, pad_token_id=1)  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).float()
    to_bitnet(model, subln="o_down")
    if nan_head:
        model.config.tie_word_embeddings = False
        with torch.no_grad():
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone())
            model.lm_head.weight[5, 3] = float("nan")
    save(model, root / "bitnet", tokenizer=tok)
    name = "packed_nan" if nan_head else "packed" if chat else "packed_nochat"
    return pack_model(model, root / name, head_dtype="fp32", tokenizer=tok)


class Server:
    """`app` served by uvicorn in a thread, on a socket bound before the thread starts (no port races)."""

    def __init__(self, app) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
