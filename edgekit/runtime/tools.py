"""Tool calls and structured output with OpenAI's semantics, for the server and the Python API (no HTTP).

- **Rendering** is :mod:`edgekit.runtime.tool_prompt`'s (used by ``Model.render_chat``).
- **tool_choice.** ``"none"``: the tools are not shown and nothing is parsed (the model answers in
  text, as OpenAI's does). ``"auto"``: the model may call; its output is parsed. ``"required"`` and a
  named function: a GBNF grammar, built from the functions' JSON-schema parameters, forces one or
  more calls (exactly one call of the named function).
- **Parsing.** Output becomes ``content`` plus :class:`ToolCall` s whose ``arguments`` are JSON text
  of an object. A block that doesn't parse, or names an unknown function, stays in the content.
  :class:`ToolCallStream` does the same on streamed text, sending content as soon as it can't be the
  start of a call.
- **response_format.** :func:`response_format_options` turns OpenAI's ``response_format`` into
  :class:`~edgekit.Sampling` options (a JSON schema enforced by grammar).

Both rendering styles use one wire format, so one grammar and one parser serve every model::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.errors import InvalidParam
from edgekit.runtime.sampling import schema_grammar
from edgekit.runtime.tool_prompt import CALL_CLOSE, CALL_OPEN

if TYPE_CHECKING:
    from edgekit.runtime.model import Model
    from edgekit.runtime.sampling import Sampling
    from edgekit.stats import Completion

CHOICES = ("none", "auto", "required")
# OpenAI's rule for function names.
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NO_PARAMETERS = {"type": "object", "properties": {}}
# Forced parallel calls stop here: small models tend to repeat a call until max_tokens, which would
# leave the last one cut off. Eight covers real fan-outs.
MAX_FORCED_CALLS = 8



# -- checking a request ------------------------------------------------------------------------------------


def check_tools(tools: Any) -> list[dict]:
    """OpenAI's ``tools`` list, checked: ``[{"type": "function", "function": {"name", "description"?,
    "parameters"?}}]``. Returns plain copies; raises :class:`InvalidParam` naming the bad field."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidParam("tools", "must be a list of function tools")
    out: list[dict] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise InvalidParam(where, 'must be {"type": "function", "function": {"name": ..., "parameters": ...}}')
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            raise InvalidParam(f"{where}.function.name", "must be 1 to 64 letters, digits, '_' or '-'")
        if name in seen:
            raise InvalidParam(f"{where}.function.name", f"the function {name!r} is defined twice")
        seen.add(name)
        if not isinstance(fn.get("description", ""), str):
            raise InvalidParam(f"{where}.function.description", "must be a string")
        if not isinstance(fn.get("parameters", {}), dict):
            raise InvalidParam(f"{where}.function.parameters", "must be a JSON schema (an object)")
        out.append({"type": "function", "function": {k: fn[k] for k in ("name", "description", "parameters")
                                                       if k in fn}})
    return out


def _function_names(tools: list[dict]) -> list[str]:
    return [t["function"]["name"] for t in tools]


