"""The context of one chat session shared by the REPL and the slash commands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console

from edgekit.chatui.settings import ChatSettings
from edgekit.chatui.turn import TurnResult


@dataclass
class ChatContext:
    """Model, conversation, settings and what the last turn produced."""

    model: Any  # edgekit.Model
    chat: Any  # edgekit.Chat
    settings: ChatSettings
    err: Console  # stderr console: notices, stats, tables
    quiet: bool = False
    colour: bool = False
    interactive: bool = True  # False for one-shot answers (--prompt, piped stdin)
    last: TurnResult | None = None
    dropped_total: int = 0  # user turns dropped to fit, over the whole session

    def note(self, text: str, style: str = "dim") -> None:
        """A notice on stderr (plain text: no rich markup is interpreted)."""
        self.err.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.err.print(text, style="yellow", markup=False, highlight=False, soft_wrap=True)

    def turns(self) -> int:
        """User turns currently kept in the conversation."""
        return sum(1 for m in self.chat.messages if m.get("role") == "user")
