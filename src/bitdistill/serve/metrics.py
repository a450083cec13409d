"""Prometheus metrics, one registry per app (two servers in one process, as in the tests, never mix).

Counters are what Prometheus expects (rates come from `rate()`); the tokens-per-second gauge over the last
window is there for people reading /metrics by eye, as the issue asked.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

WINDOW_S = 10.0


class _Rate:
    """Events per second over the last WINDOW_S seconds (thread-safe: the worker adds, /metrics reads)."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._events.append((time.monotonic(), n))
            self._prune()  # also here: a server nobody scrapes must not grow this without bound

    def _prune(self) -> None:
        cutoff = time.monotonic() - WINDOW_S
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()

    def value(self) -> float:
        with self._lock:
            self._prune()
            return sum(n for _, n in self._events) / WINDOW_S


class Metrics:
    def __init__(self, queue_length, busy) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("bitdistill_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("bitdistill_request_seconds", "request latency (to the last byte)", ["route"],
                                 registry=r)  # fmt: skip
        self.prompt_tokens = Counter("bitdistill_prompt_tokens", "prompt tokens processed", registry=r)
        self.generated_tokens = Counter("bitdistill_generated_tokens", "tokens generated", registry=r)
        self.classified = Counter("bitdistill_classified_inputs", "texts classified", registry=r)
        self.cancelled = Counter("bitdistill_cancelled", "jobs stopped or skipped because the client left",
                                 registry=r)  # fmt: skip
        self.classify_batch = Histogram("bitdistill_classify_batch_inputs", "texts scored per engine call "
                                        "(consecutive classify requests share one)", registry=r,
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))  # fmt: skip
        self.rejected = Counter("bitdistill_rejected", "requests refused with 503 (queue full)", registry=r)
        self._rate = _Rate()
        Gauge("bitdistill_tokens_per_second", f"tokens generated per second over the last {WINDOW_S:.0f} s",
              registry=r).set_function(self._rate.value)  # fmt: skip
        Gauge("bitdistill_queue_length", "jobs waiting for the engine", registry=r).set_function(queue_length)
        Gauge("bitdistill_engine_busy", "1 while the engine runs a job", registry=r).set_function(busy)

    def token(self) -> None:
        self.generated_tokens.inc()
        self._rate.add(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware: request count by route and status, and latency to the last byte (streams included).
    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which would sit between a streaming response and
    the disconnect notice that cancels it."""

    def __init__(self, app, metrics: Metrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"
        t0, status = time.perf_counter(), 0

        async def counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.requests.labels(route, str(status or 499)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
