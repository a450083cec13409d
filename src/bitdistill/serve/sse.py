"""Streamed answers in OpenAI's server-sent-event format: one `data: {chunk}` event per text piece, a last
chunk with `finish_reason`, optionally a usage chunk, then `data: [DONE]`.

The worker thread puts text pieces (and DONE) on an asyncio queue; this generator turns them into events.
If Starlette cancels it because the client disconnected, the job is cancelled too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from ..errors import BitDistillError
from .errors import APIError, error_body
from .worker import Job

DONE = object()  # the worker's last item on a stream's queue


def usage(g) -> dict:
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens}  # fmt: skip


def _event(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def events(
    job: Job, pieces: asyncio.Queue, head: dict, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

    def chunk(text: str | None, finish: str | None = None, first: bool = False) -> str:
        if chat:  # the first chat chunk carries the role, the last an empty delta
            delta = (
                {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
            )
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _event({**head, "choices": [choice]})

    try:
        if chat:
            yield chunk(None, first=True)
        while (piece := await pieces.get()) is not DONE:
            yield chunk(piece)
        try:
            g = await job.future
        except Exception as err:  # noqa: BLE001 - the headers are sent: the error goes in the stream
            user = isinstance(err, APIError | BitDistillError)
            yield _event(error_body(str(err), "invalid_request_error" if user else "server_error"))
            yield _event("[DONE]")
            return
        yield chunk(None, g.finish_reason)
        if include_usage:
            yield _event({**head, "choices": [], "usage": usage(g)})
        yield _event("[DONE]")
    finally:  # also when Starlette cancels us because the client disconnected
        if not job.future.done():
            job.cancel()
