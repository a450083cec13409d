"""The server's streaming text pieces: incremental detokenization must concatenate to exactly the full
decode (also when byte-level tokens split a UTF-8 character), and stop strings must cut the text at their
first occurrence however the text is chunked, never showing part of a stop string early."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from bitdistill.serve.text import Detokenizer, StopScanner

TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer" / "tokenizer.json"
TEXTS = [
    "The movie was great, wasn't it?",
    "Crème brûlée — naïve café 東京 🎬🍿 ok",  # multi-byte characters split across byte-level tokens
    "  leading spaces\n\nand\ttabs  ",
    "🤖" * 5,
]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_concatenate_to_the_full_decode(text) -> None:
    tok = Tokenizer.from_file(str(TOKENIZER))
    ids = tok.encode(text, add_special_tokens=False).ids
    detok = Detokenizer(tok)
    pieces = [detok.push(t) for t in ids]
    assert "".join(pieces) + detok.flush() == tok.decode(ids, skip_special_tokens=True) == text
    assert all("\ufffd" not in p for p in pieces)  # a partial character is held back, never shown
    if len(text) > 1:
        assert sum(bool(p) for p in pieces) > 1  # and the text does arrive piece by piece


def test_a_truncated_character_is_flushed_as_the_decoder_gives_it() -> None:
    tok = Tokenizer.from_file(str(TOKENIZER))
    ids = tok.encode("ab 🎬", add_special_tokens=False).ids
    cut = ids[:-1]  # generation stopped in the middle of the emoji's bytes
    detok = Detokenizer(tok)
    text = "".join(detok.push(t) for t in cut) + detok.flush()
    assert text == tok.decode(cut, skip_special_tokens=True)


def _cut(text: str, stops: list[str]) -> str:
    hits = [text.find(s) for s in stops if s in text]
    return text[: min(hits)] if hits else text


@pytest.mark.parametrize("seed", range(40))
def test_stop_strings_cut_at_the_first_occurrence_for_any_chunking(seed) -> None:
    rng = random.Random(seed)
    alphabet = "abc\n"  # small, so stops occur; stops of 2-4 characters, so they often straddle two pieces
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 4))) for _ in range(rng.randint(1, 2))]
    scan = StopScanner(stops)
    out, i = [], 0
    while i < len(text) and not scan.hit:
        n = rng.randint(0, 5)
        piece = scan.push(text[i : i + n])
        out.append(piece)
        i += n
        shown = "".join(out)
        # nothing shown goes past where the text will be cut: a possible start of a stop string is held back
        assert _cut(text, stops).startswith(shown) or scan.hit
    if not scan.hit:
        out.append(scan.flush())
    assert "".join(out) == _cut(text, stops), (text, stops)
    assert scan.hit == any(s in text for s in stops)


def test_no_stops_passes_text_through() -> None:
    scan = StopScanner([])
    assert scan.push("abc") == "abc" and scan.flush() == "" and not scan.hit
