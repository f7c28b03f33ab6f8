"""The server never answers a request with a 5xx: generated bodies (any JSON value in any field, lone
UTF-16 surrogates, deep nesting, huge numbers, wrong types) sent in-process to the real app with a
real model (SmolLM2-135M) get a 200 or a 4xx in OpenAI's error shape.

Requests run one at a time, so the queue never fills (its 503 is tested in test_serve_load.py).
``max_tokens`` and ``max_completion_tokens`` are any JSON value but a large integer (which only
makes an answer longer; test_serve.py sends those), so every answer stays a few tokens long.
Examples come from a fixed seed (tests/fuzzing.py); a longer run:
``EDGEKIT_FUZZ_EXAMPLES=2000 pytest tests/test_serve_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("starlette")
import httpx  # noqa: E402
from fuzzing import DEEP, dump_json, fuzz_settings  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgekit.serve.app import State, create_app  # noqa: E402

CTX = 512  # room for a prompt that describes tools
SLOTS = 2
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def app(smollm2_gguf):
    import edgekit

    state = State(model_id="m", slots=SLOTS, queue=2)
    # one thread: llama.cpp's threads spin-wait on each other, which a machine shared by other jobs punishes
    state.model = edgekit.load(smollm2_gguf, n_ctx=CTX, threads=1, slots=SLOTS)
    yield create_app(state)
    state.executor.shutdown(wait=True)
    state.model.close()


async def _post(app, path: str, content: bytes) -> httpx.Response:
    # raise_app_exceptions: a bug in a handler fails the test with its traceback (the app would answer a JSON 500)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post(path, content=content, headers={"Content-Type": "application/json"})


def post(app, path: str, content: bytes) -> httpx.Response:
    return asyncio.run(_post(app, path, content))


def assert_openai_error(body: dict) -> dict:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] is None or isinstance(error["param"], str)
    return error


def assert_no_5xx(r: httpx.Response) -> None:
    """A 200 (whole or streamed, with no server error in the stream) or a 4xx in OpenAI's shape."""
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code != 200:
        assert_openai_error(r.json())
        return
    if not r.headers["content-type"].startswith("text/event-stream"):
        assert ("choices" if r.request.url.path.startswith("/v1/") else "content" if "detok" in r.request.url.path
                else "tokens") in r.json()
        return
    events = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events, r.text[:500]
    for data in events:
        if data == "[DONE]":
            continue
        event = json.loads(data)
        if "error" in event:  # reported in the stream once the headers are sent
            assert assert_openai_error(event)["type"] != "server_error", event


# -- the two requests that answered a plain-text 500 (issue 18, section 6) -----------------------------------------

@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": MESSAGES, "max_tokens": 2, "tool_choice": "required",
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "wat"}}}]},
     "tools[0].function.parameters"),
    ('{"model": "m", "messages": [{"role": "user", "content": "\\ud800 broken surrogate"}], "max_tokens": 2}',
     "messages[0].content"),
    ('{"model": "m", "messages": [{"role": "system", "content": "x\\udfff"}, {"role": "user", "content": "hi"}]}',
     "messages[0].content"),
    ('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["ok", "\\ud800"]}', "stop[1]"),
    ('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"\\ud800": 1}}', "logit_bias"),
    ('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "grammar": "root ::= \\"\\udc00\\""}',
     "grammar"),
    ('{"model": "m", "prompt": ["fine", "\\ud800"]}', "prompt[1]"),
])
def test_the_requests_that_got_a_500_get_a_400_naming_the_param(app, body, param):
    content = (body if isinstance(body, str) else json.dumps(body)).encode()
    r = post(app, "/v1/completions" if '"prompt"' in content.decode() else "/v1/chat/completions", content)
    assert r.status_code == 400, r.text
    assert assert_openai_error(r.json())["param"] == param


def test_a_lone_surrogate_in_the_library_is_an_edgekit_error(app):
    from edgekit.errors import InvalidParam

    model = app.app.state.edgekit.model
    with pytest.raises(InvalidParam, match="surrogate"):
        model.tokenize("\ud800 broken")
    with pytest.raises(InvalidParam) as err:
        model.generate("hi", max_tokens=1, grammar='root ::= "\udc00"')
    assert err.value.param == "grammar"


# -- generated bodies -----------------------------------------------------------------------------------------------
# Valid bodies (each answered with a 200), then one to three places in them changed: a value replaced by any
# JSON value, a string given a lone surrogate, a key removed, an unknown key added. So most generated
# requests are valid but for one thing, and every field and nested field is reached.

SURROGATES = ["\ud800", "\udfff", "a\udc00b", "\ud83d"]  # lone halves; a valid pair would be one character
HUGE = [2**31, 2**63, -(2**63) - 1, 10**30, 10**400, 1e308, -1e308, 5e-324]
_text = st.one_of(st.text(max_size=6), st.builds(str.__add__, st.text(max_size=3), st.sampled_from(SURROGATES)))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.integers(-(2**70), 2**70),
                     st.sampled_from(HUGE), st.floats(allow_nan=False, allow_infinity=False), _text)
any_json = st.one_of(
    st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                 max_leaves=6),
    st.just(DEEP),  # a list nested deeper than the parser goes
)
# A large max_tokens (or null: no limit) only makes an answer longer; test_serve.py sends those.
_length = st.one_of(st.integers(-2, 4), any_json.filter(lambda v: v is not None and (
    not isinstance(v, int) or isinstance(v, bool) or not 4 < v < 2**31)))
