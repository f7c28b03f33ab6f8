"""Chat templates: the model's own Jinja template from the GGUF, rendered in a sandbox.

A GGUF without a template (base models, files made elsewhere) gets one by name from
:data:`BUILTIN` when its vocabulary holds that template's control tokens (see
:func:`fallback`), else plain completion: never a template whose control tokens the
model doesn't have. The Jinja texts are ours; a test holds each to llama.cpp's built-in
template of the same name (``llama_chat_apply_template``).

Templates come from model files, so they are untrusted code: they run in
jinja2's ImmutableSandboxedEnvironment, with the few helpers Hugging Face
templates expect (``raise_exception``, ``strftime_now``, ``tojson``). Any
failure of the template is a :class:`TemplateError`, and the cheap ways to
exhaust memory are bounded: ``*`` and ``**`` may not build huge values, and the
output may not exceed :data:`MAX_OUTPUT` characters. (Loops nested over large
ranges can still take long; jinja's sandbox caps each range at 100000 items.)
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from edgekit.errors import EdgekitError

# What render() uses when given no template at all (llama.cpp falls back to ChatML too).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA = (
    "{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = ns.system + (message['content'] | trim) + '\n\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n'"
    " + ns.system + (message['content'] | trim) + '<end_of_turn>\n' }}{% set ns.system = '' %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
LLAMA3 = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + (message['content'] | trim) + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
# A base model continues text: each message's text, a blank line before each new turn but the
# model's own (its answer continued the prompt directly, so a follow-up reuses the cache).
COMPLETION = (
    "{% for message in messages %}{% if not loop.first and message['role'] != 'assistant' %}{{ '\n\n' }}{% endif %}"
    "{{ message['content'] }}{% endfor %}"
)

# Templates by llama.cpp's name, with the control tokens each needs, in the order they are tried.
BUILTIN: dict[str, tuple[str, tuple[str, ...]]] = {
    "gemma": (GEMMA, ("<start_of_turn>", "<end_of_turn>")),
    "llama3": (LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "phi3": (PHI3, ("<|user|>", "<|assistant|>", "<|end|>")),
    "chatml": (CHATML, ("<|im_start|>", "<|im_end|>")),
}
# Far beyond any context window (a 128k-token prompt is about 512k characters).
MAX_OUTPUT = 1 << 22
_MAX_POWER_BITS = 1 << 16


class TemplateError(EdgekitError):
    """The chat template failed to render these messages."""


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the model's chat template refused the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _too_big(operator: str, left: Any, right: Any) -> bool:
    """Would ``left <operator> right`` build a value beyond what a prompt could use?"""
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT:
                return True
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        return abs(left).bit_length() * right > _MAX_POWER_BITS
    return False


@lru_cache(maxsize=1)
def _environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            if _too_big(operator, left, right):
                raise TemplateError(f"the model's chat template builds a value too large (with {operator!r})")
            return super().call_binop(context, operator, left, right)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


@lru_cache(maxsize=8)
def _compile(source: str):
    try:
        return _environment().from_string(source)
    # Untrusted code: besides Jinja's syntax errors, its compiler leaves some to Python (a {% break %}
    # outside a loop is a SyntaxError), folds constants ({{ {[]: 1} }} is a TypeError), and a template
    # nested thousands deep exhausts the parser's recursion.
    except Exception as exc:
        raise TemplateError(f"the model's chat template is not valid Jinja: {exc}",
                            "Pass your own template: load(..., chat_template=TEXT) or edgekit chat --chat-template FILE.") from exc


# What --chat-template accepts by name.
TEMPLATE_NAMES = (*BUILTIN, "completion")

# Words in a model's name that say it was tuned to chat (a base model's GGUF has no template for a reason).
CHAT_TUNED = frozenset({"it", "instruct", "chat", "sft", "dpo", "rlhf", "assistant"})
HINT = "Pass --chat-template NAME or FILE (or load(..., chat_template=TEXT)) to use another."


def vocabulary_template(is_control: Callable[[str], bool]) -> str | None:
    """The first of :data:`BUILTIN` whose control tokens are all in the vocabulary (``is_control(text)``)."""
    return next((name for name, (_, needs) in BUILTIN.items() if all(is_control(t) for t in needs)), None)


def looks_chat_tuned(names: list[str]) -> bool:
    """Whether any of a model's names (GGUF ``general.name``, ``general.finetune``, file name) says instruct/chat."""
    return any(word in CHAT_TUNED for name in names for word in re.split(r"[^a-z0-9]+", name.lower()))


def fallback(is_control: Callable[[str], bool], names: list[str]) -> tuple[str, str, str]:
    """(name, template, note) for a model without a chat template.

    A model whose names say it is chat-tuned gets the built-in template its vocabulary's
    control tokens identify; any other model (a base model, or a vocabulary no template fits)
    gets plain completion, since a base model given a chat format only echoes it. Never a
    template whose control tokens the vocabulary lacks.
    """
    found = vocabulary_template(is_control)
    if found is not None and looks_chat_tuned(names):
        return found, BUILTIN[found][0], (f"the model has no chat template; using llama.cpp's {found!r} template, which "
                                          f"its vocabulary ({BUILTIN[found][1][0]}) and name identify. {HINT}")
    if found is not None:
        return "completion", COMPLETION, ("the model has no chat template and its name doesn't say it is chat-tuned, so "
                                          "messages are sent as plain text to complete (a base model). If it is a chat "
                                          f"model, pass --chat-template {found} (its vocabulary fits llama.cpp's {found!r}).")
    return "completion", COMPLETION, ("the model has no chat template and its vocabulary fits none, so messages are "
                                      f"sent as plain text to complete (a base model). {HINT}")


def builtin_template(name: str) -> str | None:
    """The Jinja text of a built-in template by name (``completion`` too), or None."""
    return COMPLETION if name == "completion" else BUILTIN[name][0] if name in BUILTIN else None


def render(source: str | None, messages: list[dict], *, add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "", **extra: Any) -> str:
    """Render ``messages`` (dicts with ``role`` and ``content``) with a chat template."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise EdgekitError(f"message {i} must be a dict with 'role' and 'content'")
    template = _compile(source or CHATML)
    parts: list[str] = []
    size = 0
    try:
        for part in template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                      bos_token=bos_token, eos_token=eos_token, **extra):
            size += len(part)
            if size > MAX_OUTPUT:
                raise TemplateError(f"the model's chat template wrote more than {MAX_OUTPUT} characters")
            parts.append(part)
    except TemplateError:
        raise
    # The template is untrusted code: whatever it raises (jinja's errors, the sandbox's SecurityError,
    # TypeError, ZeroDivisionError, OverflowError, RecursionError from a recursive macro...) is its failure.
    except Exception as exc:
        raise TemplateError(f"the model's chat template failed: {exc}") from exc
    return "".join(parts)
