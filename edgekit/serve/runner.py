"""Run a request's sequences: each blocking ``Sequence`` iteration runs in a worker thread and
hands its events to the event loop; cancelling (a client gone, a shutdown) stops them within
one decode step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from edgekit.runtime.engine import Step

Event = tuple[int, Any]  # (choice index, Step | Completion | BaseException)


class Job:
    """The sequences of one request. ``await job.next()`` gives ``(index, item)`` events in arrival
    order: Steps, then per sequence its Completion (or the exception that ended it); None when all
    are done. ``close()`` cancels what still runs and waits for the worker threads (bounded by a step).
    ``on_end(completion or None)`` runs in the worker thread as each sequence ends, read or not.
    """

    def __init__(self, sequences: list[Any], executor: Executor, on_end: Callable[[Any], None]) -> None:
        self.sequences = sequences
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._live = len(sequences)
        self._on_end = on_end
        self._futures = [asyncio.wrap_future(executor.submit(self._pump, i, seq))
                         for i, seq in enumerate(sequences)]

    def _put(self, event: Event) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
            return True
        except RuntimeError:  # the loop is closed: nobody listens any more
            return False

    def _pump(self, index: int, seq: Any) -> None:
        try:
            for step in seq:
                if not self._put((index, step)):
                    seq.cancel()
                    break
            else:
                self._put((index, seq.completion))
        except BaseException as exc:  # handed to the request, which answers with an error
            self._put((index, exc))
        finally:
            self._on_end(getattr(seq, "completion", None))

    async def next(self) -> Event | None:
        if self._live == 0:
            return None
        index, item = await self._queue.get()
        if not isinstance(item, Step):  # a Completion or an exception ends that sequence
            self._live -= 1
        return index, item

    def cancel(self) -> None:
        for seq in self.sequences:
            seq.cancel()

    async def close(self) -> None:
        self.cancel()
        await asyncio.gather(*self._futures, return_exceptions=True)
