"""The `bitdistill` command line.

Each sub-command lives in its own module in this package and exposes `register(subparsers)`, which adds its
parser and sets `func` to a callable taking the parsed args and returning an exit code. Modules are found
automatically, so adding a command is adding a file.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import shutil
import sys

from ..env import set_openmp_defaults

set_openmp_defaults()  # before any command imports torch (libgomp reads it once; see the function)

from .. import __version__  # noqa: E402
from ..errors import BitDistillError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitdistill",
        description="Turn a full-precision LLM into a 1.58-bit task model and run it on a CPU.",
    )
    parser.add_argument("--version", action="version", version=f"bitdistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:  # a bad BITDISTILL_* variable is found while the parser is built (serve's --api-key default)
        parser = build_parser()
    except BitDistillError as err:
        print(f"bitdistill: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BitDistillError as err:
        print(f"bitdistill {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"bitdistill {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as err:
        if not _disk_full(err):
            raise
        free = shutil.disk_usage(os.getcwd()).free / 2**30
        print(f"bitdistill {args.command}: error: the disk is full ({free:.1f} GiB free under {os.getcwd()}); "
              "free space and run the command again (finished stages and checkpoints were written atomically "
              "and are kept)", file=sys.stderr)  # fmt: skip
        return 1


def _disk_full(err: BaseException) -> bool:
    """Whether `err` (or an exception it was raised from or during) is a write that ran out of space. torch
    reports a full disk as a RuntimeError from its C++ stream ("iostream error") with the OSError lost."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if isinstance(e, RuntimeError) and "iostream error" in str(e) and shutil.disk_usage(os.getcwd()).free < 2**30:
            return True
        e = e.__cause__ or e.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
