"""Data that ships inside the package, so the demo and the quality recipe run from a fresh clone offline.

    builtin:sst2     GLUE SST-2 (train 67,349 / dev 872 sentences), GLUE TSV, gzip-compressed
    builtin:austen   six Jane Austen novels (janeaustenr 1.0.0, MIT), 275 chapters, ~718k words

Recipes and CLI options that take a data path or a corpus source accept these names; see README.md here.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import BitDistillError

PREFIX = "builtin:"
HERE = Path(__file__).resolve().parent
BUILTIN = {"sst2": HERE / "sst2", "austen": HERE / "corpus" / "austen.txt.gz"}


def resolve(spec: str | Path) -> Path:
    """The packaged path for 'builtin:NAME'; any other path unchanged."""
    text = str(spec)
    if not text.startswith(PREFIX):
        return Path(spec).expanduser()
    name = text[len(PREFIX) :]
    if name not in BUILTIN:
        raise BitDistillError(f"{text}: no such built-in data; use one of {', '.join(PREFIX + n for n in BUILTIN)}")
    return BUILTIN[name]
