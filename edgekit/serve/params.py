"""Request bodies -> validated options: every field OpenAI defines is honoured or refused with a 400
naming it; unknown fields are ignored, as OpenAI does. No model needed here (pure validation);
what needs the vocabulary (logit_bias ids, prompt lengths) is checked where the prompt is built.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError, InvalidParam
from edgekit.runtime.sampling import Sampling
from edgekit.serve.errors import APIError, invalid

MAX_TOKENS_LIMIT = 2**31 - 1
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat has none (until EOG or the context)
MAX_STOP = 16  # OpenAI allows 4; llama.cpp more. Each one is checked per token, so keep it small.
ROLES = ("system", "developer", "user", "assistant", "tool")
_INT64 = 2**63


@dataclass
class Request:
    """What one /v1/chat/completions or /v1/completions request asks for."""

    model: str
    sampling: Sampling
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # alternatives per token (0 = the chosen token's logprob only); None = off
    messages: list[dict] = field(default_factory=list)  # chat
    prompts: list[str | list[int]] = field(default_factory=list)  # completions: one or more prompts
    echo: bool = False
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; NaN/Infinity and other non-JSON are refused."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise invalid(None, f"The body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid(None, "The body must be a JSON object.")
    where = _not_text(body)
    if where is not None:
        raise invalid(where or None, f"{where or 'The body'} holds a lone UTF-16 surrogate (valid JSON, such as "
                                     "\"\\ud800\", but not text). Send valid Unicode.")
    return body


def _not_text(body: dict) -> str | None:
    """Where ``body`` holds a string (or key) that is not text: a lone UTF-16 surrogate, which JSON can
    spell but UTF-8 (the tokenizer, grammars, the response) can't. ``"messages[0].content"``, ``""`` for
    a top-level key, or None when every string is text. Checked once here, for every field."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:  # iterative: the body may nest as deep as the JSON parser allows
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not _is_text(key):
                    return path
                if isinstance(item, (str, dict, list)):
                    stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack += [(item, f"{path}[{i}]") for i, item in enumerate(value) if isinstance(item, (str, dict, list))]
        elif not _is_text(value):
            return path
    return None


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- typed getters: absent or null -> default --------------------------------------------------------------

