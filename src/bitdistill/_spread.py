"""How every benchmark reports repeated runs: the median, with the [min-max] spread beside it.

On a noisy shared machine a single run, or a mean, hides how far the runs scattered; the tables quote
`median [min-max]` and the JSON keeps every run.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence


def spread(values: Sequence[float]) -> dict:
    """{"median", "min", "max", "runs"} of one measurement's runs."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def format_spread(s: Mapping, digits: int = 1) -> str:
    """A table cell "median [min-max]" of a `spread` dict."""
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"
