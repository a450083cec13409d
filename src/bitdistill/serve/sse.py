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


def usage(gens: list) -> dict:
    """OpenAI's usage object, summed over the generations of one request."""
    prompt, completion = sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _event(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def events(
    job: Job, pieces: asyncio.Queue, head: dict, chat: bool, include_usage: bool, n_prompts: int = 1
) -> AsyncIterator[str]:
    """`pieces` holds (choice index, text, None) per text piece and (index, None, finish_reason) when a
    choice ends; a choice's finish chunk is sent once the job has succeeded, so an error never follows it."""
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

    def chunk(index: int, text: str | None, finish: str | None = None, first: bool = False) -> str:
        if chat:  # the first chat chunk carries the role, the last an empty delta
            delta = (
                {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
            )
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _event({**head, "choices": [choice]})

    try:
        if chat:
            yield chunk(0, None, first=True)
        finishes: list[tuple[int, str]] = []
        while (piece := await pieces.get()) is not DONE:
            index, text, finish = piece
            if finish is None:
                yield chunk(index, text)
            elif index == n_prompts - 1:
                finishes.append((index, finish))  # the last choice's end waits for the job's outcome
            else:
                yield chunk(index, None, finish)
        try:
            gens = await job.future
        except Exception as err:  # noqa: BLE001 - the headers are sent: the error goes in the stream
            user = isinstance(err, APIError | BitDistillError)
            yield _event(error_body(str(err), "invalid_request_error" if user else "server_error"))
            yield _event("[DONE]")
            return
        for index, finish in finishes:
            yield chunk(index, None, finish)
        if include_usage:
            yield _event({**head, "choices": [], "usage": usage(gens)})
        yield _event("[DONE]")
    finally:  # also when Starlette cancels us because the client disconnected
        if not job.future.done():
            job.cancel()
