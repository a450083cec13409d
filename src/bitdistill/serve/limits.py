"""The server's limits (queue, body, tokens, inputs per request), checked once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BitDistillError


@dataclass(frozen=True)
class Limits:
    queue_size: int = 64  # jobs waiting for the engine (the running one not counted)
    max_body_bytes: int = 1 << 20
    max_tokens: int = 4096  # the most a request may ask for (also bounded by the model's context)
    default_max_tokens: int = 256  # when a request gives no max_tokens
    max_classify_inputs: int = 256
    max_prompts: int = 16  # prompts in one /v1/completions request (generated one after another)

    def check(self) -> None:
        for name in (
            "queue_size",
            "max_body_bytes",
            "max_tokens",
            "default_max_tokens",
            "max_classify_inputs",
            "max_prompts",
        ):
            if getattr(self, name) < 1:
                raise BitDistillError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