@dataclass(frozen=True)
class ToolRequest:
    """One request's ``tools``, ``tool_choice`` and ``parallel_tool_calls``, checked (:func:`tool_request`).

    ``choice`` is ``"none"``, ``"auto"``, ``"required"`` or ``"function"`` (then ``function`` names it).
    """

    tools: list[dict] = field(default_factory=list)
    choice: str = "none"
    function: str | None = None
    parallel: bool = True

    @property
    def active(self) -> bool:
        """Whether the model is offered the tools (and its output is parsed for calls)."""
        return bool(self.tools) and self.choice != "none"

    @property
    def prompt_tools(self) -> list[dict] | None:
        """The tools to render into the prompt (``Model.chat_tokens(messages, tools=...)``), or None."""
        return self.tools if self.active else None

    def grammar(self) -> str | None:
        """GBNF that forces the call(s) for ``"required"`` or a named function; None otherwise."""
        if not self.active or self.choice == "auto":
            return None
        return call_grammar(self.tools, only=self.function, parallel=self.parallel and self.choice == "required")

    def sampling_options(self) -> dict[str, Any]:
        """Options to pass to ``generate``/``Sampling`` (the grammar, when calls are forced)."""
        gbnf = self.grammar()
        return {"grammar": gbnf} if gbnf else {}

    def parse(self, text: str) -> ToolReply:
        """Split the model's ``text`` into content and tool calls (no calls unless :attr:`active`;
        at most one without :attr:`parallel`)."""
        return parse_tool_calls(text, _function_names(self.tools) if self.active else [], self._max_calls)

    def stream(self) -> ToolCallStream:
        """A :class:`ToolCallStream` for this request's streamed output."""
        return ToolCallStream(_function_names(self.tools) if self.active else [], self._max_calls)

    @property
    def _max_calls(self) -> int | None:
        return None if self.parallel else 1


def tool_request(tools: Any = None, tool_choice: Any = None, parallel_tool_calls: Any = None) -> ToolRequest:
    """Check OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` into a :class:`ToolRequest`.

    As with OpenAI, ``tool_choice`` defaults to ``"auto"`` when tools are given and ``"none"`` otherwise,
    and ``"required"`` or a named function without tools is an error.
    """
    checked = check_tools(tools)
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InvalidParam("parallel_tool_calls", "must be true or false")
    parallel = parallel_tool_calls is not False
    if tool_choice is None:
        return ToolRequest(checked, "auto" if checked else "none", None, parallel)
    if isinstance(tool_choice, str):
        if tool_choice not in CHOICES:
            raise InvalidParam("tool_choice", f"must be one of {', '.join(CHOICES)} or a named function, "
                                              f"not {tool_choice!r}")
        if tool_choice == "required" and not checked:
            raise InvalidParam("tool_choice", "'required' needs tools")
        return ToolRequest(checked, tool_choice, None, parallel)
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) and tool_choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise InvalidParam("tool_choice", 'must be "none", "auto", "required" or '
                                          '{"type": "function", "function": {"name": ...}}')
    if name not in _function_names(checked):
        raise InvalidParam("tool_choice", f"names the function {name!r}, which is not among the tools")
    return ToolRequest(checked, "function", name, parallel)


# -- grammar -------------------------------------------------------------------------------------------------

# GBNF lexemes: string literals, character classes, repetition braces and comments pass through;
# bare words are rule names.
_GBNF_PART = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{[^}]*\}|#[^\n]*|([A-Za-z0-9_-]+)|.', re.S)


def _prefixed(gbnf: str, prefix: str) -> str:
    """``gbnf`` with every rule name prefixed, so several converted schemas can share one grammar."""
    return _GBNF_PART.sub(lambda m: prefix + m.group(1) if m.group(1) else m.group(0), gbnf)


def call_grammar(tools: list[dict], *, only: str | None = None, parallel: bool = True) -> str:
    """GBNF that accepts one call (with ``parallel``, 1 to :data:`MAX_FORCED_CALLS`) of ``tools`` (or just ``only``)."""
    rules: list[str] = []
    alternatives: list[str] = []
    for i, tool in enumerate(tools):
        fn = tool["function"]
        if only is not None and fn["name"] != only:
            continue
        params = fn.get("parameters") or _NO_PARAMETERS
        rules.append(_prefixed(schema_grammar(params, f"tools[{i}].function.parameters"), f"tool{i}-"))
        head = f'{CALL_OPEN}\n{{"name": {json.dumps(fn["name"])}, "arguments": '
        tail = f"}}\n{CALL_CLOSE}"
        # json.dumps writes a valid GBNF literal: both escape \" \\ \n and \uXXXX the same way.
        rules.append(f"call{i} ::= {json.dumps(head)} tool{i}-root {json.dumps(tail)}")
        alternatives.append(f"call{i}")
    if not alternatives:
        raise InvalidParam("tool_choice", "names no function among the tools")
    rules.append(f"call ::= {' | '.join(alternatives)}")
    more = f'("\\n" call){{0,{MAX_FORCED_CALLS - 1}}}' if parallel else ""
    rules.append(f"root ::= call {more}".rstrip())
    return "\n".join(rules) + "\n"


