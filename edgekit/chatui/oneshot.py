"""Non-interactive use: answer one message, print only the answer (or JSON) on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgekit.chatui.context import ChatContext
from edgekit.chatui.repl import finish_turn, report_dropped, stream_turn
from edgekit.chatui.turn import stream_answer

EXIT_INTERRUPTED = 130


def run(ctx: ChatContext, text: str, as_json: bool) -> int:
    """Answer ``text`` once. Exit code 0, or 130 when stopped with Ctrl-C."""
    ctx.interactive = False
    chunks = ctx.chat.stream(text, **ctx.settings.kwargs())
    if not as_json:
        result = stream_turn(ctx, chunks)
        return EXIT_INTERRUPTED if result.interrupted else 0
    dropped = report_dropped(ctx)
    result = stream_answer(chunks, lambda _text: None)
    result.dropped = dropped
    quiet, ctx.quiet = ctx.quiet, True  # the stats go into the JSON, not on stderr
    finish_turn(ctx, result)
    ctx.quiet = quiet
    stats = result.stats
    payload = {
        "model": str(ctx.model.path),
        # the draft model loaded for speculative decoding (None: none); stats.drafted_tokens says whether it drafted
        "draft_model": str(ctx.model.draft.path) if ctx.model.draft is not None else None,
        "answer": result.text,
        "finish_reason": stats.finish_reason if stats is not None else "interrupted",
        "stats": stats.as_dict() if stats is not None else None,
        "settings": ctx.settings.as_dict(),
        "system": ctx.chat.system,
        "dropped": result.dropped,
    }
    sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2, default=_jsonable) + "\n")
    sys.stdout.flush()
    return EXIT_INTERRUPTED if result.interrupted else 0


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    return repr(value)
