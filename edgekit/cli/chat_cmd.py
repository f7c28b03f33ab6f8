"""``edgekit chat``: talk to a model in the terminal, or answer once for scripts.

Only argument parsing lives here; the work is in :mod:`edgekit.chatui`, which is
imported inside the command so ``edgekit --help`` never loads llama.cpp.
"""

from __future__ import annotations

from typing import Annotated

import typer

from edgekit.cli.options import (
    ChatTemplate,
    Draft,
    KvCache,
    LogitBias,
    PromptCache,
    Speculative,
    Threads,
    parse_logit_bias,
    read_chat_template,
)

_SAMPLING = "Sampling"
_OUTPUT = "Output"


def chat(
    model: Annotated[str | None, typer.Argument(
        help="GGUF file, Hugging Face checkpoint dir or repo id (converted once and cached), or a store name. "
             "Default: terasut/gkd-qwen-2.5-0.5b-base_v4_from3b_eff32.", show_default=False)] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    ctx: Annotated[int | None, typer.Option("--ctx", "-c", min=64, help="Context size in tokens "
                                            "(default: the model's trained context, planned to fit memory).",
                                            show_default=False)] = None,
    kv_cache: KvCache = "auto",
    speculative: Speculative = "auto",
    draft: Draft = None,
    threads: Threads = None,
    prompt_cache: PromptCache = None,
    chat_template: ChatTemplate = None,
    temp: Annotated[float | None, typer.Option("--temp", "-t", min=0.0, help="Temperature (0 = greedy).",
                                               rich_help_panel=_SAMPLING)] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.",
                                                rich_help_panel=_SAMPLING)] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=0, help="Top-k sampling (0 = off).",
                                              rich_help_panel=_SAMPLING)] = None,
    min_p: Annotated[float | None, typer.Option("--min-p", min=0.0, max=1.0, help="Min-p sampling.",
                                                rich_help_panel=_SAMPLING)] = None,
    repeat_penalty: Annotated[float | None, typer.Option("--repeat-penalty", help="Repetition penalty (1 = off).",
                                                         rich_help_panel=_SAMPLING)] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Random seed (same seed, same answer).",
                                             rich_help_panel=_SAMPLING)] = None,
    logit_bias: LogitBias = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", "-n", min=0, help="Maximum tokens per answer "
                                                   "(default 1024; 0 = until the model stops).", show_default=False,
                                                   rich_help_panel=_SAMPLING)] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Answer this once and exit (piped stdin "
                                               "works too, and is appended).", rich_help_panel=_OUTPUT)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the answer and its stats as JSON "
                                           "(with --prompt or piped input).", rich_help_panel=_OUTPUT)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No banner, progress bar or stats lines.",
                                        rich_help_panel=_OUTPUT)] = False,
) -> None:
    """Chat with a model in the terminal, or answer one prompt for scripts.

    Type /help inside the chat for the slash commands (/reset, /system, /set, /stats,
    /context, /save, /load, /retry, /exit). Use \"\"\" ... \"\"\" for multi-line input.
    """
    from edgekit.chatui.session import ChatOptions, run

    template = read_chat_template(chat_template) if chat_template is not None else None
    if max_tokens == 0:
        max_tokens = "none"  # type: ignore[assignment]  # parsed by the settings table: no limit
    sampling = {"temperature": temp, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                "repeat_penalty": repeat_penalty, "seed": seed, "max_tokens": max_tokens}
    opts = ChatOptions(model=model, system=system, n_ctx=ctx, kv_cache=kv_cache, speculative=speculative,
                       draft=draft, threads=threads, prompt_cache=prompt_cache, chat_template=template, sampling=sampling, prompt=prompt, json=json_out,
                       quiet=quiet, logit_bias=parse_logit_bias(logit_bias or []))
    code = run(opts)
    if code:
        # SystemExit, not typer.Exit: main() reads a returned 130 as "interrupted, nothing kept",
        # but a stopped one-shot answer was printed (and that is what 130 says here).
        raise SystemExit(code)
