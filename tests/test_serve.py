"""``edgekit serve`` through the real ``openai`` client and raw httpx: fields, streaming, errors, auth.

One server (SmolLM2-135M real weights, 4 slots) per module; every request bounded by a client timeout.
"""

from __future__ import annotations

import json

import httpx
import pytest
from serve_process import API_KEY, ServerProcess

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow
TIMEOUT = 60
SLOTS = 4
CTX = 1024
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = ServerProcess(smollm2_gguf, "--slots", str(SLOTS), "--queue", "4", "--ctx", str(CTX), "--threads", "2",
                        "--api-key", API_KEY, home=tmp_path_factory.mktemp("serve-home")).wait_ready()
    yield srv
    assert srv.stop() == 0, srv.output()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, timeout=TIMEOUT, max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture(scope="module")
def model_id(http):
    return http.get("/v1/models").json()["data"][0]["id"]


def chat(client, model_id, **kw):
    return client.chat.completions.create(model=model_id, messages=kw.pop("messages", MESSAGES), **kw)


# -- basics ------------------------------------------------------------------------------------------------------

def test_health_models_metrics(server, http, smollm2_gguf):
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).status_code == 200  # no key needed
    data = http.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == [smollm2_gguf.stem]
    assert data[0]["meta"]["n_ctx"] == CTX
    text = http.get("/metrics").text
    assert f"edgekit_slots {SLOTS}" in text and "edgekit_slots_busy" in text and "edgekit_queue_depth" in text


def test_greedy_equals_model_chat(client, model_id, smollm2_gguf):
    import edgekit

    with edgekit.load(smollm2_gguf, n_ctx=CTX, threads=2, slots=SLOTS) as model:
        want = model.chat(MESSAGES, temperature=0, max_tokens=24)
    got = chat(client, model_id, temperature=0, max_tokens=24)
    assert got.choices[0].message.content == want.text
    assert got.usage.completion_tokens == len(want.tokens)
    assert got.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")


