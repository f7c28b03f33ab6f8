"""The server's parts without a model: request validation, logprob alignment, and the app while
the model loads (auth, 404/405/413 shapes, /health 503). Fast: no llama.cpp."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
import httpx  # noqa: E402

from edgekit.runtime.sampling import Sampling  # noqa: E402
from edgekit.serve.app import State, create_app  # noqa: E402
from edgekit.serve.errors import APIError  # noqa: E402
from edgekit.serve.params import parse_chat, parse_completion  # noqa: E402
from edgekit.serve.responses import LogprobAligner, legacy_logprobs  # noqa: E402

BASE = Sampling(max_tokens=None)
MSG = [{"role": "user", "content": "hi"}]


def _chat(**kw):
    return parse_chat({"model": "m", "messages": MSG, **kw}, base=BASE, slots=4)


def test_max_completion_tokens_wins_and_fields_map_to_sampling():
    r = _chat(max_tokens=50, max_completion_tokens=7, temperature=0.3, top_p=0.5, seed=2**40 + 3, stop="x",
              presence_penalty=1, frequency_penalty=-1, logit_bias={"5": -100}, top_k=3, min_p=0.1,
              repeat_penalty=1.2, grammar='root ::= "a"', n=2, stream=True, stream_options={"include_usage": True})
    s = r.sampling
    assert s.max_tokens == 7 and s.temperature == 0.3 and s.top_p == 0.5 and s.seed == 3 and s.stop == ("x",)
    assert s.presence_penalty == 1 and s.frequency_penalty == -1 and s.logit_bias == ((5, -100.0),)
    assert s.top_k == 3 and s.min_p == 0.1 and s.repeat_penalty == 1.2 and s.grammar == 'root ::= "a"'
    assert r.n == 2 and r.stream and r.include_usage
    assert _chat(max_tokens=9).sampling.max_tokens == 9
    assert _chat().sampling.max_tokens is None  # chat: until the end of generation
    c = parse_completion({"model": "m", "prompt": ["a", "b"]}, base=BASE, slots=4)
    assert c.prompts == ["a", "b"] and c.sampling.max_tokens == 16  # OpenAI's completions default


@pytest.mark.parametrize("fields, param", [
    ({"n": 5}, "n"), ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"), ({"stop": [1]}, "stop"), ({"logit_bias": {"1": "x"}}, "logit_bias"),
    ({"stream_options": {"include_usage": True}}, "stream_options"), ({"top_logprobs": 1}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"), ({"store": True}, "store"),
    ({"functions": []}, "functions"), ({"modalities": ["audio"]}, "modalities"), ({"model": 3}, "model"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"), ({"logit_bias": {"1": 1000}}, "logit_bias"),
    ({"logit_bias": {"1": 10**400}}, "logit_bias"),
    ({"messages": [{"role": "assistant", "tool_calls": 5}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": 5}]}]}, "messages[0].tool_calls[0]"),
    ({"messages": [{"role": "user", "content": "x", "name": {"a": 1}}]}, "messages[0].name"),
])
def test_bad_fields_name_their_param(fields, param):
    with pytest.raises(APIError) as err:
        parse_chat({"model": "m", "messages": MSG, **fields}, base=BASE, slots=4)
    assert err.value.status == 400 and err.value.param == param


def test_sampling_is_the_one_home_of_the_logit_bias_and_seed_rules():
    from edgekit.errors import InvalidParam

    for bias in ({-1: 1.0}, {1: 100.5}, {1: "x"}):
        with pytest.raises(InvalidParam) as err:
            Sampling(logit_bias=bias)
        assert err.value.param == "logit_bias"
    assert Sampling(seed=2**40 + 3).seed == 3 and Sampling(seed=-1).seed == 2**32 - 1  # as llama.cpp's -1: random
    assert Sampling(seed=5).replace(seed=2**32 + 5).seed == 5


class _Step:
    def __init__(self, piece: bytes, logprob: float = -0.5) -> None:
        self.token, self.piece, self.logprob, self.top_logprobs = 1, piece, logprob, [(1, logprob)]


def test_logprob_tokens_concatenate_to_content_across_split_characters():
    a = LogprobAligner(lambda t: "x")
    texts = {b"Hel": "Hel", b"lo": "lo", b" \xe4": " ", b"\xb8\x96": "\u4e16"}  # what a TextStream releases
    out = []
    for piece, text in texts.items():
        a.step(_Step(piece))
        out += a.text(text)
    out += a.text("", final=True)
    assert [e["token"] for e in out] == ["Hel", "lo", " ", "\u4e16"]
    assert out[2]["bytes"] == [0x20, 0xE4]
    assert legacy_logprobs(out)["text_offset"] == [0, 3, 5, 6]


def test_logprob_tokens_past_a_stop_string_are_dropped():
    a = LogprobAligner(lambda t: "x")
    for piece in (b"A", b"B", b"ST", b"OP"):
        a.step(_Step(piece))
    out = a.text("A") + a.text("B", final=True)  # the content ended before the stop string "STOP"
    assert [e["token"] for e in out] == ["A", "B"]


@pytest.fixture
def loading_app():
    return create_app(State(model_id="m", slots=2, queue=1, api_key="k", max_body=1000))


async def _get(app, method: str, path: str, **kw) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.request(method, path, **kw)


@pytest.mark.parametrize("method, path, headers, body, status, code", [
    ("GET", "/health", {}, None, 503, "model_loading"),
    ("GET", "/v1/models", {}, None, 401, "invalid_api_key"),
    ("GET", "/nope", {}, None, 401, "invalid_api_key"),
    ("GET", "/nope", {"Authorization": "Bearer k"}, None, 404, "not_found"),
    ("GET", "/v1/completions", {"Authorization": "Bearer k"}, None, 405, "method_not_allowed"),
    ("POST", "/v1/chat/completions", {"Authorization": "Bearer k"}, b"x" * 2000, 413, "request_too_large"),
    ("POST", "/v1/chat/completions", {"Authorization": "Bearer k"}, b"{}", 503, "model_loading"),
    ("GET", "/v1/models", {"Authorization": "bearer k"}, None, 200, None),
])
def test_app_while_loading(loading_app, method, path, headers, body, status, code):
    import asyncio

    r = asyncio.run(_get(loading_app, method, path, headers=headers, content=body))
    assert r.status_code == status
    if code is not None:
        assert r.json()["error"]["code"] == code
    if status == 503:
        assert r.headers["Retry-After"]


def test_an_unexpected_exception_is_a_json_500_in_openai_shape():
    """Defense in depth: a handler that fails in a way nobody expected still answers in OpenAI's shape."""
    import asyncio

    from starlette.routing import Route

    async def broken(request):
        raise RuntimeError("secret detail")

    app = create_app(State(model_id="m"))
    app.app.router.routes.append(Route("/broken", broken))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/broken")

    r = asyncio.run(get())
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error" and error["code"] == "internal_error" and "RuntimeError" in error["message"]
    assert "secret detail" not in error["message"]  # details stay in the server's log


def test_an_error_quoting_a_lone_surrogate_still_renders():
    r = APIError(400, "bad value '\ud800'", param="x").response()
    assert b"\\ud800" in r.body
