"""Row readers for local task files: GLUE TSV, CSV, JSON lines and Parquet.

Each reader yields `(where, row)` where `where` names the file and the physical line (text formats) or row
(Parquet) so that a bad value can be reported as "train.tsv line 17: ...". Structural problems (a row with
the wrong number of fields, invalid JSON) are raised here; value problems (a bad label) by the task.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import BitDistillError

FORMATS: dict[str, str] = {
    ".tsv": "tsv", ".tsv.gz": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"
}  # fmt: skip

Row = dict[str, object]


def file_format(path: Path) -> str:
    name = path.name.lower()
    fmt = next((f for ext, f in FORMATS.items() if name.endswith(ext) and ext != ".tsv"), None)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BitDistillError(
            f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FORMATS)} "
            "(GLUE .tsv with a header line, .csv with a header, .jsonl one object per line, .parquet)"
        )
    return fmt


def read_rows(path: str | Path) -> Iterator[tuple[str, Row]]:
    """Rows of a task file as dicts keyed by its header / field names, with their location."""
    path = Path(path)
    if not path.is_file():
        raise BitDistillError(f"{path}: no such file")
    reader = {"tsv": _tsv, "csv": _csv, "jsonl": _jsonl, "parquet": _parquet}[file_format(path)]
    return _utf8(path, reader(path))


def _utf8(path: Path, rows: Iterator[tuple[str, Row]]) -> Iterator[tuple[str, Row]]:
    try:
        yield from rows
    except UnicodeDecodeError as e:
        raise BitDistillError(
            f"{path}: not UTF-8 text (byte {e.object[e.start : e.start + 1].hex()} cannot be decoded); "
            "save the file as UTF-8"
        ) from None


def _tsv(path: Path) -> Iterator[tuple[str, Row]]:
    # GLUE TSVs contain bare quote characters inside sentences: split on tabs, never interpret quotes.
    with _open_text(path) as f:
        records = ((lineno, line.rstrip("\r\n").split("\t")) for lineno, line in enumerate(f, start=1))
        yield from _header_rows(path, records, "TSV", "tab-separated", "fix or remove the line")


def _csv(path: Path) -> Iterator[tuple[str, Row]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # CNN/DM articles exceed the 128 KiB default
    with _open_text(path) as f:
        records = _csv_records(csv.reader(f))
        yield from _header_rows(path, records, "CSV", "comma-separated", "quote fields that contain commas")


def _open_text(path: Path):
    opener = gzip.open if path.name.lower().endswith(".gz") else open  # the packaged copies are gzip'd
    return opener(path, "rt", encoding="utf-8-sig", newline="")  # -sig: a BOM is not part of the header


def _csv_records(reader) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) of each CSV record; a quoted record may span lines."""
    end = 0  # physical line where the previous record ended
    for fields in reader:
        start, end = end + 1, reader.line_num
        yield start, fields


def _header_rows(
    path: Path, records: Iterator[tuple[int, list[str]]], kind: str, separated: str, fix: str
) -> Iterator[tuple[str, Row]]:
    """Rows keyed by the first non-blank record (the header); a record with another field count is an error."""
    header: list[str] | None = None
    for lineno, fields in records:
        if not any(x.strip() for x in fields):
            continue
        if header is None:
            header = [h.strip() for h in fields]
            continue
        if len(fields) != len(header):
            raise BitDistillError(
                f"{path} line {lineno}: expected {len(header)} {separated} fields "
                f"({', '.join(header)}), found {len(fields)}; {fix}"
            )
        yield f"{path} line {lineno}", dict(zip(header, fields, strict=True))
    if header is None:
        raise BitDistillError(f"{path}: empty file; a {kind} needs a header line naming its columns")


def json_lines(f, path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of every non-blank line of an open JSON-lines file."""
    for lineno, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise BitDistillError(
                f"{path} line {lineno}: invalid JSON ({e.msg} at column {e.colno})"
            ) from None
        yield lineno, value


def _jsonl(path: Path) -> Iterator[tuple[str, Row]]:
    with path.open(encoding="utf-8-sig") as f:
        for lineno, row in json_lines(f, path):
            if not isinstance(row, dict):
                raise BitDistillError(
                    f"{path} line {lineno}: expected a JSON object per line, found {type(row).__name__}"
                )
            for key, value in row.items():
                # JSON may escape half a surrogate pair (\ud800): valid JSON, but no text; tokenizers reject it
                if isinstance(value, str) and not value.isascii():
                    try:
                        value.encode("utf-8")
                    except UnicodeEncodeError:
                        raise BitDistillError(
                            f"{path} line {lineno}: field {key!r} holds a lone surrogate escape (\\ud800-"
                            "\\udfff without its pair); fix or remove the line"
                        ) from None
            yield f"{path} line {lineno}", row


def open_parquet(path: Path):
    """A pyarrow ParquetFile, or a one-line error naming a file that is not readable Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:  # ArrowInvalid for a non-Parquet file, OSError when unreadable
        raise BitDistillError(f"{path}: not a readable Parquet file ({e})") from None


def _parquet(path: Path) -> Iterator[tuple[str, Row]]:
    pf = open_parquet(path)
    index = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            index += 1
            yield f"{path} row {index}", row
