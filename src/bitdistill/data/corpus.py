"""Text corpus for continued pre-training: stream documents, tokenize, pack into fixed-length blocks.

Sources (a list, read in order; globs and directories expand in sorted order, so the stream is
deterministic):
  - `.txt` / `.txt.gz`: documents separated by blank lines;
  - `.jsonl` / `.jsonl.gz`: one JSON object per line, the document in its `text` field;
  - `.parquet`: the `text` column;
  - `hub:name[:config]:split`: a Hugging Face dataset streamed with `datasets` (needs a network).

Packing: documents are tokenized without special tokens, each followed by EOS, concatenated, and cut into
blocks of `block_size` tokens; the tail shorter than a block is dropped. Each block is
`{"input_ids": LongTensor[block_size], "labels": same ids}` (the model shifts labels itself).

Budget: with `token_budget` the corpus yields ceil(token_budget / block_size) blocks (so at least the budget
is trained on) and cycles over the sources again if they run out first. Without a budget it makes one pass.

DataLoader workers: with `num_workers > 1` pass `worker_chunk=<the DataLoader batch size>` so workers take
turns batch by batch and the order is the same as with one process; without it only worker 0 reads.

Resume: `skip_blocks(n)` (or `load_state_dict({"blocks": n})`) makes the next iteration start at block n of
the same stream, so a resumed run continues exactly where it stopped. `state_dict()` reports the blocks this
object has yielded so far (exact with `num_workers=0`; a training loop that prefetches should count the blocks
it consumed and pass that number to `skip_blocks` instead).
"""

from __future__ import annotations

import glob
import gzip
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import BitDistillError
from .readers import json_lines, open_parquet

TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in TEXT_SUFFIXES if name.endswith(s)), None)


def expand_sources(sources: list[str] | str) -> list[str]:
    """Files (and hub specs) named by `sources`, globs and directories expanded in sorted order."""
    if isinstance(sources, str):
        sources = [sources]
    out: list[str] = []
    for src in sources:
        src = str(src)
        if src.startswith("hub:"):
            out.append(src)
            continue
        from .builtin import resolve

        p = resolve(src)  # builtin:austen is the packaged corpus
        if any(c in src for c in "*?["):
            matches = sorted(
                m for m in glob.glob(str(p), recursive=True) if Path(m).is_file() and _suffix(Path(m))
            )
            if not matches:
                raise BitDistillError(f"{src}: the pattern matches no {'/'.join(TEXT_SUFFIXES)} file")
            out.extend(matches)
        elif p.is_dir():
            files = sorted(str(f) for f in p.rglob("*") if f.is_file() and _suffix(f))
            if not files:
                raise BitDistillError(f"{p}: the directory holds no {'/'.join(TEXT_SUFFIXES)} file")
            out.extend(files)
        elif p.is_file():
            if _suffix(p) is None:
                raise BitDistillError(
                    f"{p}: unsupported corpus file; use {', '.join(TEXT_SUFFIXES)} or hub:name:split"
                )
            out.append(str(p))
        else:
            raise BitDistillError(f"{src}: no such file, directory or pattern (corpus source)")
    return out


def _open_text(path: Path):
    return (
        gzip.open(path, "rt", encoding="utf-8")
        if path.name.lower().endswith(".gz")
        else path.open(encoding="utf-8")
    )


def _txt_documents(path: Path) -> Iterator[str]:
    lines: list[str] = []
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).rstrip("\n")
                lines = []
    if lines:
        yield "".join(lines).rstrip("\n")


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, row in json_lines(f, path):
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise BitDistillError(
                    f"{path} line {lineno}: no string field {text_field!r} (corpus documents)"
                )
            yield text


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    pf = open_parquet(path)
    if text_field not in pf.schema_arrow.names:
        raise BitDistillError(f"{path}: no column {text_field!r}; columns are {pf.schema_arrow.names}")
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str):
                raise BitDistillError(f"{path} row {row}: {text_field!r} is {text!r}, not text")
            yield text


def _hub_documents(spec: str, text_field: str) -> Iterator[str]:
    parts = spec[len("hub:") :].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise BitDistillError(f"{spec}: write a hub corpus as hub:name:split or hub:name:config:split")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        for row in ds:
            yield row[text_field]
    except BitDistillError:
        raise
    except Exception as e:
        raise BitDistillError(
            f"{spec}: could not stream it from the Hugging Face hub ({type(e).__name__}: {e}); "
            "without a network use local .txt/.jsonl/.parquet files"
        ) from None


