"""The interactive chat loop: read a message or a slash command, stream the answer, show stats."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from edgekit.chatui import lineinput, render
from edgekit.chatui.commands import ALIASES, COMMANDS, Action, dispatch, is_command
from edgekit.chatui.context import ChatContext
from edgekit.chatui.settings import PARAMS
from edgekit.chatui.turn import TurnResult, stream_answer
from edgekit.errors import EdgekitError


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def report_dropped(ctx: ChatContext) -> list[dict]:
    """Say on stderr which turns the runtime dropped to fit this turn (never silently)."""
    dropped = [dict(m) for m in ctx.chat.last_dropped]
    if dropped:
        ctx.dropped_total += sum(1 for m in dropped if m.get("role") == "user") or 1
        ctx.warn(render.dropped_notice(dropped))
    return dropped


def finish_turn(ctx: ChatContext, result: TurnResult) -> None:
    """After an answer: say how a stopped answer ended, and show the stats line."""
    if result.interrupted:  # the runtime's Chat kept the partial answer; its prompt cache stays valid
        if not result.text:
            ctx.note("(stopped before the answer began)")
        elif ctx.interactive:
            ctx.note("(stopped: the answer so far is kept in the conversation)")
        else:
            ctx.note("(stopped)")
    if result.stats is not None and not ctx.quiet:
        ctx.note(render.stats_line(result.stats))
    ctx.last = result


def stream_turn(ctx: ChatContext, chunks: Any) -> TurnResult:
    """Stream an answer to stdout and finish the turn.

    ``chunks`` is a runtime stream that has already fitted the conversation to the
    context, so what was dropped is known (and said) before the answer starts.
    """
    dropped = report_dropped(ctx)
    result = stream_answer(chunks, _write)
    result.dropped = dropped
    if result.text and not result.text.endswith("\n"):
        _write("\n")
    finish_turn(ctx, result)
    return result


def _banner(ctx: ChatContext) -> None:
    model = ctx.model
    ctx.note(render.SEP.join([f"edgekit chat: {model.path.name}", f"context {model.n_ctx}",
                                f"KV cache {model.type_k}/{model.type_v}", f"{model.threads} threads"]))
    ctx.note('Type /help for commands, """ for multi-line input, Ctrl-C to stop an answer, Ctrl-D to exit.')


def run(ctx: ChatContext, history_file: Path | None) -> int:
    """Run the REPL until /exit or Ctrl-D; returns the exit code."""
    colour = render.use_colour(sys.stdout)
    prompt = lineinput.prompt_text(">>> ", colour)
    more = lineinput.prompt_text("... ", colour, style="2")
    if not ctx.quiet:
        _banner(ctx)
    lineinput.install_completion(sorted([*COMMANDS, *ALIASES]), list(PARAMS))
    with lineinput.history(history_file):
        while True:
            try:
                text = lineinput.read_message(input, prompt, more)
            except lineinput.Cleared:
                _write("\n")
                continue
            except EOFError:
                _write("\n")
                return 0
            if not text.strip():
                continue
            try:
                if is_command(text):
                    action = dispatch(ctx, text)
                    if action is Action.EXIT:
                        return 0
                    if action is Action.RETRY:
                        stream_turn(ctx, ctx.chat.stream_retry(**ctx.settings.kwargs()))
                    continue
                if text.lstrip().startswith("//"):
                    text = text.lstrip()[1:]
                stream_turn(ctx, ctx.chat.stream(text, **ctx.settings.kwargs()))
            except EdgekitError as exc:
                ctx.warn(f"{exc.message} {exc.hint or ''}".strip())
            except KeyboardInterrupt:  # a late Ctrl-C (e.g. during /load): back to the prompt, never a crash
                _write("\n")
                ctx.note("(interrupted)")
