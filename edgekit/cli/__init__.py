"""The ``edgekit`` command line: a thin typer layer over the library.

Each command is a plain function in its own ``*_cmd`` module (``bench`` is a
sub-app); this module alone assembles them into :data:`app`, so the command
modules never import this package. They import the heavy parts of edgekit
(llama.cpp, numpy) only inside the command function, so ``edgekit --help``
starts fast.
"""

from __future__ import annotations

import os
import sys

import typer

from edgekit.cli import (
    bench_cmd,
    cache_cmd,
    chat_cmd,
    convert_cmd,
    demo_cmd,
    eval_cmd,
    models_cmd,
    serve_cmd,
    tune_cmd,
)
from edgekit.errors import EdgekitError

app = typer.Typer(
    name="edgekit",
    help="Convert Hugging Face checkpoints to GGUF and run them on laptops and Raspberry Pi.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("chat")(chat_cmd.chat)
app.command("convert")(convert_cmd.convert)
app.command("demo")(demo_cmd.demo)
app.command("eval")(eval_cmd.eval_command)
app.command("models")(models_cmd.models)
app.command("serve")(serve_cmd.serve)
app.command("tune")(tune_cmd.tune)
app.add_typer(bench_cmd.bench_app, name="bench")
app.add_typer(cache_cmd.cache_app, name="cache")


def fail(message: str, code: int = 1) -> None:
    """Print one error line on stderr and exit."""
    print(message, file=sys.stderr)
    raise SystemExit(code)


def _is_click(exc: BaseException, name: str) -> bool:
    # typer >= 0.20 vendors its own click; match click's exceptions by name so either works.
    return any(cls.__name__ == name and "click" in cls.__module__ for cls in type(exc).__mro__)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``edgekit`` console script."""
    debug = os.environ.get("EDGEKIT_DEBUG") == "1"
    try:
        code = app(args=argv, prog_name="edgekit", standalone_mode=False)
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
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"Error: {exc.strerror or exc}{where}. Set EDGEKIT_DEBUG=1 for details.")
    except Exception as exc:
        interrupted = isinstance(exc.__cause__, KeyboardInterrupt)
        if _is_click(exc, "Abort") or interrupted:  # click/typer turn Ctrl-C into Abort or Exit(130)
            if debug:
                raise
            fail("Interrupted. Nothing partial was kept.", 130)
        if _is_click(exc, "Exit"):
            raise SystemExit(exc.exit_code) from None  # type: ignore[attr-defined]
        if _is_click(exc, "ClickException"):  # usage errors: click's own message and exit code
            exc.show()  # type: ignore[attr-defined]
            raise SystemExit(exc.exit_code) from None  # type: ignore[attr-defined]
        raise
    if code == 130:  # typer turns Ctrl-C into Exit(130) and, outside standalone mode, returns it
        fail("Interrupted. Nothing partial was kept.", 130)
    raise SystemExit(code if isinstance(code, int) else 0)
