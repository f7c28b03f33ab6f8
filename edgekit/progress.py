"""Progress reporting: the library calls a plain callback, the CLI draws it.

The library never prints. Long operations take ``progress: ProgressFn | None``
and call it as ``progress(stage, done, total)``; ``total`` may be 0 when it is
unknown. :func:`rich_progress` turns that into rich progress bars.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

ProgressFn = Callable[[str, int, int], None]


def report(progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(stage, done, total)


@contextlib.contextmanager
def rich_progress(enabled: bool = True, unit_bytes: bool = False) -> Iterator[ProgressFn | None]:
    """Yield a progress callback that draws one rich bar per stage (on stderr)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    amount = DownloadColumn() if unit_bytes else MofNCompleteColumn()
    console = Console(stderr=True)
    columns = (TextColumn("{task.description:<12}"), BarColumn(), amount, TimeElapsedColumn(), TimeRemainingColumn())
    bars = Progress(*columns, console=console, transient=not sys.stderr.isatty())
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total or None)
        bars.update(tasks[stage], completed=done, total=total or None)

    with bars:
        yield update
