"""Slash commands of the chat REPL: one small function each, found through a table."""

from __future__ import annotations

import difflib
import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit.chatui import render
from edgekit.chatui.context import ChatContext
from edgekit.chatui.settings import NONE_SHOWN, PARAMS, ChatSettings, parse_assignment
from edgekit.errors import EdgekitError


class Action(enum.Enum):
    CONTINUE = "continue"
    EXIT = "exit"
    RETRY = "retry"


@dataclass(frozen=True)
class Command:
    run: Callable[[ChatContext, str], Action]
    usage: str
    help: str


COMMANDS: dict[str, Command] = {}
ALIASES = {"/quit": "/exit", "/bye": "/exit", "/q": "/exit", "/?": "/help", "/clear": "/reset"}


def command(name: str, usage: str, help: str) -> Callable:
    def register(fn: Callable[[ChatContext, str], Action]) -> Callable[[ChatContext, str], Action]:
        COMMANDS[name] = Command(fn, usage, help)
        return fn

    return register


def is_command(text: str) -> bool:
    """A line is a command when it starts with one slash (``//text`` sends ``/text``)."""
    stripped = text.lstrip()
    return stripped.startswith("/") and not stripped.startswith("//")


def dispatch(ctx: ChatContext, line: str) -> Action:
    """Run the slash command in ``line``; unknown commands get a hint."""
    name, _, arg = line.strip().partition(" ")
    name = ALIASES.get(name.lower(), name.lower())
    cmd = COMMANDS.get(name)
    if cmd is None:
        close = difflib.get_close_matches(name, [*COMMANDS, *ALIASES], n=1, cutoff=0.5)
        close = [ALIASES.get(c, c) for c in close]
        hint = f"Did you mean {close[0]}? " if close else ""
        ctx.warn(f"Unknown command {name}. {hint}Type /help for the list (start with // to send a '/').")
        return Action.CONTINUE
    try:
        return cmd.run(ctx, arg.strip())
    except EdgekitError as exc:
        ctx.warn(f"{exc.message} {exc.hint or ''}".strip())
        return Action.CONTINUE


@command("/help", "/help", "show this help")
def _help(ctx: ChatContext, arg: str) -> Action:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for cmd in COMMANDS.values():
        table.add_row(cmd.usage, cmd.help)
    ctx.err.print(table)
    ctx.note('Multi-line input: start with """ and end with """. Ctrl-C stops an answer '
               "or clears the line; Ctrl-D exits. Start a line with // to send text beginning with '/'.")
    return Action.CONTINUE


@command("/reset", "/reset", "forget the conversation (the system prompt stays)")
def _reset(ctx: ChatContext, arg: str) -> Action:
    ctx.chat.reset()
    ctx.last = None
    ctx.note("Conversation cleared; the system prompt is kept.")
    return Action.CONTINUE


@command("/system", "/system [TEXT | -]", "show, set, or clear (-) the system prompt")
def _system(ctx: ChatContext, arg: str) -> Action:
    if not arg:
        current = ctx.chat.system
        ctx.note(f"System prompt: {current}" if current else "No system prompt set.")
        return Action.CONTINUE
    ctx.chat.system = None if arg in ("-", '""', "''") else arg
    ctx.note("System prompt cleared." if ctx.chat.system is None else "System prompt set.")
    return Action.CONTINUE


@command("/set", "/set [PARAM VALUE]", "change a setting: " + ", ".join(PARAMS) + " (no args: show all)")
def _set(ctx: ChatContext, arg: str) -> Action:
    parts = arg.split()
    if not parts:
        for name, value in ctx.settings.as_dict().items():
            ctx.note(f"{name} = {NONE_SHOWN.get(name) if value is None else value}")
        return Action.CONTINUE
    if len(parts) != 2:
        raise EdgekitError("Usage: /set PARAM VALUE", f"Parameters: {', '.join(PARAMS)}.")
    name, value = parse_assignment(parts[0], parts[1])
    setattr(ctx.settings, name, value)
    _sync_settings(ctx)
    ctx.note(f"{name} = {NONE_SHOWN.get(name) if value is None else value}")
    return Action.CONTINUE


def _sync_settings(ctx: ChatContext) -> None:
    """Keep the session's own sampling defaults (saved by /save) in step with /set."""
    ctx.chat.sampling = ctx.chat.sampling.replace(**ctx.settings.kwargs())


@command("/stats", "/stats", "the last turn's full stats, the memory plan and memory use")
def _stats(ctx: ChatContext, arg: str) -> Action:
    if ctx.last is None or ctx.last.stats is None:
        ctx.note("No completed turn yet." if ctx.last is None else "The last answer was stopped early.")
    else:
        ctx.err.print(render.stats_table(ctx.last.stats))
    ctx.err.print(render.memory_table(ctx.model))
    return Action.CONTINUE


@command("/context", "/context", "how full the context is and how many turns are kept")
def _context(ctx: ChatContext, arg: str) -> Action:
    system = ctx.chat.system
    sys_tokens = ctx.model.count_tokens(system) if system else None
    ctx.err.print(render.context_report(ctx.chat.context_used(), ctx.chat.context_size,
                                          ctx.turns(), ctx.dropped_total, sys_tokens),
                    markup=False, highlight=False)
    return Action.CONTINUE


def _file_arg(arg: str, usage: str) -> Path:
    if not arg:
        raise EdgekitError(f"Usage: {usage}", f"For example: {usage.split()[0]} chat.json")
    return Path(arg).expanduser()


@command("/save", "/save FILE", "save the conversation and its settings as JSON (and the KV state beside it)")
def _save(ctx: ChatContext, arg: str) -> Action:
    path = _file_arg(arg, COMMANDS["/save"].usage)
    _sync_settings(ctx)  # the saved JSON carries the session's sampling settings
    ctx.chat.save(path, with_state=True)
    kv = path.with_name(path.name + ".kv")
    extra = f" (KV state in {kv.name})" if kv.is_file() else ""
    ctx.note(f"Saved {ctx.turns()} turn(s) to {path}{extra}.")
    return Action.CONTINUE


@command("/load", "/load FILE", "resume a saved conversation with its settings (and KV state)")
def _load(ctx: ChatContext, arg: str) -> Action:
    path = _file_arg(arg, COMMANDS["/load"].usage)
    if not path.is_file():
        raise EdgekitError(f"No such file: {path}.", "Give the path written by /save.")
    from edgekit import Chat

    chat = Chat.load(ctx.model, path)
    settings = ChatSettings.from_dict(chat.sampling.as_dict())  # refuses values /set would refuse
    ctx.chat, ctx.settings, ctx.last = chat, settings, None
    kv = " (KV state restored)" if chat.state_restored else ""
    ctx.note(f"Loaded {ctx.turns()} turn(s) from {path}{kv}.")
    last_user = next((m for m in reversed(chat.messages) if m.get("role") == "user"), None)
    if last_user is not None:
        ctx.note(f"Last message: {render.snippet(last_user.get('content', ''), 70)}")
    return Action.CONTINUE


@command("/retry", "/retry", "regenerate the last answer")
def _retry(ctx: ChatContext, arg: str) -> Action:
    if not any(m.get("role") == "assistant" for m in ctx.chat.messages):
        ctx.note("Nothing to retry yet.")
        return Action.CONTINUE
    return Action.RETRY


@command("/exit", "/exit", "leave (also /quit, /bye, Ctrl-D)")
def _exit(ctx: ChatContext, arg: str) -> Action:
    return Action.EXIT
