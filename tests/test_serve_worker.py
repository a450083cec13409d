"""The engine worker's queue: first-in-first-out, and consecutive jobs of one group run as one call."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bitdistill.serve.worker import QueueFull, Worker


def run_jobs(specs, max_group=256, cancel=(), fail_group=None):
    """Block the worker on a first job, queue `specs` [(name, group, size)], release it, and return the runs
    the worker made (lists of names, in execution order) and each job's result or error."""
    runs: list[list[str]] = []
    gate = threading.Event()

    async def main():
        worker = Worker(max_waiting=64, max_group=max_group)
        worker.start()
        first = worker.submit(lambda j: gate.wait(5) and "first")
        while not worker.busy:
            await asyncio.sleep(0.001)
        jobs = {}
        for name, group, size in specs:
            if group is None:
                fn = lambda j, name=name: runs.append([name]) or f"{name}!"  # noqa: E731
            else:

                def fn(js):
                    names = [j.payload for j in js]
                    runs.append(names)
                    if js[0].group == fail_group:
                        raise ValueError("engine failed")
                    return [f"{n}!" for n in names]

            jobs[name] = worker.submit(fn, group=group, size=size, payload=name)
        for name in cancel:
            jobs[name].cancel()
        gate.set()
        assert await first.future == "first"
        out = {}
        for name, job in jobs.items():
            if name in cancel:
                continue
            try:
                out[name] = await asyncio.wait_for(job.future, 5)
            except ValueError as err:
                out[name] = str(err)
        worker.stop()
        return out

    return runs, asyncio.run(main())


def test_consecutive_jobs_of_a_group_run_together_in_arrival_order() -> None:
    specs = [("a", "g1", 2), ("b", "g1", 3), ("c", None, 1), ("d", "g1", 1), ("e", "g2", 1), ("f", "g2", 1),
             ("g", "g1", 1)]  # fmt: skip
    runs, out = run_jobs(specs)
    # c is never overtaken by d (same group as a, b): only consecutive runs merge
    assert runs == [["a", "b"], ["c"], ["d"], ["e", "f"], ["g"]]
    assert out == {name: f"{name}!" for name, _, _ in specs}


def test_a_run_stops_at_max_group_items() -> None:
    runs, _ = run_jobs([("a", "g", 2), ("b", "g", 2), ("c", "g", 1), ("d", "g", 2)], max_group=4)
    assert runs == [["a", "b"], ["c", "d"]]


def test_cancelled_jobs_are_left_out_of_their_run() -> None:
    runs, out = run_jobs([("a", "g", 1), ("b", "g", 1), ("c", "g", 1)], cancel=("b",))
    assert runs == [["a", "c"]] and out == {"a": "a!", "c": "c!"}


def test_an_error_in_a_run_reaches_every_job_of_it() -> None:
    runs, out = run_jobs([("a", "bad", 1), ("b", "bad", 1), ("c", "ok", 1)], fail_group="bad")
    assert runs == [["a", "b"], ["c"]]
    assert out == {"a": "engine failed", "b": "engine failed", "c": "c!"}


def test_a_full_queue_refuses_at_once() -> None:
    async def main():
        gate = threading.Event()
        worker = Worker(max_waiting=1)
        worker.start()
        worker.submit(lambda j: gate.wait(5))
        while not worker.busy:
            await asyncio.sleep(0.001)
        worker.submit(lambda j: None)
        with pytest.raises(QueueFull):
            worker.submit(lambda j: None)
        gate.set()
        worker.stop()

    asyncio.run(main())
