"""OpenAI response objects: completions, stream chunks, usage, and logprobs whose tokens
concatenate to the content."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

FINISH = {"eog": "stop", "stop": "stop", "length": "length"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class LogprobAligner:
    """Pairs each generated token with the part of the content it produced.

    Content is released later than tokens (held-back UTF-8 fragments and stop-string prefixes)
    and may end before the last tokens (a stop string). A token's text is what the content
    gains by its bytes: a token ending inside a character gets "" and the token that completes
    it gets the character. Tokens past the end of the content are dropped, and the last one
    released takes any remainder, so the tokens' texts always concatenate to the content.
    """

    def __init__(self, token_text: Callable[[int], str]) -> None:
        self._token_text = token_text
        self._pending: list[tuple[int, Any]] = []  # (byte offset where the token ends, Step)
        self._end = 0
        self._content = b""
        self._assigned = 0  # characters of content given to released tokens
        self.released: list[dict] = []

    def step(self, step: Any) -> None:
        self._end += len(step.piece)
        self._pending.append((self._end, step))

    def text(self, text: str, *, final: bool = False) -> list[dict]:
        """Content grew by ``text``: the entries of the tokens now fully covered (all, if ``final``)."""
        self._content += text.encode()
        out = []
        while self._pending and (self._pending[0][0] <= len(self._content) or final):
            end, step = self._pending.pop(0)
            start = len(self._content[: end - len(step.piece)].decode("utf-8", "ignore"))
            if final and start >= len(self._content.decode("utf-8", "ignore")):
                break  # past the content's end (cut by a stop string)
            prefix = self._content[:end].decode("utf-8", "ignore")
            out.append(self._entry(step, prefix[self._assigned :]))
            self._assigned = len(prefix)
        if final:
            self._pending.clear()
            rest = self._content.decode("utf-8", "replace")[self._assigned :]
            if rest and out:
                out[-1]["token"] += rest
            elif rest and self.released:  # nothing new, but content beyond the last token
                self.released[-1]["token"] += rest  # (already sent when streaming; rare: invalid UTF-8)
        self.released.extend(out)
        return out

    def _entry(self, step: Any, text: str) -> dict:
        tops = [{"token": s, "logprob": lp, "bytes": list(s.encode())}
                for s, lp in ((self._token_text(t), lp) for t, lp in (step.top_logprobs or []))]
        return {"token": text, "logprob": step.logprob, "bytes": list(step.piece), "top_logprobs": tops}


def legacy_logprobs(entries: list[dict], offset: int = 0) -> dict[str, Any]:
    """/v1/completions' logprobs shape from chat-style entries."""
    offsets, pos = [], offset
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


def chat_logprobs(entries: list[dict]) -> dict[str, Any]:
    return {"content": entries, "refusal": None}
