"""Batch sources whose order is a pure function of (seed, micro-step), so a resumed run sees the same data.

`ShuffledBatches` serves a map-style dataset: micro-batch `i` comes from epoch `i // batches_per_epoch`,
whose order is a permutation drawn from a generator seeded with `seed + epoch`. Nothing has to be replayed
on resume: the loop asks for micro-batch `i` directly. Each process of a multi-process run takes its own
slice of the same global batch, so `accelerate launch` shards data without a sampler. Given `lengths`, it
groups examples of similar length into the same batch (like transformers' `group_by_length`): padding to
the longest in a batch then wastes little, which halves the compute on short-text tasks such as SST-2.

`StreamBatches` serves an iterable (streamed, packed) corpus: on resume it fast-forwards the stream with
the corpus's own `skip_blocks` / `load_state_dict` when it has one, otherwise by reading and discarding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

GROUP_WINDOW = 50  # global batches whose examples are sorted by length together (group_by_length)


class ShuffledBatches:
    """Deterministic, resumable, shardable micro-batches over a map-style dataset."""

    def __init__(
        self,
        dataset: Sequence[Any],
        batch_size: int,
        collate: Callable[[list[Any]], dict[str, torch.Tensor]],
        seed: int,
        shuffle: bool = True,
        num_processes: int = 1,
        process_index: int = 0,
        lengths: Sequence[int] | None = None,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("empty training set")
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"lengths has {len(lengths)} entries for {len(dataset)} examples")
        self.lengths = lengths
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.shuffle = shuffle
        self.world = num_processes
        self.rank = process_index
        global_batch = batch_size * num_processes
        # Drop the ragged tail of an epoch so every micro-batch has the same size on every process.
        self.batches_per_epoch = max(1, len(dataset) // global_batch)
        self._epoch = -1
        self._order: list[int] = []

    def _order_for(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            n = len(self.dataset)
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch)
                self._order = torch.randperm(n, generator=g).tolist()
                if self.lengths is not None:
                    self._order = self._grouped(self._order, g)
            else:
                self._order = list(range(n))
            self._epoch = epoch
        return self._order

    def _grouped(self, order: list[int], g: torch.Generator) -> list[int]:
        """`order` re-arranged so each global batch holds similar lengths; the batches' order is shuffled.

        Lengths are sorted only within windows of GROUP_WINDOW global batches, so which examples meet in
        a batch stays random across epochs while the padding waste nearly vanishes.
        """
        size = self.batch_size * self.world
        window = size * GROUP_WINDOW
        batches: list[list[int]] = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w : w + window], key=lambda i: -self.lengths[i])
            batches += [chunk[b : b + size] for b in range(0, len(chunk), size)]
        # A short batch goes last, into the epoch's dropped tail, so every served batch stays full.
        tail = batches.pop() if len(batches[-1]) < size else []
        perm = torch.randperm(len(batches), generator=g).tolist()
        return [i for b in perm for i in batches[b]] + tail

    def batch(self, micro_step: int) -> dict[str, torch.Tensor]:
        epoch, within = divmod(micro_step, self.batches_per_epoch)
        order = self._order_for(epoch)
        start = (within * self.world + self.rank) * self.batch_size
        idx = [order[(start + j) % len(order)] for j in range(self.batch_size)]
        return self.collate([self.dataset[i] for i in idx])

    def iterate(self, start_micro_step: int) -> Iterator[dict[str, torch.Tensor]]:
        i = start_micro_step
        while True:
            yield self.batch(i)
            i += 1


class StreamBatches:
    """Micro-batches from an iterable dataset of equal-length blocks, resumable by fast-forwarding."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        collate: Callable[[list[Any]], dict[str, torch.Tensor]] | None = None,
        num_processes: int = 1,
        process_index: int = 0,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate = collate or _stack
        self.world = num_processes
        self.rank = process_index

    def iterate(self, start_micro_step: int) -> Iterator[dict[str, torch.Tensor]]:
        per_step = self.batch_size * self.world
        skip = start_micro_step * per_step
        if skip and hasattr(self.dataset, "skip_blocks"):
            self.dataset.skip_blocks(skip)
            skip = 0
        buf: list[Any] = []
        seen = 0
        for item in self.dataset:
            if seen < skip:
                seen += 1
                continue
            buf.append(item)
            if len(buf) == per_step:
                yield self.collate(buf[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])
                buf = []
        if buf and self.world == 1:
            # The budget's last, smaller batch (multi-process runs drop it so every rank steps equally).
            yield self.collate(buf)
        # The corpus ran dry (its token budget is spent): the loop ends the stage when the iterator stops.


def _stack(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key in items[0]:
        out[key] = torch.stack([torch.as_tensor(it[key]) for it in items])
    return out