def _get(body: dict, name: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise invalid(name, f"'{name}' must be {what}, got {json.dumps(value)[:80]}.")
    return value


def _number(body: dict, name: str, lo: float, hi: float) -> float | None:
    value = _get(body, name, (int, float), "a number")
    if value is None:
        return None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise invalid(name, f"'{name}' must lie in [{lo:g}, {hi:g}], got {value}.")
    return float(value)


def _int(body: dict, name: str, lo: int, hi: int) -> int | None:
    value = _get(body, name, (int,), "an integer")
    if value is None:
        return None
    if not lo <= value <= hi:
        raise invalid(name, f"'{name}' must lie in [{lo}, {hi}], got {value}.")
    return value


def _bool(body: dict, name: str, default: bool = False) -> bool:
    return _get(body, name, (bool,), "true or false", default)


def _refuse_if_set(body: dict, name: str, why: str, allowed: tuple = ()) -> None:
    value = body.get(name)
    if value is not None and value not in allowed:
        raise invalid(name, f"'{name}' is not supported: {why}.")


# -- shared fields -------------------------------------------------------------------------------------------

def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid("stop", "'stop' must be a string or a list of strings.")
    if len(stop) > MAX_STOP:
        raise invalid("stop", f"'stop' may hold at most {MAX_STOP} strings, got {len(stop)}.")
    return tuple(stop)


def _logit_bias(body: dict) -> dict[int, float]:
    """JSON's string keys as token ids; the ranges are :class:`Sampling`'s to check."""
    bias = _get(body, "logit_bias", (dict,), "an object mapping token ids to biases", {})
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise invalid("logit_bias", f"'logit_bias' keys must be token ids, got {json.dumps(key)[:40]}.") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid("logit_bias", f"'logit_bias' values must be numbers, got {json.dumps(value)[:40]}.")
        out[token] = value
    return out


def _sampling(body: dict, base: Sampling, max_tokens: int | None, logprobs: int | None) -> Sampling:
    """Sampling from the body's fields; unset ones keep the server's defaults (``base``)."""
    changes: dict[str, Any] = {"max_tokens": max_tokens, "stop": _stop(body)}
    for name, value in (("temperature", _number(body, "temperature", 0.0, 2.0)),
                        ("top_p", _number(body, "top_p", 0.0, 1.0)),
                        ("min_p", _number(body, "min_p", 0.0, 1.0)),
                        ("top_k", _int(body, "top_k", 0, 1 << 20)),
                        ("repeat_penalty", _number(body, "repeat_penalty", 1e-3, 10.0)),
                        ("presence_penalty", _number(body, "presence_penalty", -2.0, 2.0)),
                        ("frequency_penalty", _number(body, "frequency_penalty", -2.0, 2.0)),
                        ("seed", _int(body, "seed", -_INT64, _INT64 - 1)),
                        ("grammar", _get(body, "grammar", (str,), "a GBNF grammar string"))):
        if value is not None:
            changes[name] = value
    bias = _logit_bias(body)
    if bias:
        changes["logit_bias"] = bias
    if logprobs is not None:
        changes["logprobs"] = logprobs
    try:
        return base.replace(**changes)
    except EdgekitError as exc:
        raise error_for(exc) from None


def _common(body: dict, *, slots: int) -> dict[str, Any]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "'model' is required and must be a string.")
    n = _int(body, "n", 1, MAX_TOKENS_LIMIT) or 1
    if n > slots:
        raise invalid("n", f"'n' may be at most {slots} here (the server's --slots), got {n}.")
    stream = _bool(body, "stream")
    options = _get(body, "stream_options", (dict,), "an object")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("stream_options", "'stream_options' is only allowed when 'stream' is true.")
        include_usage = _bool(options, "include_usage")
    _get(body, "user", (str,), "a string")
    _refuse_if_set(body, "store", "completions are not stored", allowed=(False,))
    _refuse_if_set(body, "service_tier", "there is one tier", allowed=("auto", "default"))
    _get(body, "metadata", (dict,), "an object")
    return {"model": model, "n": n, "stream": stream, "include_usage": include_usage}


def _max_tokens(body: dict, *names: str) -> int | None:
    """The first of ``names`` that is set wins (max_completion_tokens before max_tokens)."""
    values = [_int(body, name, 1, MAX_TOKENS_LIMIT) for name in names]
    return next((v for v in values if v is not None), None)


# -- the two endpoints ---------------------------------------------------------------------------------------

def _content(i: int, content: Any, role: str) -> str | None:
    if content is None:
        if role in ("assistant",):
            return None
        raise invalid(f"messages[{i}].content", f"messages[{i}] ({role}) needs a 'content'.")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise invalid(f"messages[{i}].content", f"messages[{i}].content: only text parts are supported, "
                                                        f"got {kind!r}.")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"messages[{i}].content", f"messages[{i}].content must be a string or a list of text parts.")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "'messages' is required and must be a non-empty list.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid(f"messages[{i}]", f"messages[{i}] must be an object with 'role' and 'content'.")
        role = m.get("role")
        if role not in ROLES:
            raise invalid(f"messages[{i}].role", f"messages[{i}].role must be one of {', '.join(ROLES)}; "
                                                 f"got {json.dumps(role)[:40]}.")
        msg = {k: v for k, v in m.items() if k in ("name", "tool_call_id") and v is not None}
        for k, v in msg.items():
            if not isinstance(v, str):
                raise invalid(f"messages[{i}].{k}", f"messages[{i}].{k} must be a string.")
        if m.get("tool_calls") is not None:
            msg["tool_calls"] = _tool_calls(i, m["tool_calls"])
        msg["role"] = "system" if role == "developer" else role
        msg["content"] = _content(i, m.get("content"), role)
        if msg["content"] is None and not m.get("tool_calls"):
            raise invalid(f"messages[{i}].content", f"messages[{i}] has neither 'content' nor 'tool_calls'.")
        if msg["content"] is None:
            msg["content"] = ""
        out.append(msg)
    return out


