"""What a multi-process run (`accelerate launch`, torchrun) needs beyond the Accelerator itself.

- `accelerator_for`: the Accelerator of one stage, whose mixed precision may differ from the last stage's.
- `accelerator_kwargs`: accelerate only forms a CPU process group (gloo) when told `cpu=True`; without it,
  N processes launched on a machine without CUDA each see DistributedType.NO, all believe they are rank 0
  and train N independent copies that overwrite each other's files. So a launch with WORLD_SIZE > 1 and no
  CUDA asks for the CPU group explicitly.
- `is_main`, `rank_and_world`: who writes shared files (run directory, results, reports), read from the
  initialized process group, or from the launcher's environment before one exists.
- `across_ranks`: evaluation split over the processes: each rank maps `fn` over its own slice of the items,
  and every rank gets all results back in the items' order, each item computed exactly once. Every rank
  maps the same number of items, so a sharded (FSDP) model runs the same forwards on every rank.
- `mean_across_ranks`: a logged number (the loss) averaged over processes, so rank 0 logs the global value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def launched_world_size() -> int:
    """The number of processes the launcher started (1 when not launched by accelerate/torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def accelerator_kwargs() -> dict[str, Any]:
    """Extra Accelerator(...) arguments for this launch: cpu=True for a multi-process run without CUDA."""
    if launched_world_size() > 1 and not torch.cuda.is_available():
        return {"cpu": True}
    return {}


def accelerator_for(mixed_precision: str):
    """An Accelerator with `mixed_precision` ("no", "bf16", "fp16") on this launch's devices.

    accelerate keeps one AcceleratorState per process and refuses a second Accelerator with another
    mixed precision; a recipe whose stages train at different precisions runs them in one process (as do
    the tests). accelerate has no public way to change it, so the stage's own setting replaces the shared
    one through accelerate's internal reset, here and nowhere else; the process group (PartialState) is
    kept. Revisit when accelerate offers a supported API.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(mixed_precision=mixed_precision, **accelerator_kwargs())
    except ValueError:
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(mixed_precision=mixed_precision, **accelerator_kwargs())


def _group_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes) of the current run."""
    if _group_ready():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        return int(os.environ.get("RANK", "0") or 0), launched_world_size()
    except ValueError:
        return 0, 1


def is_main() -> bool:
    """Whether this process writes the files that exist once per run (rank 0, or a single process)."""
    return rank_and_world()[0] == 0


def init_group() -> None:
    """Join the launcher's process group now, before any Accelerator exists (a no-op when not launched
    with several processes, or when joined already); accelerate's shared state keeps it for later."""
    if launched_world_size() > 1 and not _group_ready():
        from accelerate import PartialState

        PartialState(**accelerator_kwargs())


def barrier() -> None:
    """Wait for every process of the run (nothing to wait for in a single process)."""
    init_group()
    if _group_ready() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def across_ranks(fn: Callable[[Sequence[T]], Sequence[R]], items: Sequence[T]) -> list[R]:
    """`fn(items)`, computed in slices: rank r maps items r, r+world, r+2*world, ...; all gather the rest.

    `fn` must return one result per item it is given, in order. Strided slices keep the ranks' loads even
    when items are sorted by length; the gather puts result i back at position i, so every rank returns
    exactly `list(fn(items))` up to the floating-point effects of different batch compositions. A rank
    whose slice is one short maps one repeated item more and drops its result: every rank then calls `fn`
    on as many items, so a sharded model, whose every forward is collective, runs as many forwards.
    """
    init_group()  # e.g. every stage was done already: no Accelerator has joined the group yet
    rank, world = rank_and_world()
    if world == 1:
        return list(fn(items))
    part = list(items[rank::world])
    padded = part + list((part or items[:1])[-1:]) * (-(-len(items) // world) - len(part))
    results = list(fn(padded)) if padded else []
    if len(results) != len(padded):
        raise ValueError(f"across_ranks: fn returned {len(results)} results for {len(padded)} items")
    mine = results[: len(part)]
    parts: list[list[R] | None] = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    out: list[R] = [None] * len(items)  # type: ignore[list-item]
    for r, part in enumerate(parts):
        out[r::world] = part  # type: ignore[index]
    return out


def mean_across_ranks(values: list[float]) -> list[float]:
    """Each of `values` averaged over all processes (`values` itself in a single process), in one
    all-reduce; every rank must pass the same number of values."""
    if not _group_ready() or torch.distributed.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t)
    return (t / torch.distributed.get_world_size()).tolist()


__all__ = [
    "accelerator_for",
    "accelerator_kwargs",
    "across_ranks",
    "barrier",
    "init_group",
    "is_main",
    "launched_world_size",
    "mean_across_ranks",
    "rank_and_world",
]
