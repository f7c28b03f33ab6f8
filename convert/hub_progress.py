"""huggingface_hub's download progress, forwarded to edgekit's ``progress(stage, done, total)`` callback.

huggingface_hub reports progress only through tqdm bars; a stand-in tqdm class is the
one way to receive the byte counts without it drawing its own bars.
"""

from __future__ import annotations

import threading

from edgekit.progress import ProgressFn

__all__ = ["HubProgress"]


class HubProgress:
    """Forwards huggingface_hub's tqdm updates to a ``ProgressFn`` (and keeps it from printing).

    snapshot_download (huggingface_hub 2.x) builds its bars from ``tqdm_class``: a file counter,
    a network-transfer byte bar ("Downloading bytes", whose total is only an estimate) and a
    bytes-written bar whose total grows as each file starts. The last one is forwarded.
    """

    def __init__(self, progress: ProgressFn | None, expected: int = 0) -> None:
        self.progress = progress
        self.lock = threading.Lock()
        self.done = 0
        self.total = 0
        self.expected = expected  # bytes still to fetch, known from the listing

    def tqdm_class(self) -> type:
        owner = self

        class _Bar:
            def __init__(self, *args: object, **kwargs: object) -> None:
                self.desc = str(kwargs.get("desc") or "")
                self.forward = kwargs.get("unit") == "B" and not self.desc.startswith("Downloading bytes")
                self.n = int(kwargs.get("initial") or 0)  # type: ignore[call-overload]
                self._total = kwargs.get("total") or 0
                self.format_dict: dict[str, object] = {"rate": None}

            @property
            def total(self) -> int | float:
                return self._total

            @total.setter
            def total(self, value: int | float | None) -> None:
                self._total = value or 0
                self._report()

            def update(self, n: int | float | None = 1) -> None:
                self.n += int(n or 0)
                self._report()

            def _report(self) -> None:
                if self.forward:
                    owner._report(self.n, int(self._total))

            def refresh(self, *args: object, **kwargs: object) -> None:
                self._report()

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def __getattr__(self, name: str):  # close, set_description, set_postfix_str...: nothing to draw
                if name.startswith("__"):
                    raise AttributeError(name)
                return lambda *args, **kwargs: None

        return _Bar

    def _report(self, done: int, total: int) -> None:
        with self.lock:
            self.done, self.total = done, max(total, done, self.expected)
            if self.progress is not None and self.total:
                self.progress("download", self.done, self.total)

    def finish(self) -> None:
        with self.lock:
            if self.progress is not None and self.total:
                self.progress("download", self.total, self.total)
