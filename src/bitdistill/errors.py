"""User-facing errors.

Every error a user can cause (a bad path, a corrupt directory, an unsupported model) is raised as a
`BitDistillError` whose message says what was wrong and what to do. The CLI prints these without a
traceback; anything else is a bug and keeps its traceback.
"""

import math


class BitDistillError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


def require_finite(value: float | None, where: str, strict: bool = False) -> None:
    """A config number must be finite and >= 0 (> 0 when `strict`); None means unset and passes."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        raise BitDistillError(f"{where}: must be a finite number {'> 0' if strict else '>= 0'}, got {value}")
