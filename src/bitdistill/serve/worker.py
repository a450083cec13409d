"""One worker thread in front of the engine, fed by a bounded first-in-first-out queue.

The native engine keeps one KV cache and is not thread-safe, so exactly one thread ever touches it; HTTP
handlers only enqueue jobs and await their futures. A full queue is refused at once (the handler answers 503
with Retry-After) instead of letting latency grow without bound. Each job carries a cancel flag that a
handler sets when its client disconnects: a job still waiting is skipped, a running one stops between tokens.

Jobs that can share one engine call (classification with the same label words) carry a `group` key: the
worker runs the job at the head of the queue together with the jobs *directly behind it* that have the same
key, up to `max_group` items, in one call. Only a consecutive run is taken, so no job ever overtakes one that
arrived before it: the order stays first-in-first-out, and a batch of many small requests costs the engine
what one request with all their texts costs.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any


class QueueFull(Exception):
    """The queue holds its maximum of waiting jobs; `retry_after` is a whole-second estimate of the wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


class Job:
    """`fn(job)` runs on the worker thread; its result or exception resolves `future` on the event loop.

    A grouped job (`group` not None) has `fn(jobs) -> results`, one result per job of the run it heads; it
    counts `size` items (texts) against the worker's `max_group`, and keeps what it works on in `payload`.
    """

    def __init__(self, fn: Callable[..., Any], loop: asyncio.AbstractEventLoop, group: Hashable | None = None,
                 size: int = 1, payload: Any = None) -> None:  # fmt: skip
        self.fn = fn
        self.loop = loop
        self.group = group
        self.size = size
        self.payload = payload
        self.future: asyncio.Future = loop.create_future()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the event loop (the only safe way to touch asyncio objects from the worker)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed (server shutting down): nobody is listening any more
            pass

    def _resolve(self, result: Any, error: BaseException | None) -> None:
        if self.future.done():  # the handler gave up (client gone) and cancelled the future
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


class Worker:
    def __init__(self, max_waiting: int, on_cancelled: Callable[[], None] | None = None, max_group: int = 256) -> None:
        self.max_waiting = max_waiting
        self.max_group = max_group
        self._jobs: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._running: Job | None = None
        self._mean_s = 0.0  # moving average of job durations, for Retry-After
        self._on_cancelled = on_cancelled  # counted here, once per job, whether it was skipped or stopped
        self._thread = threading.Thread(target=self._run, name="bitdistill-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            for job in [*self._jobs, self._running]:
                if job is not None:
                    job.cancel()  # a running generation stops at its next token
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return len(self._jobs)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def submit(self, fn: Callable[..., Any], group: Hashable | None = None, size: int = 1, payload: Any = None) -> Job:
        """Enqueue `fn` (from the event loop); raises QueueFull instead of waiting for room."""
        job = Job(fn, asyncio.get_running_loop(), group, size, payload)
        with self._cv:
            if len(self._jobs) >= self.max_waiting:
                ahead = len(self._jobs) + int(self.busy)
                raise QueueFull(max(1, math.ceil(self._mean_s * ahead)))
            self._jobs.append(job)
            self._cv.notify()
        return job

    def _take(self) -> list[Job]:
        """The head job and the consecutive jobs behind it that share its group (under the lock)."""
        run = [self._jobs.popleft()]
        size = run[0].size
        while (run[0].group is not None and self._jobs and self._jobs[0].group == run[0].group
               and size + self._jobs[0].size <= self.max_group):  # fmt: skip
            size += self._jobs[0].size
            run.append(self._jobs.popleft())
        return run

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                taken = self._take()
                self._running = taken[0]
            try:
                live = [j for j in taken if not j.cancelled]  # a client that left while waiting costs nothing
                if live:
                    self._execute(live)
                if self._on_cancelled is not None:
                    for job in taken:
                        if job.cancelled:
                            self._on_cancelled()
            finally:
                self._running = None

    def _execute(self, jobs: list[Job]) -> None:
        t0 = time.perf_counter()
        results: list[Any] = [None] * len(jobs)
        error = None
        try:
            if jobs[0].group is None:
                results = [jobs[0].fn(jobs[0])]
            else:
                results = list(jobs[0].fn(jobs))
        except Exception as err:  # noqa: BLE001 - handed to the awaiting handlers, which report it
            error = err
        dt = time.perf_counter() - t0
        self._mean_s = dt if self._mean_s == 0 else 0.8 * self._mean_s + 0.2 * dt
        for job, result in zip(jobs, results, strict=True):
            job.call_in_loop(job._resolve, result, error)