# -- parsing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: ``arguments`` is JSON text of an object, as OpenAI sends it."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def as_dict(self) -> dict[str, Any]:
        """OpenAI's shape: ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolReply:
    """The model's output split into ``content`` (None when there is only calls) and ``tool_calls``."""

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    completion: Completion | None = None  # set by :func:`chat`

    @property
    def finish_reason(self) -> str:
        """OpenAI's finish reason: ``"tool_calls"`` when there are calls, else the completion's."""
        if self.tool_calls:
            return "tool_calls"
        reason = self.completion.finish_reason if self.completion else "stop"
        return "length" if reason == "length" else "stop"


# A block runs to its closing tag, the next opening tag, or the end of the text.
_CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + "|(?=" + re.escape(CALL_OPEN)
                         + r")|\Z)", re.S)


def _parse_call(body: str, names: list[str]) -> ToolCall | None:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters"))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def parse_tool_calls(text: str, names: list[str], max_calls: int | None = None) -> ToolReply:
    """Split ``text`` into content and calls of the functions ``names``.

    Without calls the content is ``text`` unchanged. With calls it is the text around them, the first
    piece right-stripped and the others stripped, joined by newlines (None if empty); that way
    :class:`ToolCallStream` can send it before the calls are known. Calls beyond ``max_calls``
    (``parallel_tool_calls: false`` allows one) are dropped, blocks and all.
    """
    calls: list[ToolCall] = []
    pieces: list[str] = []
    pos = 0
    for m in _CALL_BLOCK.finditer(text) if names else ():
        call = _parse_call(m.group(1), names)
        if call is not None:
            pieces.append(text[pos:m.start()])
            if max_calls is None or len(calls) < max_calls:
                calls.append(call)
            pos = m.end()
    if not calls:
        return ToolReply(text)
    pieces.append(text[pos:])
    kept = [pieces[0].rstrip()] + [p.strip() for p in pieces[1:]]
    content = "\n".join(p for p in kept if p)
    return ToolReply(content or None, calls)


def _partial_tag(text: str) -> int:
    """Length of the longest end of ``text`` that could begin :data:`CALL_OPEN`."""
    for n in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-n:]):
            return n
    return 0


class ToolCallStream:
    """Streamed output -> content that is safe to send at once, then the calls at the end.

    :meth:`feed` returns the content to send now. It holds back trailing whitespace, a possible start
    of ``<tool_call>``, and everything from a ``<tool_call>`` on. :meth:`finish` parses the whole
    output and returns the content still unsent plus the calls. What was sent followed by that rest
    equals :func:`parse_tool_calls`'s content, so streamed and whole replies agree.
    """

    def __init__(self, names: list[str], max_calls: int | None = None) -> None:
        self._names = list(names)
        self._max_calls = max_calls
        self._sent = ""
        self._held = ""
        self._in_call = False

    def feed(self, chunk: str) -> str:
        """Take the next piece of model output; return the content to send now (maybe ``""``)."""
        if not self._names:
            self._sent += chunk
            return chunk
        self._held += chunk
        if self._in_call:
            return ""
        start = self._held.find(CALL_OPEN)
        if start >= 0:
            self._in_call = True
            ready = self._held[:start].rstrip()
        else:
            ready = self._held[:len(self._held) - _partial_tag(self._held)].rstrip()
        self._sent += ready
        self._held = self._held[len(ready):]
        return ready

    def finish(self) -> tuple[str, ToolReply]:
        """The content not sent yet, and the whole :class:`ToolReply`."""
        reply = parse_tool_calls(self._sent + self._held, self._names, self._max_calls)
        rest = (reply.content or "")[len(self._sent):]
        return rest, reply


