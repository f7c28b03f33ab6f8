"""``edgekit cache``: list, clear or prune the persistent prompt cache (docs/prompt-cache.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from edgekit.errors import EdgekitError

cache_app = typer.Typer(help="List the persistent prompt cache's snapshots, or clear or prune them.",
                        no_args_is_help=False, invoke_without_command=True)

Dir = Annotated[Path | None, typer.Option("--dir", help="The cache directory (default: EDGEKIT_PROMPT_CACHE, else "
                                          "the user cache dir).", show_default=False)]


def _directory(directory: Path | None) -> Path:
    from edgekit.runtime.prompt_cache import resolve_dir

    found = directory if directory is not None else resolve_dir("auto")
    if found is None:
        raise EdgekitError("the prompt cache is off (EDGEKIT_PROMPT_CACHE=off)", "Pass --dir DIR to look at one.")
    return found


@cache_app.callback()
def cache_default(ctx: typer.Context) -> None:
    """``edgekit cache`` alone lists the default directory."""
    if ctx.invoked_subcommand is None:
        cache_list(None)


@cache_app.command("list")
def cache_list(directory: Dir = None) -> None:
    """List the snapshots (model file, tokens, size, last use), most recent first."""
    from edgekit.runtime.prompt_cache import describe

    path = _directory(directory)
    rows = describe(path) if path.is_dir() else []
    if not rows:
        print(f"The prompt cache in {path} is empty.")
        return
    total = 0
    for row in rows:
        total += row["size"]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_use"]))
        what = f"{row['model']}  {row['tokens']} tokens" if "problem" not in row else f"(unusable: {row['problem']})"
        print(f"{row['file']}  {what}  {row['size'] / 2**20:.1f} MiB  {when}")
    print(f"{len(rows)} snapshot{'s' * (len(rows) != 1)}, {total / 2**20:.1f} MiB in {path}")


@cache_app.command("clear")
def cache_clear(directory: Dir = None) -> None:
    """Delete every snapshot."""
    from edgekit.runtime.prompt_cache import files

    path = _directory(directory)
    n = 0
    for f in files(path):
        f.path.unlink(missing_ok=True)
        n += 1
    print(f"Deleted {n} snapshot{'s' * (n != 1)} from {path}.")


@cache_app.command("prune")
def cache_prune(directory: Dir = None,
                size: Annotated[str | None, typer.Option("--size", help="Keep at most this much (bytes, or 500M, "
                                                         "2G; default: 2 GiB or a tenth of the free space).",
                                                         show_default=False)] = None) -> None:
    """Delete unreadable snapshots, then the least recently used ones until the cache fits its budget."""
    from edgekit.runtime.prompt_cache import describe, evict, parse_size

    path = _directory(directory)
    bad = [r for r in describe(path) if "problem" in r] if path.is_dir() else []
    for row in bad:
        (path / row["file"]).unlink(missing_ok=True)
    budget = parse_size(size, path)
    n = evict(path, budget) if path.is_dir() else 0
    print(f"Deleted {len(bad)} unreadable and {n} least recently used snapshot{'s' * (n != 1)}; "
          f"budget {budget / 2**20:,.0f} MiB.")
