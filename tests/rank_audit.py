"""`accelerate launch tests/rank_audit.py <bitdistill args>`: the bitdistill CLI, with every file write that a
process other than rank 0 makes under $BITDISTILL_AUDIT_ROOT recorded in $BITDISTILL_AUDIT_ROOT/../writes-<rank>.

Python's audit hooks see opens for writing, renames, mkdirs and deletions (tempfile, torch.save,
atomic_write_text, shutil all go through them), so the multi-process tests can check that only rank 0
writes the run's shared files. Writes from native code (safetensors) are not seen; those are on rank 0's
path only by reading the code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = {"os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.move"}


def _install(root: Path, log: Path) -> None:
    root_s = str(root.resolve())

    def under(path: object) -> bool:
        return isinstance(path, str | bytes | os.PathLike) and os.path.abspath(os.fsdecode(path)).startswith(
            root_s
        )

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & WRITE_FLAGS
            )
            hit = [path] if writing and under(path) else []
        elif event == "os.mkdir":
            path = args[0]  # mkdir(exist_ok=True) of a directory that exists writes nothing
            hit = [path] if under(path) and not os.path.isdir(os.fsdecode(path)) else []
        elif event in EVENTS:
            hit = [a for a in args[:2] if under(a)]
        else:
            return
        for path in hit:
            with open(log, "a", opener=lambda p, f: os.open(p, f, 0o644)) as out:  # log lies outside root
                out.write(f"{event}\t{os.path.relpath(os.fsdecode(path), root_s)}\n")

    sys.addaudithook(hook)


if __name__ == "__main__":
    rank = os.environ.get("RANK", "0")
    root = os.environ.get("BITDISTILL_AUDIT_ROOT")
    if root and rank != "0":
        _install(Path(root), Path(root).parent / f"writes-{rank}")
    from bitdistill.cli import main

    sys.exit(main(sys.argv[1:]))
