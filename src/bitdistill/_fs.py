"""Atomic outputs: files and directories assembled beside their destination, then renamed into place.

Temporary names carry the writer's PID (`.NAME.tmp-PID-XXXX`, `.NAME.old-PID`), so a later writer of the
same destination can tell what a killed writer left from what a live one is still using: `recover` puts
back a destination that was moved aside but never replaced (a kill between the two renames of
`replace_dir`) and deletes dead writers' temporaries. Every writer calls it before starting.

Outputs get the usual permissions (0666/0777 minus the umask): `tempfile` creates 0600/0700 and
safetensors writes 0600, which would leave a model readable by its owner only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path: Path) -> None:
    """Give `path` (and, for a directory, the files directly in it) the umask's default permissions."""
    mask = umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for child in path.iterdir():
            if child.is_file() and not child.is_symlink():
                os.chmod(child, 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(dst: str | os.PathLike) -> list[str]:
    """Clean up what killed writers of `dst` left beside it; return what was done (for tests and logs).

    A `.NAME.old-PID` of a dead writer is the previous output, moved aside just before a kill: it becomes
    `dst` again when `dst` is missing, and is deleted otherwise. Dead writers' `.NAME.tmp-*` are deleted
    (names without a PID come from versions that did not record one; nobody can still be writing them).
    """
    dst = Path(dst)
    if not dst.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(dst.name)}\.(old|tmp)-(?:(\d+)(?:-|$))?")
    done: list[str] = []
    olds: list[Path] = []
    for entry in dst.parent.iterdir():
        m = pattern.match(entry.name)
        if m is None or (m.group(2) is not None and _alive(int(m.group(2)))):
            continue
        if m.group(1) == "old":
            olds.append(entry)
        else:
            _remove(entry)
            done.append(f"removed {entry.name}")
    for old in sorted(olds, key=lambda p: p.stat().st_mtime, reverse=True):
        if not dst.exists():
            os.replace(old, dst)
            done.append(f"restored {dst.name} from {old.name}")
        else:
            _remove(old)
            done.append(f"removed {old.name}")
    return done


def temp_dir_for(dst: Path) -> Path:
    """A new empty directory beside `dst` to assemble it in (after cleaning killed writers' leftovers)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    recover(dst)
    return Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-{os.getpid()}-", dir=dst.parent))


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished `src` to `dst`, keeping the old `dst` until the new one is in place."""
    make_public(src)
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    _remove(old)
    os.replace(dst, old)
    os.replace(src, dst)
    _remove(old)


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_dir(out) as tmp:` fill `tmp`; on success it replaces `out`, on any error it is removed."""
    dst = Path(dst)
    tmp = temp_dir_for(dst)
    try:
        yield tmp
        replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(dst: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_file(out) as tmp:` write the path `tmp`; on success it replaces `out`, else is removed."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    recover(dst)
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.tmp-{os.getpid()}-", dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        make_public(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries (which makes a rename in it durable), to disk.

    A file's failure raises; a directory's is ignored, since not every filesystem can fsync directories.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not path.is_dir():
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` durably: a temporary file beside it, fsynced, renamed over it, then the
    directory fsynced so the rename itself survives a crash. Readers see the old file or the new one."""
    path = Path(path)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    fsync_path(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
