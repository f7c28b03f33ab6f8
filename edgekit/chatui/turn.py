"""Streaming one answer to the terminal, and stopping it cleanly on Ctrl-C.

Once the answer has started, the first Ctrl-C only sets a flag; the stream is
stopped at the next token, so llama.cpp is never interrupted half-way through a
call and the text shown so far is kept. Before the first token (a long prefill)
there is nothing to keep, so Ctrl-C interrupts at once, at the end of the
current prompt batch; so does a second Ctrl-C at any time.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TurnResult:
    """What one streamed answer produced."""

    text: str = ""
    stats: Any = None  # edgekit.Stats, None when stopped before the end
    interrupted: bool = False
    dropped: list[dict] = field(default_factory=list)


class _Flag:
    def __init__(self) -> None:
        self.hits = 0
        self.started = False  # the stream has produced something: stop softly from now on


@contextlib.contextmanager
def soft_interrupt() -> Iterator[_Flag]:
    """SIGINT sets ``flag.hits`` once the stream has started; otherwise (or the second time) it raises."""
    flag = _Flag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag.hits += 1
        if flag.hits > 1 or not flag.started:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def stream_answer(chunks: Iterator[Any], write: Callable[[str], None]) -> TurnResult:
    """Consume a runtime stream (text chunks then a Stats), writing text as it comes."""
    result = TurnResult()
    parts: list[str] = []
    try:
        with soft_interrupt() as flag:
            try:
                for item in chunks:
                    flag.started = True
                    if isinstance(item, str):
                        parts.append(item)
                        write(item)
                    else:
                        result.stats = item
                    if flag.hits:
                        result.interrupted = True
                        break
            except KeyboardInterrupt:
                result.interrupted = True
            finally:
                # The runtime's streams are generators, but typed as plain iterators.
                close = getattr(chunks, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()  # GeneratorExit inside the runtime: it finishes its bookkeeping
    except KeyboardInterrupt:  # a late second Ctrl-C while restoring the handler
        result.interrupted = True
    result.text = "".join(parts)
    if result.interrupted and result.stats is not None:
        result.interrupted = False  # the stream had already finished
    return result