def iter_documents(source: str, text_field: str = "text") -> Iterator[str]:
    """Documents of one expanded source (a file or a hub spec)."""
    if source.startswith("hub:"):
        yield from _hub_documents(source, text_field)
        return
    path = Path(source)
    suffix = _suffix(path)
    if suffix in (".txt", ".txt.gz"):
        yield from _txt_documents(path)
    elif suffix in (".jsonl", ".jsonl.gz"):
        yield from _jsonl_documents(path, text_field)
    elif suffix == ".parquet":
        yield from _parquet_documents(path, text_field)
    else:
        raise BitDistillError(f"{path}: unsupported corpus file; use {', '.join(TEXT_SUFFIXES)}")


def iter_text(sources: list[str] | str, text_field: str = "text") -> Iterator[str]:
    """Every document of every source, in order."""
    for source in expand_sources(sources):
        yield from iter_documents(source, text_field)


class PackedCorpus(IterableDataset):
    """Fixed-length token blocks packed from a text stream; see the module docstring."""

    def __init__(
        self,
        tokenizer,
        sources: list[str] | str,
        block_size: int,
        token_budget: int | None = None,
        text_field: str = "text",
        tokenize_batch: int = 64,
        worker_chunk: int | None = None,
    ) -> None:
        super().__init__()
        if block_size < 2:
            raise BitDistillError(f"block_size={block_size}: a block needs at least 2 tokens")
        if token_budget is not None and token_budget <= 0:
            raise BitDistillError(f"token_budget={token_budget} must be positive (or unset for one pass)")
        if tokenizer.eos_token_id is None:
            raise BitDistillError("the tokenizer has no eos_token; packing joins documents with EOS")
        self.tokenizer = tokenizer
        self.sources = expand_sources(sources)  # fail early on a bad path
        self.block_size = block_size
        self.token_budget = token_budget
        self.text_field = text_field
        self.tokenize_batch = tokenize_batch
        self.worker_chunk = worker_chunk
        self._start = 0
        self._position = 0

    @property
    def num_blocks(self) -> int | None:
        """Blocks in the whole stream under the budget (None without a budget: unknown until read)."""
        return None if self.token_budget is None else math.ceil(self.token_budget / self.block_size)

    def __len__(self) -> int:
        """Blocks one iteration yields from the current start (only defined with a token budget)."""
        if self.num_blocks is None:
            raise TypeError("PackedCorpus without token_budget has no length")
        return max(self.num_blocks - self._start, 0)

    def skip_blocks(self, n: int) -> None:
        """Start the next iteration at block `n` (absolute, counted from the start of the stream)."""
        if n < 0:
            raise ValueError("skip_blocks needs n >= 0")
        self._start = self._position = n

    def state_dict(self) -> dict[str, int]:
        return {"blocks": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skip_blocks(int(state["blocks"]))

    def _token_chunks(self) -> Iterator[list[int]]:
        """Token ids of each document followed by EOS, cycling over the sources under a budget."""
        eos = self.tokenizer.eos_token_id
        passes = 0
        while True:
            produced = 0
            batch: list[str] = []
            for doc in iter_text(self.sources, self.text_field):
                batch.append(doc)
                if len(batch) >= self.tokenize_batch:
                    for ids in self.tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
                        produced += len(ids) + 1
                        yield list(ids) + [eos]
                    batch = []
            if batch:
                for ids in self.tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
                    produced += len(ids) + 1
                    yield list(ids) + [eos]
            passes += 1
            if self.token_budget is None:
                return
            if produced < self.block_size:
                raise BitDistillError(
                    f"corpus {self.sources}: one pass holds {produced} tokens, less than one block of "
                    f"{self.block_size}; add text or lower block_size"
                )
            if passes == 1:
                warnings.warn(
                    f"corpus holds {produced} tokens, fewer than token_budget={self.token_budget}; "
                    "repeating it",
                    stacklevel=2,
                )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # A DataLoader takes whole batches from its workers in turn, so blocks are dealt to workers in
        # chunks of `worker_chunk` (set it to the batch size); without it only worker 0 yields, which keeps
        # the order and still moves tokenization off the training process.
        deal = self.worker_chunk or 0
        if workers > 1 and not deal and worker > 0:
            return
        limit = self.num_blocks
        index = 0
        self._position = self._start
        buf: list[int] = []
        for chunk in self._token_chunks():
            buf.extend(chunk)
            offset = 0
            while len(buf) - offset >= self.block_size:
                if limit is not None and index >= limit:
                    return
                mine = workers == 1 or not deal or ((index - self._start) // deal) % workers == worker
                if index >= self._start and mine:
                    ids = torch.tensor(buf[offset : offset + self.block_size], dtype=torch.long)
                    self._position = index + 1
                    yield {"input_ids": ids, "labels": ids.clone()}
                index += 1
                offset += self.block_size
            del buf[:offset]
            if limit is not None and index >= limit:
                return
