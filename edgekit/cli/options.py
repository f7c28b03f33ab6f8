"""CLI options that several commands share, defined once so their names and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.runtime.template import TEMPLATE_NAMES

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
ChatTemplate = Annotated[Path | None, typer.Option("--chat-template", help="A Jinja chat template file to use "
                                                  "instead of the model's own, or a built-in one by name: "
                                                  f"{', '.join(TEMPLATE_NAMES)}.", show_default=False)]
LogitBias = Annotated[list[str] | None, typer.Option("--logit-bias", metavar="TOKEN_ID=BIAS", help=(
    "Add BIAS (-100..100) to a token's logit before sampling; repeatable. 100 forces the token, -100 bans it "
    "(as llama.cpp's --logit-bias and the API's logit_bias)."), show_default=False, rich_help_panel="Sampling")]


def parse_logit_bias(values: list[str]) -> dict[int, float]:
    """``--logit-bias`` values (``ID=BIAS``, e.g. ``151645=100`` or ``13=-100``) as a logit_bias mapping."""
    from edgekit.errors import EdgekitError

    bias: dict[int, float] = {}
    for value in values:
        token, sep, amount = value.partition("=")
        try:
            if not sep:
                raise ValueError
            bias[int(token)] = float(amount)
        except ValueError:
            raise EdgekitError(f"Bad --logit-bias {value!r}.", "Write TOKEN_ID=BIAS, e.g. 151645=100 or 13=-100.") from None
    return bias


def read_chat_template(path: Path) -> str:
    """The template text of ``--chat-template``: a built-in one by name (unless a file has that name), else the file."""
    from edgekit.errors import EdgekitError
    from edgekit.runtime.template import builtin_template

    builtin = builtin_template(str(path))
    if builtin is not None and not path.exists():
        return builtin
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgekitError(f"the chat template file {path} does not exist",
                           f"Pass the path of a Jinja file, or a built-in template's name: {', '.join(TEMPLATE_NAMES)}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"can't read the chat template file {path}: {exc}") from None