LENGTHS = {"max_tokens", "max_completion_tokens"}

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                           "parameters": SCHEMA}}]
CALLS = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
CHAT = [
    {"model": "m", "max_tokens": 2, "temperature": 0, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
     "stop": ["\n\n", "end"], "logit_bias": {"5": -1.5}, "seed": 7, "top_p": 0.9, "top_k": 20, "user": "u",
     "presence_penalty": 0.1, "metadata": {"k": "v"}},
    {"model": "m", "max_completion_tokens": 2, "temperature": 0.7, "n": 2, "stream": True,
     "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 2,
     "messages": [{"role": "user", "content": "Count to three."}]},
    {"model": "m", "max_tokens": 2, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
     "messages": [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": None,
                                                                    "tool_calls": CALLS},
                  {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                  {"role": "user", "content": "And in Rome?"}]},
    {"model": "m", "max_tokens": 2, "tools": TOOLS, "tool_choice": {"type": "function", "function": {
        "name": "get_weather"}}, "stream": True, "messages": [{"role": "developer", "content": "Use tools."},
                                                              {"role": "user", "content": "Weather?"}]},
    {"model": "m", "max_tokens": 2, "response_format": {"type": "json_schema", "json_schema": {
        "name": "city", "schema": SCHEMA, "strict": True}}, "messages": [{"role": "user", "content": "A city?"}]},
    {"model": "m", "max_tokens": 2, "response_format": {"type": "json_object"}, "grammar": None,
     "messages": [{"role": "user", "content": "JSON please."}]},
    {"model": "m", "max_tokens": 2, "grammar": 'root ::= "yes" | "no"', "messages": [{"role": "user", "content": "?"}]},
]
COMPLETION = [
    {"model": "m", "prompt": "Once upon a time", "max_tokens": 2, "temperature": 0, "stop": "x", "echo": True},
    {"model": "m", "prompt": ["One,", "Two,"], "max_tokens": 2, "logprobs": 2, "stream": True, "seed": -1},
    {"model": "m", "prompt": [[1, 2, 3], [4, 5]], "max_tokens": 1, "best_of": 1, "logit_bias": {"2": 100}},
    {"model": "m", "prompt": [9906, 1879], "max_tokens": 2, "echo": True, "suffix": None},
]


def _places(value, path=()):
    """Every path in ``value``: keys of objects, items of lists, and the value itself (the empty path)."""
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _places(child, (*path, key))


def _get(value, path):
    for key in path:
        value = value[key]
    return value


@st.composite
def bodies(draw, templates: list[dict]):
    body = json.loads(json.dumps(draw(st.sampled_from(templates))))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        places = list(_places(body))[1:]
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent, key = _get(body, path[:-1]), path[-1]
        old = parent[key]
        how = draw(st.sampled_from(["replace", "replace", "surrogate", "remove", "add"]))
        if path[0] in LENGTHS:
            if len(path) == 1:
                parent[key] = draw(_length)
        elif how == "surrogate" and isinstance(old, str):
            at = draw(st.integers(0, len(old)))
            parent[key] = old[:at] + draw(st.sampled_from(SURROGATES)) + old[at:]
        elif how == "remove" and isinstance(parent, dict):
            del parent[key]
        elif how == "add" and isinstance(old, dict):
            old[draw(_text)] = draw(any_json)
        else:
            parent[key] = draw(any_json)
    return body


# The fast loop runs a few examples of each property; the slow suite runs many more.
EXAMPLES = [pytest.param(1, id="fast"), pytest.param(10, id="many", marks=pytest.mark.slow)]


def _property(examples: int, strategy, path: str | None = None) -> None:
    """Send ``examples`` bodies drawn from ``strategy`` to ``path`` (or to a drawn path) and check each answer."""

    @fuzz_settings(examples)
    @given(body=strategy, deep=st.sampled_from([3, 5000]), drawn=st.sampled_from(["/tokenize", "/detokenize"]))
    def run(body, deep, drawn):
        assert_no_5xx(post(APP[0], path or drawn, dump_json(body, deep)))

    run()


APP: list = []  # the module's app, for the properties (hypothesis draws no fixtures)


@pytest.fixture
def served(app):
    APP[:] = [app]
    yield
    APP.clear()


@pytest.mark.parametrize("scale", EXAMPLES)
def test_chat_completions_never_answer_5xx(served, scale):
    _property(25 * scale, bodies(CHAT), "/v1/chat/completions")


@pytest.mark.parametrize("scale", EXAMPLES)
def test_completions_never_answer_5xx(served, scale):
    _property(15 * scale, bodies(COMPLETION), "/v1/completions")


@pytest.mark.parametrize("scale", EXAMPLES)
def test_tokenize_and_detokenize_never_answer_5xx(served, scale):
    _property(10 * scale, bodies([{"content": "Hello there", "add_special": True, "with_pieces": True},
                                  {"tokens": [1, 2, 9906]}]))


@pytest.mark.slow
def test_the_templates_are_valid(app):
    """Each generated body starts from a body the server answers with a 200 (so a 4xx means the change)."""
    for template in CHAT:
        assert_no_5xx(r := post(app, "/v1/chat/completions", json.dumps(template).encode()))
        assert r.status_code == 200, (template, r.text)
    for template in COMPLETION:
        assert_no_5xx(r := post(app, "/v1/completions", json.dumps(template).encode()))
        assert r.status_code == 200, (template, r.text)
