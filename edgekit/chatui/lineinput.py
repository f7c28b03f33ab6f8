"""Reading the user's input: readline editing, a history file, and ``\"\"\"`` multi-line blocks.

Ctrl-C at the prompt clears the line (the caller sees :class:`Cleared`), Ctrl-D
ends the session (``EOFError``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

FENCE = '"""'
HISTORY_LENGTH = 2000


class Cleared(Exception):
    """The user pressed Ctrl-C at the prompt: drop the line, ask again."""


def _readline():
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline: plain input() still works
        return None
    return readline


@contextlib.contextmanager
def history(path: Path | None) -> Iterator[None]:
    """Load the history file (if any) and save it back on exit."""
    rl = _readline()
    if rl is None or path is None:
        yield
        return
    with contextlib.suppress(OSError):
        rl.read_history_file(str(path))
    rl.set_history_length(HISTORY_LENGTH)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            rl.write_history_file(str(path))


def install_completion(commands: list[str], params: list[str]) -> None:
    """Tab-complete slash commands, and parameter names after ``/set``."""
    rl = _readline()
    if rl is None:
        return

    def complete(text: str, index: int) -> str | None:
        line = rl.get_line_buffer().lstrip()
        words = line.split(" ")
        if len(words) == 1 and line.startswith("/"):
            options = [c for c in commands if c.startswith(text)]
        elif len(words) == 2 and words[0] == "/set":
            options = [p + " " for p in params if p.startswith(text)]
        else:
            options = []
        return options[index] if index < len(options) else None

    rl.set_completer(complete)
    rl.set_completer_delims(" \t\n")
    # macOS ships libedit under the readline name; it takes another binding syntax
    rl.parse_and_bind("bind ^I rl_complete" if "libedit" in (rl.__doc__ or "") else "tab: complete")


def prompt_text(text: str, colour: bool, style: str = "1;32") -> str:
    """A prompt string; escape codes are wrapped in \\001/\\002 so readline measures its width right."""
    if not colour:
        return text
    return f"\001\033[{style}m\002{text}\001\033[0m\002"


def read_message(ask: Callable[[str], str], prompt: str, more: str) -> str:
    """Read one message: a line, or a block between triple quotes.

    ``ask`` is ``input``-like. Raises :class:`Cleared` on Ctrl-C and EOFError on Ctrl-D.
    A block is opened by a line starting with ``\"\"\"`` and closed by a line ending with it.
    """
    try:
        line = ask(prompt)
    except KeyboardInterrupt:
        raise Cleared from None
    stripped = line.strip()
    if not stripped.startswith(FENCE):
        return line
    body = stripped[len(FENCE):]
    if len(stripped) >= 2 * len(FENCE) and body.endswith(FENCE):  # """one line"""
        return body[: -len(FENCE)].strip()
    lines = [body] if body else []
    while True:
        try:
            line = ask(more)
        except KeyboardInterrupt:
            raise Cleared from None
        if line.rstrip().endswith(FENCE):
            last = line.rstrip()[: -len(FENCE)]
            if last:
                lines.append(last)
            return "\n".join(lines)
        lines.append(line)
