"""The ``edgekit`` command line: a thin typer layer over the library.

Each command lives in its own module and registers itself on :data:`app`.
Command modules import the heavy parts of edgekit (llama.cpp, numpy) only
inside the command function, so ``edgekit --help`` starts fast.
"""

from __future__ import annotations

import os
import sys

import typer

from edgekit.errors import EdgekitError

app = typer.Typer(
    name="edgekit",
    help="Convert Hugging Face checkpoints to GGUF and run them on laptops and Raspberry Pi.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Registration by import: each module adds its command(s) to `app`.
from edgekit.cli import convert_cmd  # noqa: E402,F401

for _optional in ("chat_cmd", "bench_cmd", "eval_cmd", "models_cmd"):
    try:
        __import__(f"edgekit.cli.{_optional}")
    except ModuleNotFoundError as exc:  # a command not written yet
        if exc.name != f"edgekit.cli.{_optional}":
            raise


def fail(message: str, code: int = 1) -> None:
    """Print one error line on stderr and exit."""
    print(message, file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``edgekit`` console script."""
    debug = os.environ.get("EDGEKIT_DEBUG") == "1"
    try:
        app(args=argv, prog_name="edgekit", standalone_mode=True)
    except EdgekitError as exc:
        if debug:
            raise
        line = f"Error: {exc.message}"
        if exc.hint:
            line += f" {exc.hint}"
        fail(line)
    except KeyboardInterrupt:
        if debug:
            raise
        fail("Interrupted. Nothing partial was kept.", 130)
    except OSError as exc:
        if debug:
            raise
        fail(f"Error: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''}). Set EDGEKIT_DEBUG=1 for details.")