def test_stream_equals_non_stream_and_usage_only_when_asked(client, model_id):
    plain = chat(client, model_id, temperature=0, max_tokens=16)
    chunks = list(chat(client, model_id, temperature=0, max_tokens=16, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[0].choices[0].delta.role == "assistant"

    chunks = list(chat(client, model_id, temperature=0, max_tokens=16, stream=True,
                       stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1]) and all(c.choices for c in chunks[:-1])


def test_max_completion_tokens_wins(client, model_id):
    r = chat(client, model_id, temperature=0, max_tokens=20, max_completion_tokens=3)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    r = chat(client, model_id, temperature=0, max_tokens=5)
    assert r.usage.completion_tokens == 5


def test_stop_string_and_list(client, model_id):
    full = chat(client, model_id, temperature=0, max_tokens=24).choices[0].message.content
    word = full.split()[2]
    for stop in (word, [word, "zzzz-not-there"]):
        r = chat(client, model_id, temperature=0, max_tokens=24, stop=stop)
        assert r.choices[0].message.content == full[: full.index(word)]
        assert r.choices[0].finish_reason == "stop"
        streamed = "".join(c.choices[0].delta.content or "" for c in
                           chat(client, model_id, temperature=0, max_tokens=24, stop=stop, stream=True))
        assert streamed == full[: full.index(word)]


def test_seed_and_sampling_fields(client, model_id):
    kw = dict(temperature=1.0, top_p=0.9, seed=1234, max_tokens=20, presence_penalty=0.5, frequency_penalty=0.5,
              extra_body={"top_k": 30, "min_p": 0.02, "repeat_penalty": 1.1})
    a = chat(client, model_id, **kw).choices[0].message.content
    b = chat(client, model_id, **kw).choices[0].message.content
    assert a == b and a


def test_logit_bias_forces_a_token(client, model_id, http):
    token = http.post("/tokenize", json={"content": " Paris"}).json()["tokens"]
    assert len(token) == 1
    r = chat(client, model_id, temperature=0, max_tokens=3, logit_bias={str(token[0]): 100})
    assert r.choices[0].message.content == " Paris" * 3


def test_grammar_extension(client, model_id):
    r = chat(client, model_id, temperature=1.0, seed=3, max_tokens=8,
             extra_body={"grammar": 'root ::= "yes" | "no"'})
    assert r.choices[0].message.content in ("yes", "no")


def test_tokenize_detokenize(http):
    tokens = http.post("/tokenize", json={"content": "Hello world"}).json()["tokens"]
    assert http.post("/detokenize", json={"tokens": tokens}).json()["content"] == "Hello world"
    pieces = http.post("/tokenize", json={"content": "Hello world", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == "Hello world"


def test_context_length_exceeded_is_400_never_truncated(client, model_id):
    long = "word " * (CTX + 50)
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, model_id, messages=[{"role": "user", "content": long}], max_tokens=4)
    body = err.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert str(CTX) in body["message"]
    n_prompt = int(body["message"].split("the prompt has ")[1].split()[0])
    assert n_prompt > CTX
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=model_id, prompt=long, max_tokens=4)
    assert err.value.body["code"] == "context_length_exceeded"


# -- /v1/completions -----------------------------------------------------------------------------------------------

def test_completions_prompt_forms(client, model_id, http):
    one = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert len(one.choices) == 1 and one.usage.completion_tokens == 6
    tokens = http.post("/tokenize", json={"content": "The capital of France is", "add_special": True}).json()
    by_ids = client.completions.create(model=model_id, prompt=tokens["tokens"], max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == one.choices[0].text
    two = client.completions.create(model=model_id, prompt=["The capital of France is", "One, two, three,"],
                                    max_tokens=6, temperature=0)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == one.choices[0].text
    echo = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=6, temperature=0,
                                     echo=True)
    assert echo.choices[0].text == "The capital of France is" + one.choices[0].text
    ids = http.post("/tokenize", json={"content": "The capital of France is", "add_special": False}).json()["tokens"]
    echo_ids = client.completions.create(model=model_id, prompt=ids, max_tokens=6, temperature=0, echo=True)
    assert echo_ids.choices[0].text.startswith("The capital of France is")
    streamed_echo = client.completions.create(model=model_id, prompt=ids, max_tokens=2, temperature=0, echo=True,
                                              stream=True)
    assert next(iter(streamed_echo)).choices[0].text == "The capital of France is"
    streamed = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=6,
                                         temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == one.choices[0].text
    assert chunks[-1].usage.completion_tokens == 6
    default = client.completions.create(model=model_id, prompt="Once upon a time", temperature=0)
    assert default.usage.completion_tokens <= 16  # OpenAI's default max_tokens for completions


# -- needs the multi-sequence engine: n, logprobs ------------------------------------------------------------------

def test_n_returns_distinct_choices(client, model_id):
    r = chat(client, model_id, n=2, temperature=1.0, seed=5, max_tokens=12)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    chunks = list(chat(client, model_id, n=2, temperature=0, max_tokens=8, stream=True))
    assert {c.choices[0].index for c in chunks} == {0, 1}


def test_logprobs_concatenate_to_content(client, model_id):
    for stream in (False, True):
        kw = dict(temperature=0, max_tokens=16, logprobs=True, top_logprobs=3)
        if stream:
            chunks = list(chat(client, model_id, stream=True, **kw))
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            entries = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        else:
            r = chat(client, model_id, **kw)
            content, entries = r.choices[0].message.content, r.choices[0].logprobs.content
        assert "".join(e.token for e in entries) == content
        for e in entries:
            tops = [t.logprob for t in e.top_logprobs]
            assert len(tops) == 3 and tops == sorted(tops, reverse=True)
            assert e.logprob <= 0 and abs(e.logprob - tops[0]) < 1e-4  # greedy: the chosen token is the best
    r = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=6, temperature=0,
                                  logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.top_logprobs[0]) == 2


# -- auth and hostile requests ---------------------------------------------------------------------------------------

ENDPOINTS = [("GET", "/v1/models"), ("GET", "/v1/models/x"), ("GET", "/metrics"), ("POST", "/v1/chat/completions"),
             ("POST", "/v1/completions"), ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/nope")]


def test_every_endpoint_but_health_needs_the_key(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as raw:
        assert raw.get("/health").status_code == 200
        for method, path in ENDPOINTS:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
                r = raw.request(method, path, json={}, headers=headers)
                assert r.status_code == 401, (method, path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"


def _chat_body(**kw):
    return json.dumps({"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw})


HOSTILE: list[tuple[str, str, object, int, str | None]] = [
    # (method, path, body (str = raw), status, param)
    ("POST", "/v1/chat/completions", "not json", 400, None),
    ("POST", "/v1/chat/completions", "[1, 2]", 400, None),
    ("POST", "/v1/chat/completions", "", 400, None),
    ("POST", "/v1/chat/completions", b"\xff\xfe{", 400, None),
    ("POST", "/v1/chat/completions", "[" * 100_000, 400, None),
    ("POST", "/v1/chat/completions", '{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], '
                                     '"temperature": NaN}', 400, None),
    ("POST", "/v1/chat/completions", {"model": "MODEL"}, 400, "messages"),
    ("POST", "/v1/chat/completions", {"model": "MODEL", "messages": []}, 400, "messages"),
    ("POST", "/v1/chat/completions", {"model": "MODEL", "messages": "hi"}, 400, "messages"),
    ("POST", "/v1/chat/completions", {"model": "MODEL", "messages": ["hi"]}, 400, "messages[0]"),
    ("POST", "/v1/chat/completions", {"model": "MODEL", "messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages[0].role"),
    ("POST", "/v1/chat/completions", {"model": "MODEL", "messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("POST", "/v1/chat/completions", {"model": "MODEL", "messages": [{"role": "user", "content": 42}]}, 400,
     "messages[0].content"),
    ("POST", "/v1/chat/completions", {"model": "MODEL", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400, "messages[0].content"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ("POST", "/v1/chat/completions", _chat_body(model="gpt-4o"), 400, "model"),
    ("POST", "/v1/chat/completions", _chat_body(max_tokens=-1), 400, "max_tokens"),
    ("POST", "/v1/chat/completions", _chat_body(max_tokens="10"), 400, "max_tokens"),
    ("POST", "/v1/chat/completions", _chat_body(max_tokens=10**30), 400, "max_tokens"),
    ("POST", "/v1/chat/completions", _chat_body(max_completion_tokens=0), 400, "max_completion_tokens"),
    ("POST", "/v1/chat/completions", _chat_body(temperature=5), 400, "temperature"),
    ("POST", "/v1/chat/completions", _chat_body(temperature="hot"), 400, "temperature"),
    ("POST", "/v1/chat/completions", _chat_body(top_p=1.5), 400, "top_p"),
    ("POST", "/v1/chat/completions", _chat_body(n=0), 400, "n"),
    ("POST", "/v1/chat/completions", _chat_body(n=10**6), 400, "n"),
    ("POST", "/v1/chat/completions", _chat_body(stop=5), 400, "stop"),
    ("POST", "/v1/chat/completions", _chat_body(stop=["x"] * 100), 400, "stop"),
    ("POST", "/v1/chat/completions", _chat_body(logit_bias={"abc": 1}), 400, "logit_bias"),
    ("POST", "/v1/chat/completions", _chat_body(logit_bias={"1": 1000}), 400, "logit_bias"),
    ("POST", "/v1/chat/completions", _chat_body(logit_bias={"99999999": 5}), 400, "logit_bias"),
    ("POST", "/v1/chat/completions", _chat_body(stream="yes"), 400, "stream"),
    ("POST", "/v1/chat/completions", _chat_body(stream_options={"include_usage": True}), 400, "stream_options"),
    ("POST", "/v1/chat/completions", _chat_body(top_logprobs=2), 400, "top_logprobs"),
    ("POST", "/v1/chat/completions", _chat_body(logprobs=True, top_logprobs=50), 400, "top_logprobs"),
    ("POST", "/v1/chat/completions", _chat_body(seed=1.5), 400, "seed"),
    ("POST", "/v1/chat/completions", _chat_body(presence_penalty=3), 400, "presence_penalty"),
    ("POST", "/v1/chat/completions", _chat_body(response_format="json"), 400, "response_format"),
    ("POST", "/v1/chat/completions", _chat_body(tools="x"), 400, "tools"),
    ("POST", "/v1/chat/completions", _chat_body(audio={"voice": "alloy"}), 400, "audio"),
    ("POST", "/v1/chat/completions", _chat_body(grammar="root ::= ("), 400, "grammar"),
    ("POST", "/v1/chat/completions", _chat_body(tool_choice="required", tools=[
        {"type": "function", "function": {"name": "f", "parameters": {"type": "wat"}}}]), 400,
     "tools[0].function.parameters"),
    ("POST", "/v1/chat/completions", '{"model": "MODEL", "messages": [{"role": "user", "content": '
                                     '"\\ud800 broken surrogate"}], "max_tokens": 2}', 400, "messages[0].content"),
    ("POST", "/v1/chat/completions", "x" * (5 << 20), 413, None),
    ("GET", "/v1/chat/completions", None, 405, None),
    ("GET", "/v1/nothing-here", None, 404, None),
    ("GET", "/v1/models/gpt-4o", None, 404, "model"),
    ("POST", "/v1/completions", {"model": "MODEL", "prompt": 5}, 400, "prompt"),
    ("POST", "/v1/completions", {"model": "MODEL", "prompt": [[]]}, 400, "prompt"),
    ("POST", "/v1/completions", {"model": "MODEL", "prompt": [10**9]}, 400, "prompt"),
    ("POST", "/v1/completions", {"model": "MODEL", "prompt": "x", "suffix": "y"}, 400, "suffix"),
    ("POST", "/v1/completions", {"model": "MODEL", "prompt": "x", "echo": True, "logprobs": 1}, 400, "echo"),
    ("POST", "/tokenize", {"text": "x"}, 400, "content"),
    ("POST", "/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ("POST", "/detokenize", {"tokens": [10**12]}, 400, "tokens"),
    ("POST", "/detokenize", {"tokens": "abc"}, 400, "tokens"),
]


def test_hostile_requests_get_4xx_in_openai_shape(server, http, model_id):
    assert len(HOSTILE) >= 25
    for method, path, body, status, param in HOSTILE:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.replace("MODEL", model_id).encode()
        r = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (path, body[:200] if body else body, r.status_code, r.text[:300])
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["param"] == param, (body[:200] if body else body, error)
    ok = http.post("/v1/chat/completions", content=_chat_body(model=model_id, unknown_field={"a": 1}).encode())
    assert ok.status_code == 200  # unknown fields are ignored, as OpenAI does
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).status_code == 200


# -- response_format and tools (edgekit.runtime.tools) ----------------------------------------------------------------------

# llama.cpp's schema-to-grammar converter enforces types, keys and string lengths, not numeric bounds.
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}]


def _is_person(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return (isinstance(value, dict) and set(value) == {"name", "age"} and isinstance(value["name"], str)
            and len(value["name"]) <= 24 and isinstance(value["age"], int) and not isinstance(value["age"], bool))


def test_json_schema_output_valid_for_20_seeds(client, model_id):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    messages = [{"role": "user", "content": "Invent a person. Reply in JSON with name and age."}]
    outputs = []
    for seed in range(0, 20, SLOTS):  # n answers use seeds seed, seed + 1, ...
        r = chat(client, model_id, messages=messages, n=SLOTS, seed=seed, temperature=1.0, max_tokens=128,
                 response_format=fmt)
        outputs += [(c.message.content, c.finish_reason) for c in r.choices]
    assert len(outputs) == 20
    bad = [o for o in outputs if not _is_person(o[0])]
    assert not bad, bad
    obj = chat(client, model_id, messages=messages, seed=1, temperature=1.0, max_tokens=96,
               response_format={"type": "json_object"}).choices[0].message.content
    assert isinstance(json.loads(obj), dict)


def test_forced_tool_call_has_valid_json_arguments(client, model_id):
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in (named, "required"):
        r = chat(client, model_id, messages=messages, tools=WEATHER, tool_choice=choice, temperature=0,
                 max_tokens=64)
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and calls
        assert calls[0].function.name == "get_weather" and calls[0].type == "function" and calls[0].id
        args = json.loads(calls[0].function.arguments)
        assert isinstance(args["city"], str) and set(args) == {"city"}
    chunks = list(chat(client, model_id, messages=messages, tools=WEATHER, tool_choice=named, temperature=0,
                       max_tokens=64, stream=True))
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and json.loads(deltas[0].function.arguments)["city"] == args["city"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, model_id, messages=messages, tools=WEATHER, tool_choice={"type": "function",
                                                                              "function": {"name": "nope"}})
    assert err.value.body["param"] == "tool_choice"


# -- concurrency ----------------------------------------------------------------------------------------------------

def test_four_concurrent_greedy_streams_equal_each_alone(client, model_id):
    import threading

    places = ("Africa", "the sea", "forests", "the Arctic")[:SLOTS]
    prompts = [f"Name three animals that live in {place}." for place in places]

    def ask(prompt: str) -> str:
        stream = chat(client, model_id, messages=[{"role": "user", "content": prompt}], temperature=0,
                      max_tokens=24, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    alone = [ask(p) for p in prompts]
    together: list[str | None] = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        barrier.wait(TIMEOUT)
        together[i] = ask(prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    assert together == alone


# -- a converted Hugging Face checkpoint (tiny Qwen2: Hermes-style tool template) --------------------------------------

def test_tiny_qwen2_checkpoint_served_with_tools(tiny_qwen2_dir, tmp_path):
    srv = ServerProcess(tiny_qwen2_dir, "--ctx", "512", "--threads", "2", home=tmp_path).wait_ready()
    try:
        with openai.OpenAI(base_url=srv.url + "/v1", api_key="none", timeout=TIMEOUT, max_retries=0) as c:
            model_id = c.models.list().data[0].id
            assert model_id == tiny_qwen2_dir.name
            r = chat(c, model_id, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=WEATHER,
                     tool_choice="required", seed=0, temperature=1.0, max_tokens=64)
            args = json.loads(r.choices[0].message.tool_calls[0].function.arguments)
            assert isinstance(args["city"], str)
        assert srv.stop() == 0
    finally:
        srv.kill()
