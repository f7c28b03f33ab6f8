"""TEMPORARY: Model.start for a build without the multi-sequence engine (n=1, one at a time).
Deleted once the engine branch is merged."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

from edgekit.errors import EdgekitError


class Step(NamedTuple):
    token: int
    piece: bytes
    text: str
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None


class _Sequence:
    def __init__(self, model: Any, prompt: Any, sampling: Any) -> None:
        self._model, self._prompt, self._sampling = model, prompt, sampling
        self._cancelled = threading.Event()
        self.completion = None

    def cancel(self) -> None:
        self._cancelled.set()

    def __iter__(self) -> Iterator[Step]:
        gen = self._model.generation(self._prompt, self._sampling)
        try:
            while not self._cancelled.is_set():
                try:
                    chunk = next(gen)
                except StopIteration as stop:
                    self.completion = stop.value
                    return
                yield Step(-1, chunk.encode(), chunk, None, None)
        finally:
            gen.close()
            if self.completion is None:
                from edgekit.stats import Completion

                self.completion = Completion("", [], "cancelled")  # type: ignore[arg-type]


def start(model: Any, prompt: Any, sampling: Any, n: int = 1) -> list[Any]:
    if hasattr(model, "start"):
        return model.start(prompt, sampling, n=n)
    if n != 1:
        raise EdgekitError("n > 1 needs the multi-sequence engine")
    return [_Sequence(model, prompt, sampling)]
