"""CLI options that several commands share, defined once so their names and help agree."""

from __future__ import annotations

from typing import Annotated

import typer

KvCache = Annotated[str, typer.Option("--kv-cache", help="KV cache type: auto, f16, q8_0, q4_0, or K/V like "
                                      "q8_0/f16.")]
Speculative = Annotated[str, typer.Option("--speculative", help="Speculative decoding (same output, faster on "
                                          "answers that quote their prompt): auto (default: the draft model if "
                                          "given, else draft from the prompt), ngram (from the prompt) or off.")]
Draft = Annotated[str | None, typer.Option("--draft", help="A draft model (GGUF, checkpoint, store name) with the "
                                           "same vocabulary, to propose tokens the model verifies.",
                                           show_default=False)]
PromptCache = Annotated[str | None, typer.Option("--prompt-cache", metavar="DIR|off", help=(
    "Keep long prompts' KV cache on disk so a new process doesn't prefill them again: a directory, or off "
    "(default: EDGEKIT_PROMPT_CACHE, else the user cache dir). See docs/prompt-cache.md."), show_default=False)]
Threads = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads (default: the tuned profile's, else physical cores).",
                                             show_default=False)]
