"""Request bodies, validated strictly: unknown fields and wrong JSON types are refused with a 400 naming the
field (a typo such as `max_token` must not silently fall back to a default). Ranges that depend on the
loaded model (context, label words) are checked by the handlers.

Only the OpenAI parameters this server implements are accepted. A few it does not implement are accepted
at their neutral value, because SDKs and frameworks send them routinely: `n` (must be 1), `user` (ignored),
`presence_penalty` / `frequency_penalty` (must be 0) and `logit_bias` (must be empty).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOPS = 4  # as OpenAI's API


def _encodable(text: str) -> str:
    """JSON may carry lone UTF-16 surrogates ("\\ud800"); no tokenizer can encode them, so refuse them here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"the text holds an unpaired surrogate {text[err.start]!r} at character {err.start}; "
                         "send valid Unicode") from None  # fmt: skip
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(0, ge=0)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0:
            raise ValueError("penalties are not supported by this server; send 0 or leave it out")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict | None) -> dict | None:
        if v:
            raise ValueError("logit_bias is not supported by this server; send {} or leave it out")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [] if v is None else [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    @property
    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(Sampling):
    # OpenAI's four forms: a string, strings, token ids, lists of token ids (each list non-empty)
    prompt: Text | Annotated[list[Text], Field(min_length=1)] | Annotated[list[int], Field(min_length=1)] | Annotated[
        list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: Text | None = None

    def for_template(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text, **({"name": self.name} if self.name is not None else {})}


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None  # the newer name of max_tokens in OpenAI's chat API

    @model_validator(mode="after")
    def _one_budget(self) -> ChatRequest:
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None:
                raise ValueError("send max_tokens or max_completion_tokens, not both")
            self.max_tokens = self.max_completion_tokens
        return self


class ClassifyRequest(Strict):
    model: str | None = None
    input: Text | list[Text]
    text_pair: Text | list[Text] | None = None
    labels: list[Text] | None = Field(None, min_length=2)
    template: Text | None = None
