"""The tokenizer's chat template, rendered as `transformers.apply_chat_template` renders it, without torch.

Packed directories keep the tokenizer files `save_pretrained` wrote: the template is in chat_template.jinja
(transformers >= 4.43) or under "chat_template" in tokenizer_config.json (older saves; possibly a list of
named templates). Rendering goes through transformers' own `render_jinja_template` (the sandboxed Jinja
environment every HF template is written for); loading a full `AutoTokenizer` instead would import torch
into the server for nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BitDistillError

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class ChatTemplate:
    def __init__(self, template: str, special_tokens: dict[str, str]) -> None:
        self.template = template
        self.special_tokens = special_tokens

    def render(self, messages: list[dict]) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, _ = render_jinja_template(
                conversations=[messages], chat_template=self.template, add_generation_prompt=True,
                **self.special_tokens,
            )  # fmt: skip
        except Exception as err:  # noqa: BLE001 - templates raise (raise_exception) on chats they refuse
            raise BitDistillError(f"the model's chat template refused these messages: {err}") from None
        return rendered[0]


def _content(value: object) -> str | None:
    if isinstance(value, dict):  # AddedToken serialized as {"content": ..., ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_chat_template(packed_dir: str | Path) -> ChatTemplate | None:
    """The packed model's chat template, or None when its tokenizer has none."""
    d = Path(packed_dir)
    config: dict = {}
    cfg_file = d / "tokenizer_config.json"
    if cfg_file.is_file():
        try:
            config = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BitDistillError(f"{cfg_file}: unreadable ({err}); re-run bitdistill pack") from None
    template = None
    if (d / "chat_template.jinja").is_file():
        template = (d / "chat_template.jinja").read_text()
    else:
        found = config.get("chat_template")
        if isinstance(found, list):  # named templates: the "default" one is the chat template
            found = next(
                (t.get("template") for t in found if isinstance(t, dict) and t.get("name") == "default"), None
            )
        template = found if isinstance(found, str) else None
    if not template:
        return None
    special = {k: v for k in SPECIAL_KEYS if (v := _content(config.get(k))) is not None}
    return ChatTemplate(template, special)
