"""The FastAPI app: OpenAI-compatible routes, /v1/classify, /health and /metrics over one ServedModel.

The routes delegate to Handlers (handlers.py); this module wires the model, the Worker, the metrics and the
middleware together. Nothing is kept between requests, so a killed server restarts from the packed
directory alone.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from . import errors
from .guards import ApiKey, BodyLimit
from .handlers import ClientGone, Handlers
from .limits import Limits
from .metrics import CountRequests, Metrics
from .model import ServedModel
from .schemas import ChatRequest, ClassifyRequest, CompletionRequest
from .worker import Worker

__all__ = ["KNOWN", "Limits", "create_app"]


def create_app(packed_dir, *, threads: int | None = None, api_key: str | None = None, name: str | None = None,
               limits: Limits | None = None, classify=None, kv_dtype: str = "fp32") -> FastAPI:  # fmt: skip
    """An ASGI app serving the packed model in `packed_dir` (loaded now, once). Run it with uvicorn.
    kv_dtype: the engine's KV cache, fp32 (exact) or fp16 (see runtime.engine.load)."""
    limits = limits or Limits()
    limits.check()
    model = ServedModel(packed_dir, threads=threads, name=name, classify=classify, kv_dtype=kv_dtype)
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
    _routes(app, Handlers(model, worker, metrics, limits))
    # the last added runs first: requests are counted (401s and 413s too), then the key is checked, and only
    # then is a body read
    app.add_middleware(BodyLimit, max_body=limits.max_body_bytes)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)
    app.add_middleware(CountRequests, metrics=metrics, routes=KNOWN)
    return app


def _routes(app: FastAPI, h: Handlers) -> None:
    model, worker, metrics = h.model, h.worker, h.metrics

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it, metrics count it

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

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return await h.generate(request, body, model.completion_prompts(body.prompt, h.limits.max_prompts), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatRequest) -> Response:
        messages = [m.for_template() for m in body.messages]
        return await h.generate(request, body, [model.chat_ids(messages)], chat=True)

    @app.post("/v1/classify")
    async def classify(request: Request, body: ClassifyRequest) -> dict:
        return await h.classify(request, body)


KNOWN = {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/classify"}
