"""Chat templates: the model's own Jinja template from the GGUF, rendered in a sandbox.

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
from functools import lru_cache
from typing import Any

from edgekit.errors import EdgekitError

# Used when a GGUF carries no template (llama.cpp falls back to ChatML too).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
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
