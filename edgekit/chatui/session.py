"""Start a chat: decide interactive or one-shot, load the model with a progress bar, run."""

from __future__ import annotations

import contextlib
import inspect
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.chatui import render
from edgekit.chatui.context import ChatContext
from edgekit.chatui.settings import ChatSettings
from edgekit.errors import EdgekitError, HubUnreachable

SLOW_LOAD_S = 0.7  # show the loading bar only when loading takes longer than this
LOCAL_HINT = "Pass a local model instead: edgekit chat path/to/model.gguf (or a Hugging Face checkpoint dir)."


@dataclass
class ChatOptions:
    """Everything ``edgekit chat`` was asked for on its command line."""

    model: str | None = None
    system: str | None = None
    n_ctx: int | None = None
    kv_cache: str = "auto"
    speculative: str = "auto"
    draft: str | None = None  # a draft model for speculative decoding
    threads: int | None = None
    prompt_cache: str | None = None  # a directory or "off"; None = load()'s "auto"
    chat_template: str | None = None  # template text overriding the model's own
    sampling: dict[str, Any] = field(default_factory=dict)  # None values: keep the default
    logit_bias: dict[int, float] = field(default_factory=dict)  # --logit-bias: for every turn
    prompt: str | None = None
    json: bool = False
    quiet: bool = False


def default_model() -> tuple[str, str]:
    """(model, quant type) used when no MODEL is given: the target model, as the store's default type."""
    from edgekit import store

    return store.DEFAULT_MODEL, store.DEFAULT_QUANT


def load_model(opts: ChatOptions) -> Any:
    """``edgekit.load`` with a progress bar; a friendly line when the Hub is needed but unreachable."""
    import edgekit
    from edgekit.progress import rich_progress

    source, quant = (opts.model, None) if opts.model else default_model()
    kwargs: dict[str, Any] = {"n_ctx": opts.n_ctx, "kv_cache": opts.kv_cache, "speculative": opts.speculative}
    if opts.draft is not None:
        kwargs["draft"] = opts.draft
    if opts.threads is not None:
        kwargs["threads"] = opts.threads
    if opts.prompt_cache is not None:
        kwargs["prompt_cache"] = opts.prompt_cache
    if opts.chat_template is not None:
        kwargs["chat_template"] = opts.chat_template
    if quant is not None and "quant" in inspect.signature(edgekit.load).parameters:
        kwargs["quant"] = quant
    try:
        with contextlib.ExitStack() as stack:
            bars: list[Any] = []
            start = time.monotonic()

            def progress(stage: str, done: int, total: int) -> None:
                # Draw bars only once there is something worth showing: a conversion, or a
                # load that is slow (SD card on a Pi). A GGUF that loads in a blink leaves
                # no bar and no cursor codes behind.
                if not bars:
                    slow = time.monotonic() - start > SLOW_LOAD_S and (not total or done < total)
                    if stage == "load" and not slow:
                        return
                    # Off a terminal rich draws no live bars, only stray newlines: skip them.
                    show = not opts.quiet and sys.stderr.isatty()
                    bars.append(stack.enter_context(rich_progress(enabled=show)))
                if bars[0] is not None:
                    bars[0](stage, done, total)

            return edgekit.load(source, progress=progress, **kwargs)
    except HubUnreachable as exc:
        if opts.model:
            raise HubUnreachable(exc.message, exc.hint or LOCAL_HINT) from None
        raise HubUnreachable(f"The default model {source} is not cached yet and the Hugging Face Hub "
                             "can't be reached (offline?).", LOCAL_HINT) from None


def _read_stdin() -> str | None:
    """Text piped on stdin, or None on a terminal."""
    if sys.stdin is None or sys.stdin.isatty():
        return None
    return sys.stdin.read()


def _one_shot_message(prompt: str | None, piped: str | None) -> str:
    parts = [p.strip("\n") for p in (prompt, piped) if p and p.strip()]
    if not parts:
        raise EdgekitError("Nothing to answer: the prompt and stdin are empty.",
                           "Pass --prompt TEXT, pipe text in, or run edgekit chat in a terminal.")
    return "\n\n".join(parts)


def run(opts: ChatOptions) -> int:
    """Run ``edgekit chat``; returns the exit code."""
    settings = ChatSettings.defaults()
    settings.update(**{k: v for k, v in opts.sampling.items() if v is not None})
    piped = _read_stdin()
    one_shot = opts.prompt is not None or piped is not None
    if opts.json and not one_shot:
        raise EdgekitError("--json needs a message to answer.", "Pass --prompt TEXT or pipe text on stdin.")
    message = _one_shot_message(opts.prompt, piped) if one_shot else ""

    model = load_model(opts)
    from edgekit import Chat

    bias = {"logit_bias": opts.logit_bias} if opts.logit_bias else {}
    chat = Chat(model, system=opts.system, **bias, **settings.kwargs())
    ctx = ChatContext(model=model, chat=chat, settings=settings, err=render.stderr_console(),
                      quiet=opts.quiet, colour=render.use_colour(sys.stderr))
    note = getattr(model.plan, "note", "")
    if note and not opts.quiet:  # e.g. a stale tuned profile was ignored: say so once
        ctx.note(f"Note: {note}.")
    if getattr(model, "template_note", ""):  # no chat template in the model: say which one is used, once
        ctx.warn(f"Warning: {model.template_note}")
    try:
        if one_shot:
            from edgekit.chatui import oneshot

            return oneshot.run(ctx, message, opts.json)
        from edgekit.chatui import repl

        return repl.run(ctx, history_path())
    finally:
        model.close()


def history_path() -> Path | None:
    """The readline history file in the user's data dir."""
    try:
        from edgekit.paths import data_dir

        return data_dir() / "chat_history"
    except Exception:  # an unwritable data dir must not stop the chat
        return None