# -- response_format ------------------------------------------------------------------------------------------


def response_format_options(response_format: Any) -> dict[str, Any]:
    """:class:`~edgekit.Sampling` options for OpenAI's ``response_format`` (``{}`` for text or None).

    ``{"type": "json_object"}`` allows any JSON object; ``{"type": "json_schema", "json_schema":
    {"name", "schema", "strict"?}}`` allows what the schema allows. Both are enforced by grammar,
    so ``strict`` changes nothing. Bad shapes raise :class:`InvalidParam`.
    """
    if response_format is None:
        return {}
    if not isinstance(response_format, dict):
        raise InvalidParam("response_format", 'must be an object such as {"type": "json_object"}')
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_schema": {"type": "object"}}
    if kind != "json_schema":
        raise InvalidParam("response_format.type", f"must be text, json_object or json_schema, not {kind!r}")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidParam("response_format.json_schema", 'must be an object {"name": ..., "schema": ...}')
    name = spec.get("name")
    if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
        raise InvalidParam("response_format.json_schema.name", "must be 1 to 64 letters, digits, '_' or '-'")
    if "strict" in spec and not isinstance(spec["strict"], bool) and spec["strict"] is not None:
        raise InvalidParam("response_format.json_schema.strict", "must be true or false")
    schema = spec.get("schema", {"type": "object"})
    if not isinstance(schema, dict):
        raise InvalidParam("response_format.json_schema.schema", "must be a JSON schema (an object)")
    schema_grammar(schema, "response_format.json_schema.schema")  # fail here, naming the field
    return {"json_schema": schema}


def constraint_options(request: ToolRequest, response_format: Any = None, *, own_grammar: bool = False) -> dict[str, Any]:
    """The grammar options of one request: forced tool calls or ``response_format``, checked not to clash.

    ``own_grammar``: the caller also asked for a grammar or JSON schema of its own. One generation takes
    one grammar, so active tools and a JSON ``response_format``, or either and ``own_grammar``, raise
    :class:`InvalidParam`.
    """
    output_format = response_format_options(response_format)
    if request.active and output_format:
        raise InvalidParam("response_format", "can't be combined with tools unless tool_choice is 'none'")
    options = {**request.sampling_options(), **output_format}
    if options and own_grammar:
        raise InvalidParam("grammar", "a grammar of your own can't be combined with forced tool calls "
                                      "or a JSON response_format")
    return options


# -- the Python API ---------------------------------------------------------------------------------------------


def chat(model: Model, messages: list[dict], *, tools: Any = None, tool_choice: Any = None,
         parallel_tool_calls: bool | None = None, response_format: Any = None, sampling: Sampling | None = None,
         **kwargs: Any) -> ToolReply:
    """``model.chat`` with OpenAI's ``tools``, ``tool_choice`` and ``response_format``.

    Returns a :class:`ToolReply`: ``content``, ``tool_calls`` and the underlying ``completion``.
    ``kwargs`` are sampling options as for :meth:`Model.chat`.
    """
    request = tool_request(tools, tool_choice, parallel_tool_calls)
    own = bool(kwargs.get("grammar") or kwargs.get("json_schema")
               or (sampling is not None and (sampling.grammar or sampling.json_schema)))
    options = constraint_options(request, response_format, own_grammar=own)
    completion = model.generate(model.chat_tokens(messages, tools=request.prompt_tools), sampling,
                                **kwargs, **options)
    reply = request.parse(completion.text)
    return ToolReply(reply.content, reply.tool_calls, completion)


__all__ = [
    "InvalidParam", "ToolCall", "ToolCallStream", "ToolReply", "ToolRequest",
    "call_grammar", "chat", "constraint_options", "check_tools", "parse_tool_calls", "response_format_options",
    "tool_request",
]
