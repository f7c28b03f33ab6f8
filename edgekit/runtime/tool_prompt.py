"""Rendering tools and tool turns into a chat prompt: the call markers, and the two styles.

A chat template in the Hermes/Qwen2.5 style (it reads a ``tools`` variable and writes ``<tool_call>``
tags) renders the tools, the assistant's earlier calls and the ``tool`` results itself. Any other template
gets the tools as a system-prompt block that spells out the same call format, and earlier calls and
results as plain text. Both styles use one wire format, so one grammar and one parser
(:mod:`edgekit.runtime.tools`) serve every model::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
"""

from __future__ import annotations

import json
from typing import Any, Literal

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"

Style = Literal["hermes", "prompt"]

# The system-prompt block for templates that can't render tools themselves.
PROMPT_TOOLS = """You can call functions (tools). Each one is described by a JSON schema of its arguments:
<tools>
{tools}
</tools>

To call a function, answer with one JSON object per call inside <tool_call></tool_call> tags:
<tool_call>
{{"name": "<function name>", "arguments": {{<the arguments as a JSON object>}}}}
</tool_call>
The results come back inside <tool_response></tool_response> tags."""


def template_style(template: str | None) -> Style:
    """How ``template`` handles tools: ``"hermes"`` if it renders them itself, else ``"prompt"``.

    Hermes-style templates (Qwen2.5, Qwen3, Hermes 2/3, SmolLM3) read a ``tools`` variable and write
    ``<tool_call>`` tags; edgekit's own parser reads exactly those.
    """
    return "hermes" if template and "tools" in template and CALL_OPEN in template else "prompt"


def _arguments_object(arguments: Any) -> Any:
    """A call's arguments as an object: OpenAI sends JSON text, Hermes-style templates expect a mapping."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            return arguments
    return arguments


def _calls_of(message: dict) -> list[tuple[str, Any]]:
    """(name, arguments object) of each call in an assistant message's ``tool_calls``."""
    calls = []
    tool_calls = message.get("tool_calls")
    for call in tool_calls if isinstance(tool_calls, list) else []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        fn = fn if isinstance(fn, dict) else {}
        calls.append((fn.get("name", ""), _arguments_object(fn.get("arguments", {}))))
    return calls


def call_text(name: str, arguments: Any) -> str:
    """One call in the wire format both styles use."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def _hermes_messages(messages: list) -> list:
    """Messages as Hermes-style templates read them: arguments as mappings, no None content."""
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls"):
            calls = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in _calls_of(m)]
            m = {**m, "content": m.get("content") or "", "tool_calls": calls}
        elif isinstance(m, dict) and m.get("content", "") is None:
            m = {**m, "content": ""}
        out.append(m)
    return out


def _prompt_messages(messages: list) -> list:
    """Messages for a template without tool support: calls as text, results as user turns in tags."""
    out: list = []
    after_result = False
    for m in messages:
        is_result = isinstance(m, dict) and m.get("role") == "tool"
        if is_result:
            result = f"{RESULT_OPEN}\n{m.get('content') or ''}\n{RESULT_CLOSE}"
            if after_result:  # results of one round of calls share one user turn, as Qwen2.5 renders them
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result})
        elif isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls"):
            parts = [m["content"]] if m.get("content") else []
            parts += [call_text(n, a) for n, a in _calls_of(m)]
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif isinstance(m, dict) and m.get("content", "") is None:
            out.append({**m, "content": ""})
        else:
            out.append(m)
        after_result = is_result
    return out


def tools_system_block(tools: list[dict]) -> str:
    """The system-prompt text that describes ``tools`` to a model whose template can't render them."""
    return PROMPT_TOOLS.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def chat_inputs(template: str | None, messages: list, checked: list[dict]) -> tuple[list, dict[str, Any]]:
    """Messages and extra template variables that render ``checked`` tools (already checked by
    :func:`edgekit.runtime.tools.check_tools`) and tool turns with ``template``.

    Messages without tool calls or tool results pass through unchanged.
    """
    if template_style(template) == "hermes":
        return _hermes_messages(messages), ({"tools": checked} if checked else {})
    out = _prompt_messages(messages)
    if checked:
        block = tools_system_block(checked)
        first = out[0] if out else None
        if isinstance(first, dict) and first.get("role") == "system":
            out[0] = {**first, "content": f"{first.get('content') or ''}\n\n{block}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out, {}
