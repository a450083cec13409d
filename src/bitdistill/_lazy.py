"""Module-level `__getattr__` for packages whose public names import on first use (PEP 562).

Keeps torch out of start-up for the torch-free parts (packed runtime, `generate`, `classify`, CLI options).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A `__getattr__` that imports `name` from the submodule `table[name]` (relative to `package`)."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(import_module(table[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
