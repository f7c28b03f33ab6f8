"""Turn generated token bytes into text chunks that are safe to show.

Two things must never reach the user half-done: a UTF-8 character whose bytes
are split across tokens, and a stop string whose first part was already printed.
:class:`TextStream` holds back exactly the bytes and characters that could still
become either.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Feed token bytes with :meth:`push`; it returns the text that is safe to emit now."""

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._longest = max((len(s) for s in self._stop), default=0)
        self._text = ""  # all text decoded so far
        self._emitted = 0  # how much of _text was handed out
        self.stopped = False  # a stop string was found; _text ends right before it

    @property
    def text(self) -> str:
        return self._text

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return newly safe text ("" if it must wait)."""
        if self.stopped:
            return ""
        self._text += self._decoder.decode(piece)
        return self._release()

    def finish(self) -> str:
        """End of generation: flush what was held back (a dangling partial char becomes U+FFFD)."""
        if not self.stopped:
            self._text += self._decoder.decode(b"", final=True)
            if self._stop:
                self._find_stop()
        out = self._text[self._emitted :]
        self._emitted = len(self._text)
        return out

    def _find_stop(self) -> bool:
        start = max(0, self._emitted - self._longest)
        hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
        if hits:
            self._text = self._text[: min(hits)]
            self.stopped = True
        return self.stopped

    def _release(self) -> str:
        if not self._stop:
            out = self._text[self._emitted :]
            self._emitted = len(self._text)
            return out
        if self._find_stop():
            out = self._text[self._emitted :]
            self._emitted = len(self._text)
            return out
        # Hold back the longest tail that is a prefix of some stop string.
        hold = 0
        text = self._text
        for n in range(min(self._longest - 1, len(text) - self._emitted), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                hold = n
                break
        end = len(text) - hold
        out = text[self._emitted : end]
        self._emitted = end
        return out
