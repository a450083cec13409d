"""Weight-scale granularities, torch-free so the CLI can offer them without importing torch."""

from typing import Literal

Granularity = Literal["tensor", "channel", "group"]
GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "group")
