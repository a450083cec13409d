"""The FastAPI app: OpenAI-compatible routes, /v1/classify, /health and /metrics over one ServedModel.

Handlers validate and encode on the event loop, then hand the engine work to the single Worker. A request
that does not fit in the queue gets 503 + Retry-After; a client that disconnects cancels its job (waiting
jobs are skipped, a running generation stops at the next token). Nothing is kept between requests, so a
killed server restarts from the packed directory alone.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..runtime.sampling import SamplingParams
from . import errors
from .errors import APIError
from .guards import ApiKey, BodyLimit
from .metrics import CountRequests, Metrics
from .model import ServedModel
from .schemas import ChatRequest, ClassifyRequest, CompletionRequest, Sampling
from .sse import DONE, events, usage
from .worker import Job, QueueFull, Worker


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


@dataclass(frozen=True)
class Limits:
    queue_size: int = 64  # jobs waiting for the engine (the running one not counted)
    max_body_bytes: int = 1 << 20
    max_tokens: int = 4096  # the most a request may ask for (also bounded by the model's context)
    default_max_tokens: int = 256  # when a request gives no max_tokens
    max_classify_inputs: int = 256
    max_prompts: int = 16  # prompts in one /v1/completions request (generated one after another)

    def check(self) -> None:
        from ..errors import BitDistillError

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


def create_app(packed_dir, *, threads: int | None = None, api_key: str | None = None, name: str | None = None,
               limits: Limits | None = None, classify=None) -> FastAPI:  # fmt: skip
    """An ASGI app serving the packed model in `packed_dir` (loaded now, once). Run it with uvicorn."""
    limits = limits or Limits()
    limits.check()
    model = ServedModel(packed_dir, threads=threads, name=name, classify=classify)
    # each refers to the other: the metrics read the queue, the worker counts cancellations
    metrics = Metrics(lambda: worker.waiting, lambda: int(worker.busy))
    worker = Worker(limits.queue_size, on_cancelled=metrics.cancelled.inc, max_group=limits.max_classify_inputs)
    worker.start()  # now, not in the lifespan: a server run without lifespan events must still work

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        worker.stop()

    app = FastAPI(
        title="bitdistill serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.model, app.state.worker, app.state.metrics = model, worker, metrics
    errors.install(app)

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it, metrics count it

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != model.name:
            raise APIError(404, f"model {requested!r} is not served here; this server serves {model.name!r} "
                           "(GET /v1/models)", param="model", code="model_not_found")  # fmt: skip

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model.name, "queue_length": worker.waiting}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0,
                                            "owned_by": "bitdistill"}]}  # fmt: skip

    async def generate(request: Request, body: Sampling, prompts: list[list[int]], chat: bool) -> Response:
        """Generate for each prompt (one for chat; a list for completions), one after another in one job:
        choice i answers prompt i, as if each had been sent alone with the same parameters and seed."""
        check_model(body.model)
        budgets = [model.budget(len(ids), body.max_tokens, limits.default_max_tokens, limits.max_tokens)
                   for ids in prompts]  # fmt: skip
        params = SamplingParams(body.temperature, body.top_k, body.top_p, body.seed)
        metrics.prompt_tokens.inc(sum(map(len, prompts)))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model.name}  # fmt: skip

        def run_all(j: Job, on_text=None, on_finish=None) -> list:
            done = []
            for i, (ids, max_new) in enumerate(zip(prompts, budgets, strict=True)):
                if j.cancelled:
                    break
                text_i = None if on_text is None else (lambda t, i=i: on_text(i, t))
                g = model.generate(j, ids, max_new, params, body.stops, on_text=text_i, on_token=metrics.token)
                done.append(g)
                if on_finish is not None:
                    on_finish(i, g.finish_reason)
            return done

        if not body.stream:
            gens = await wait(run_job(worker, metrics, run_all), request)
            choices = [{"index": i, **({"message": {"role": "assistant", "content": g.text}} if chat
                                        else {"text": g.text}), "logprobs": None, "finish_reason": g.finish_reason}
                       for i, g in enumerate(gens)]  # fmt: skip
            return JSONResponse({**head, "choices": choices, "usage": usage(gens)})
        pieces: asyncio.Queue = asyncio.Queue()

        def job_fn(j: Job):
            try:
                return run_all(j, on_text=lambda i, t: j.call_in_loop(pieces.put_nowait, (i, t, None)),
                               on_finish=lambda i, f: j.call_in_loop(pieces.put_nowait, (i, None, f)))  # fmt: skip
            finally:
                j.call_in_loop(pieces.put_nowait, DONE)

        job = run_job(worker, metrics, job_fn)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            events(job, pieces, head, chat, include_usage, len(prompts)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return await generate(request, body, model.completion_prompts(body.prompt, limits.max_prompts), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatRequest) -> Response:
        messages = [m.for_template() for m in body.messages]
        return await generate(request, body, [model.chat_ids(messages)], chat=True)

    @app.post("/v1/classify")
    async def classify(request: Request, body: ClassifyRequest) -> dict:
        check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        pairs = [body.text_pair] if isinstance(body.text_pair, str) else body.text_pair
        if not 1 <= len(texts) <= limits.max_classify_inputs:
            raise APIError(400, f"\"input\" has {len(texts)} texts; send 1 to {limits.max_classify_inputs} "
                           "(--max-classify-inputs)", param="input", code="invalid_value")  # fmt: skip
        task = model.classify_task(body.labels, body.template)
        prompts = model.prompts(task, texts, pairs)
        words = list(task.label_words)

        def score_run(jobs: list[Job]):
            metrics.classify_batch.observe(sum(j.size for j in jobs))
            return model.classify_jobs(jobs, words)

        # grouped by label words: consecutive classify requests behind this one are scored in the same call
        job = run_job(worker, metrics, score_run, group=("classify", tuple(words)), size=len(prompts),
                      payload=prompts)  # fmt: skip
        scores = await wait(job, request)
        metrics.classified.inc(len(prompts))
        labels = [w.strip() for w in words]
        data = [{"index": i, "label": labels[int(s.argmax())], "label_index": int(s.argmax()),
                 "scores": [float(x) for x in s]} for i, s in enumerate(scores)]  # fmt: skip
        return {"object": "list", "model": model.name, "labels": labels, "data": data}

    # the last added runs first: requests are counted (401s and 413s too), then the key is checked, and only
    # then is a body read
    app.add_middleware(BodyLimit, max_body=limits.max_body_bytes)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)
    app.add_middleware(CountRequests, metrics=metrics, routes=KNOWN)
    return app


KNOWN = {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/classify"}