def _tool_calls(i: int, calls: Any) -> list[dict]:
    """An assistant message's earlier calls, in OpenAI's shape: ``[{"id", "type": "function",
    "function": {"name", "arguments"}}]`` with ``arguments`` JSON text."""
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise invalid(where, f"{where} must be a list of tool calls.")
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), str)
                and isinstance(call.get("id", ""), str)):
            raise invalid(f"{where}[{k}]", f'{where}[{k}] must be {{"id": ..., "type": "function", "function": '
                                           '{"name": ..., "arguments": "<JSON text>"}}.')
    return calls


def parse_chat(body: dict, *, base: Sampling, slots: int) -> Request:
    """Validate a /v1/chat/completions body."""
    common = _common(body, slots=slots)
    messages = _messages(body)
    logprobs = None
    if _bool(body, "logprobs"):
        logprobs = _int(body, "top_logprobs", 0, 20) or 0
    elif body.get("top_logprobs") is not None:
        raise invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true.")
    for name, why in (("audio", "audio output"), ("prediction", "predicted outputs"),
                      ("web_search_options", "web search"), ("functions", "use 'tools'"),
                      ("function_call", "use 'tool_choice'"), ("reasoning_effort", "this model does not reason")):
        _refuse_if_set(body, name, why)
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise invalid("modalities", "'modalities' may only be [\"text\"].")
    response_format = _get(body, "response_format", (dict,), "an object")
    tools = _get(body, "tools", (list,), "a list of tools")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and not isinstance(tool_choice, (str, dict)):
        raise invalid("tool_choice", "'tool_choice' must be a string or an object.")
    parallel = _bool(body, "parallel_tool_calls", True)
    sampling = _sampling(body, base, _max_tokens(body, "max_completion_tokens", "max_tokens"), logprobs)
    return Request(**common, sampling=sampling, logprobs=logprobs, messages=messages,
                   response_format=response_format, tools=tools or None, tool_choice=tool_choice,
                   parallel_tool_calls=parallel)


def _prompts(body: dict) -> list[str | list[int]]:
    prompt = body.get("prompt")
    bad = invalid("prompt", "'prompt' must be a string, a list of strings, a list of token ids, or a list of "
                            "token-id lists.")
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise bad
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return [list(prompt)]
    if all(isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
           for p in prompt):
        return [list(p) for p in prompt]
    raise bad


def parse_completion(body: dict, *, base: Sampling, slots: int) -> Request:
    """Validate a /v1/completions body."""
    common = _common(body, slots=slots)
    prompts = _prompts(body)
    if len(prompts) * common["n"] > slots:
        raise invalid("prompt", f"{len(prompts)} prompts x n={common['n']} sequences exceed the server's "
                                f"{slots} slots.")
    logprobs = _int(body, "logprobs", 0, 20)
    echo = _bool(body, "echo")
    if echo and logprobs is not None:
        raise invalid("echo", "'echo' with 'logprobs' would need the prompt's logprobs, which are not computed.")
    best_of = _int(body, "best_of", 1, MAX_TOKENS_LIMIT)
    if best_of is not None and best_of != common["n"]:
        raise invalid("best_of", "'best_of' is not supported (only best_of == n).")
    _refuse_if_set(body, "suffix", "no insertion mode")
    max_tokens = _max_tokens(body, "max_tokens")
    sampling = _sampling(body, base, COMPLETIONS_MAX_TOKENS if max_tokens is None else max_tokens, logprobs)
    return Request(**common, sampling=sampling, logprobs=logprobs, prompts=prompts, echo=echo)


def error_for(exc: EdgekitError, param: str | None = None) -> APIError:
    """A library error as a 400 (its message and hint), naming the field an InvalidParam names, else ``param``."""
    if isinstance(exc, InvalidParam):
        param = exc.param
    return invalid(param, exc.message + (f" {exc.hint}" if exc.hint else ""))
