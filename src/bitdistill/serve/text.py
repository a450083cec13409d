"""Turning a token stream into text pieces: incremental detokenization and `stop` strings.

Byte-level BPE tokens are often partial UTF-8 characters, and word-level or SentencePiece decoders insert
spaces between tokens, so a token's text depends on its neighbours. `Detokenizer` decodes a short window
(the previous piece plus what is new) and emits only the text that grew and is complete; the pieces
concatenate to exactly `tokenizer.decode(all_ids)` without re-decoding the whole output at every token.
"""

from __future__ import annotations


class Detokenizer:
    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # the window starts here: the tokens of the previous emitted piece give context
        self.read = 0  # tokens before this have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """The new complete text after `token` ('' while a character is still partial)."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (an incomplete character decodes as U+FFFD)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :] if after.startswith(before) else after


class StopScanner:
    """Cuts the text at the first `stop` string. Text that could be the start of a stop string is held back
    until it is known not to be one, so streamed pieces never show part of a stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.hit = False

    def push(self, text: str) -> str:
        if not self.stops:
            return text
        buf = self.held + text
        cuts = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.hit, self.held = True, ""
            return buf[: min(cuts)]
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:n]):
                    keep = n
                    break
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out
