"""What each route does, over the one ServedModel, Worker and Metrics of an app.

Handlers validate and encode on the event loop, then hand the engine work to the single Worker. A request
that does not fit in the queue gets 503 + Retry-After; a client that disconnects cancels its job (waiting
jobs are skipped, a running generation stops at the next token).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..runtime.sampling import SamplingParams
from .errors import APIError
from .limits import Limits
from .metrics import Metrics
from .model import ServedModel
from .schemas import ClassifyRequest, Sampling
from .sse import DONE, events, usage
from .worker import Job, QueueFull, Worker


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def run_job(worker: Worker, metrics: Metrics, fn, **grouping) -> Job:
    """Enqueue `fn` (with Worker.submit's `group`/`size`/`payload`) and return its job; 503 with Retry-After
    when the queue is full."""
    try:
        return worker.submit(fn, **grouping)
    except QueueFull as full:
        metrics.rejected.inc()
        raise APIError(503, f"the server is busy ({worker.waiting} requests queued); retry after "
                       f"{full.retry_after} s", type="server_busy", code="queue_full",
                       headers={"Retry-After": str(full.retry_after)}) from None  # fmt: skip


async def wait(job: Job, request: Request):
    """The job's result; if the client disconnects first, cancel the job and give up on it."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if job.future not in done:
            job.cancel()
            job.future.cancel()
            raise ClientGone
        return job.future.result()
    finally:
        watcher.cancel()


@dataclass
class Handlers:
    model: ServedModel
    worker: Worker
    metrics: Metrics
    limits: Limits

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.model.name:
            raise APIError(404, f"model {requested!r} is not served here; this server serves {self.model.name!r} "
                           "(GET /v1/models)", param="model", code="model_not_found")  # fmt: skip

    def _run_all(self, body: Sampling, prompts: list[list[int]], budgets: list[int], j: Job, on_text=None,
                 on_finish=None) -> list:  # fmt: skip
        """Generate for each prompt in turn on the worker (stops early if the client left)."""
        params = SamplingParams(body.temperature, body.top_k, body.top_p, body.seed)
        done = []
        for i, (ids, max_new) in enumerate(zip(prompts, budgets, strict=True)):
            if j.cancelled:
                break
            text_i = None if on_text is None else (lambda t, i=i: on_text(i, t))
            g = self.model.generate(j, ids, max_new, params, body.stops, on_text=text_i, on_token=self.metrics.token)
            done.append(g)
            if on_finish is not None:
                on_finish(i, g.finish_reason)
        return done

    async def generate(self, request: Request, body: Sampling, prompts: list[list[int]], chat: bool) -> Response:
        """Generate for each prompt (one for chat; a list for completions), one after another in one job:
        choice i answers prompt i, as if each had been sent alone with the same parameters and seed."""
        self.check_model(body.model)
        lim = self.limits
        budgets = [self.model.budget(len(ids), body.max_tokens, lim.default_max_tokens, lim.max_tokens)
                   for ids in prompts]  # fmt: skip
        self.metrics.prompt_tokens.inc(sum(map(len, prompts)))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.model.name}  # fmt: skip
        if not body.stream:
            job = run_job(self.worker, self.metrics, lambda j: self._run_all(body, prompts, budgets, j))
            gens = await wait(job, request)
            choices = [{"index": i, **({"message": {"role": "assistant", "content": g.text}} if chat
                                        else {"text": g.text}), "logprobs": None, "finish_reason": g.finish_reason}
                       for i, g in enumerate(gens)]  # fmt: skip
            return JSONResponse({**head, "choices": choices, "usage": usage(gens)})
        pieces: asyncio.Queue = asyncio.Queue()

        def job_fn(j: Job):
            try:
                return self._run_all(body, prompts, budgets, j,
                                     on_text=lambda i, t: j.call_in_loop(pieces.put_nowait, (i, t, None)),
                                     on_finish=lambda i, f: j.call_in_loop(pieces.put_nowait, (i, None, f)))  # fmt: skip
            finally:
                j.call_in_loop(pieces.put_nowait, DONE)

        job = run_job(self.worker, self.metrics, job_fn)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            events(job, pieces, head, chat, include_usage, len(prompts)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    async def classify(self, request: Request, body: ClassifyRequest) -> dict:
        self.check_model(body.model)
        model, metrics, most = self.model, self.metrics, self.limits.max_classify_inputs
        texts = [body.input] if isinstance(body.input, str) else body.input
        pairs = [body.text_pair] if isinstance(body.text_pair, str) else body.text_pair
        if not 1 <= len(texts) <= most:
            raise APIError(400, f"\"input\" has {len(texts)} texts; send 1 to {most} (--max-classify-inputs)",
                           param="input", code="invalid_value")  # fmt: skip
        task = model.classify_task(body.labels, body.template)
        prompts = model.prompts(task, texts, pairs)
        words = list(task.label_words)

        def score_run(jobs: list[Job]):
            metrics.classify_batch.observe(sum(j.size for j in jobs))
            return model.classify_jobs(jobs, words)

        # grouped by label words: consecutive classify requests behind this one are scored in the same call
        job = run_job(self.worker, metrics, score_run, group=("classify", tuple(words)), size=len(prompts),
                      payload=prompts)  # fmt: skip
        scores = await wait(job, request)
        metrics.classified.inc(len(prompts))
        labels = [w.strip() for w in words]
        data = [{"index": i, "label": labels[int(s.argmax())], "label_index": int(s.argmax()),
                 "scores": [float(x) for x in s]} for i, s in enumerate(scores)]  # fmt: skip
        return {"object": "list", "model": model.name, "labels": labels, "data": data}
