"""One `bitdistill run` per run directory: `<run>/.lock` holds the owner's PID, host and start time.

Two runs of the same recipe would write the same checkpoints, logs and stage.json and corrupt each other.
The lock is an exclusive flock on `.lock`, which the kernel drops when its holder dies however it dies, plus
the holder's PID in the file for the cases flock cannot see (a network filesystem without flock, a lock
written by hand): a lock naming a live process on this host is refused; one naming a dead process (or
unreadable, or written before a reboot) is taken over with a warning. A lock from another host cannot be
probed and is refused with the advice to delete it if that run is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import BitDistillError

LOCK_FILE = ".lock"


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a recycled PID from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces and ')'


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the process a lock names (on this host) still runs."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if owner.get("boot_id") and _boot_id() and owner["boot_id"] != _boot_id():
        return False  # written before a reboot
    if not pid_alive(pid):
        return False
    started = owner.get("proc_start")
    return not (started and _proc_start(pid) and _proc_start(pid) != started)  # a recycled PID


class RunLock:
    """`with RunLock(run_dir):` holds the run directory's lock; errors are one line (BitDistillError)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def _describe(self, owner: dict[str, Any]) -> str:
        since = owner.get("started")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, int | float) else "?"
        return f"pid {owner.get('pid')} on {owner.get('host')}, started {when}"

    def _busy(self, owner: dict[str, Any]) -> BitDistillError:
        return BitDistillError(
            f"{self.path.parent}: another bitdistill run is using this run directory ({self._describe(owner)}); "
            f"wait for it to finish, or if that run is gone, delete {self.path}"
        )

    def acquire(self) -> None:
        if os.environ.get("RANK", "0") not in ("", "0"):
            return  # `accelerate launch` / torchrun: the processes of one run share it; rank 0 holds it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = self._read(fd)
                os.close(fd)
                raise self._busy(owner) from None
            # The holder before us may have unlinked the file between our open and our flock: then we hold
            # a lock on a file nobody else will ever open. Start again on the file now at the path.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        owner = self._read(fd)
        if owner:
            if owner.get("host") != socket.gethostname():
                os.close(fd)
                raise self._busy(owner)
            if owner.get("pid") != os.getpid() and _owner_alive(owner):
                os.close(fd)
                raise self._busy(owner)
            if owner.get("pid") != os.getpid():
                print(
                    f"[bitdistill] warning: {self.path}: taking over the lock of a run that is gone "
                    f"({self._describe(owner)})", file=sys.stderr, flush=True,
                )  # fmt: skip
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "proc_start": _proc_start(os.getpid()), "boot_id": _boot_id(), "argv": sys.argv[1:]}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            data = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {"pid": None, "host": socket.gethostname()}  # unreadable: no live owner to protect
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding the flock: see acquire's inode check
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["LOCK_FILE", "RunLock"]
