"""Tool calls and response_format (edgekit.runtime.tools): rendering, forced calls by grammar, parsing, JSON output."""

from __future__ import annotations

import functools
import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loaded_models import smol, tiny_qwen2_gguf

import edgekit
from edgekit.runtime import tool_prompt, tools
from edgekit.runtime.template import render
from edgekit.runtime.tools import (
    InvalidParam,
    ToolCallStream,
    parse_tool_calls,
    response_format_options,
    tool_request,
)

# A Hermes-style template written for these tests: it takes `tools`, writes calls in <tool_call> tags
# with the arguments as an object, and gathers consecutive tool results into one user turn, as
# Qwen2.5's own template does.
HERMES = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}{% else %}You are a helpful assistant.{% endif %}

# Tools
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
Call a function as <tool_call>
{"name": <name>, "arguments": <object>}
</tool_call><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == 'system' and loop.first %}
{%- elif m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant
{% if m.content %}{{ m.content }}
{% endif %}
{%- for call in m.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{% endfor %}<|im_end|>
{% elif m.role == 'tool' %}
{%- if loop.first or loop.previtem.role != 'tool' %}<|im_start|>user
{% endif %}<tool_response>
{{ m.content }}
</tool_response>
{% if loop.last or loop.nextitem.role != 'tool' %}<|im_end|>
{% endif %}
{%- else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER_ARGS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_ARGS = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}, "hours": {"type": "integer"}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER_ARGS}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone",
                                      "parameters": TIME_ARGS}},
]
SCHEMAS = {"get_weather": WEATHER_ARGS, "get_time": TIME_ARGS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
HISTORY = [
    {"role": "user", "content": "Weather in Paris and the time in CET?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}},
    ]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
]


@functools.cache
def tiny_qwen2():
    """The tiny random-weight Qwen2 (real Qwen2 vocabulary) with the Hermes-style template above."""
    return edgekit.load(tiny_qwen2_gguf()[1], n_ctx=1024, chat_template=HERMES, seed=1)


def check_calls(reply: tools.ToolReply, only: str | None = None) -> None:
    """Every call names a known function (or ``only``) and its arguments validate against its schema."""
    assert reply.tool_calls, reply
    assert reply.finish_reason == "tool_calls"
    for call in reply.tool_calls:
        assert call.name == only if only else call.name in SCHEMAS
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        assert call.as_dict()["function"] == {"name": call.name, "arguments": call.arguments}
        assert call.as_dict()["id"].startswith("call_")


# -- rendering -----------------------------------------------------------------------------------------------


def test_the_style_is_read_from_the_template(smollm2_gguf):
    assert tool_prompt.template_style(HERMES) == "hermes"
    assert tool_prompt.template_style(smol().chat_template) == "prompt"
    assert tool_prompt.template_style(None) == "prompt"


def test_a_hermes_template_renders_tools_calls_and_results_itself():
    messages, extra = tool_prompt.chat_inputs(HERMES, HISTORY, tools.check_tools(TOOLS))
    text = render(HERMES, messages, **extra)
    for tool in TOOLS:
        assert json.dumps(tool) in text
    # Arguments arrive as JSON text (OpenAI) and are rendered as an object, not a quoted string.
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>' \
        in text
    assert "<|im_start|>user\n<tool_response>\n18 degrees, sunny\n</tool_response>\n<tool_response>\n14:05\n" \
           "</tool_response>\n<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    # Without tools (tool_choice "none") the history still renders, and no tool list is shown.
    messages, extra = tool_prompt.chat_inputs(HERMES, HISTORY, [])
    assert extra == {} and "<tools>" not in render(HERMES, messages, **extra)


def test_model_render_chat_passes_tools_to_the_template():
    m = tiny_qwen2()
    with_tools = m.render_chat(ASK, tools=TOOLS)
    assert "# Tools" in with_tools and '"name": "get_time"' in with_tools
    assert "# Tools" not in m.render_chat(ASK)
    assert m.chat_tokens(ASK, tools=TOOLS) == m.tokenize(with_tools, add_special=False) != m.chat_tokens(ASK)


def test_a_template_without_tool_support_gets_a_system_block_and_text_turns(smollm2_gguf):
    m = smol()
    text = m.render_chat(HISTORY, tools=TOOLS)
    assert text.startswith("<|im_start|>system\nYou can call functions")  # replaces SmolLM2's default system
    assert json.dumps(TOOLS[1]) in text
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", ' \
           '"unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time"' in text
    # Both results in one user turn (the template knows no "tool" role).
    assert "<|im_start|>user\n<tool_response>\n18 degrees, sunny\n</tool_response>\n<tool_response>\n14:05\n" \
           "</tool_response><|im_end|>" in text
    assert "<|im_start|>tool" not in text
    # A system message of the user's own is kept, with the block after it.
    own = m.render_chat([{"role": "system", "content": "Be terse."}, *ASK], tools=TOOLS)
    assert own.startswith("<|im_start|>system\nBe terse.\n\nYou can call functions")
    # Plain messages pass through unchanged.
    assert tool_prompt.chat_inputs(m.chat_template, ASK, []) == (ASK, {})


# -- forced calls ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_calls_on_smollm2_have_arguments_that_match_the_schema(choice, smollm2_gguf):
    only = choice["function"]["name"] if isinstance(choice, dict) else None
    for seed in range(4):
        reply = tools.chat(smol(), ASK, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False, seed=seed,
                           temperature=1.0, max_tokens=120)
        assert reply.completion.finish_reason == "eog", reply.completion.text
        check_calls(reply, only)
        assert reply.content is None and len(reply.tool_calls) == 1


@pytest.mark.slow
def test_forced_parallel_calls_stop_at_the_cap(smollm2_gguf):
    # SmolLM2 repeats the call as long as the grammar lets it; the cap ends the reply with whole calls.
    ping = {"type": "function", "function": {"name": "ping", "description": "Check the network"}}
    reply = tools.chat(smol(), [{"role": "user", "content": "Is the network up?"}], tools=[ping],
                       tool_choice="required", temperature=0, max_tokens=300)
    assert reply.completion.finish_reason == "eog", reply.completion.text
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("ping", "{}")] * tools.MAX_FORCED_CALLS


@pytest.mark.slow
@pytest.mark.parametrize(("choice", "parallel"), [("required", False), ("required", True),
                                                  ({"type": "function", "function": {"name": "get_weather"}}, True)])
def test_forced_calls_on_random_weights_have_arguments_that_match_the_schema(choice, parallel):
    only = choice["function"]["name"] if isinstance(choice, dict) else None
    for seed in range(3):
        reply = tools.chat(tiny_qwen2(), ASK, tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel,
                           seed=seed, temperature=1.0, max_tokens=8 * 60)
        assert reply.completion.finish_reason == "eog", reply.completion.text
        check_calls(reply, only)
        if only or not parallel:
            assert len(reply.tool_calls) == 1


def test_tool_choice_none_renders_no_tools_and_parses_nothing():
    m = tiny_qwen2()
    request = tool_request(TOOLS, "none")
    assert not request.active and request.prompt_tools is None and request.grammar() is None
    call = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'
    assert request.parse(call).tool_calls == [] and request.parse(call).content == call
    reply = tools.chat(m, ASK, tools=TOOLS, tool_choice="none", max_tokens=4, temperature=0)
    assert reply.completion.stats.prompt_tokens == len(m.chat_tokens(ASK))


def test_auto_parses_what_the_model_writes():
    m = tiny_qwen2()
    reply = tools.chat(m, ASK, tools=TOOLS, max_tokens=8, temperature=0)  # random weights: text, no call
    assert reply.completion.stats.prompt_tokens == len(m.chat_tokens(ASK, tools=TOOLS))
    assert reply.content == reply.completion.text and reply.tool_calls == []
    assert tool_request(TOOLS).choice == "auto" and tool_request(TOOLS).grammar() is None


# -- parsing --------------------------------------------------------------------------------------------------------

NAMES = ["get_weather", "get_time"]
CALL_W = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>'
CALL_T = '<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}\n</tool_call>'


def test_parsing_several_calls_with_content():
    reply = parse_tool_calls(f"Let me check.\n{CALL_W}\n{CALL_T}\n", NAMES)
    assert reply.content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("get_weather", {"city": "Oslo", "unit": "celsius"}), ("get_time", {"zone": "UTC"})]
    assert len({c.id for c in reply.tool_calls}) == 2


def test_without_parallel_calls_only_the_first_call_is_kept():
    text = f"Let me check.\n{CALL_W}\n{CALL_T}\nDone."
    request = tools.tool_request(TOOLS, "auto", parallel_tool_calls=False)
    reply = request.parse(text)
    assert [c.name for c in reply.tool_calls] == ["get_weather"]
    assert reply.content == "Let me check.\nDone."  # the dropped call's block is gone too
    stream = request.stream()
    sent = stream.feed(text)
    rest, streamed = stream.finish()
    assert sent + rest == reply.content and [c.name for c in streamed.tool_calls] == ["get_weather"]
    assert len(tools.tool_request(TOOLS, "auto").parse(text).tool_calls) == 2


@pytest.mark.parametrize("text", [
    "no calls at all",
    "",
    "<tool_call>\nnot json\n</tool_call>",
    '<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>',  # unknown function
    '<tool_call>\n{"name": "get_time", "arguments": [1, 2]}\n</tool_call>',  # arguments not an object
    '<tool_call>\n{"name": "get_time", "arguments": "{broken"}\n</tool_call>',
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}\n</tool_call>',  # a brace short
    '{"name": "get_time", "arguments": {"zone": "UTC"}}',  # no tags
])
def test_what_is_not_a_call_stays_content(text):
    reply = parse_tool_calls(text, NAMES)
    assert reply.tool_calls == [] and reply.content == text and reply.finish_reason == "stop"


def test_a_bad_block_stays_content_beside_a_good_one():
    bad = '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>'
    reply = parse_tool_calls(f"{bad}\n{CALL_W}", NAMES)
    assert reply.content == bad and [c.name for c in reply.tool_calls] == ["get_weather"]


def test_an_unclosed_call_at_the_end_or_before_the_next_one_still_parses():
    unclosed = CALL_T.removesuffix("</tool_call>")
    reply = parse_tool_calls(unclosed + CALL_W.removesuffix("\n</tool_call>"), NAMES)
    assert [c.name for c in reply.tool_calls] == ["get_time", "get_weather"] and reply.content is None


@settings(max_examples=60, deadline=None)
@given(text=st.sampled_from([
    f"Sure.  \n{CALL_W}\n{CALL_T}", f"{CALL_W} trailing words ", "  plain text with <tool_ and more  ",
    f"<tool_call>\ngarbage\n</tool_call> then {CALL_T} and after", f"\n\n{CALL_T}\n\n", "", "<tool_c",
]), cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_streaming_sends_a_prefix_of_the_content_and_agrees_with_the_whole_reply(text, cuts):
    whole = parse_tool_calls(text, NAMES)
    stream = ToolCallStream(NAMES)
    bounds = sorted({0, len(text), *[c for c in cuts if c < len(text)]})
    sent = "".join(stream.feed(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    rest, reply = stream.finish()
    assert sent + rest == (whole.content or "")
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [(c.name, c.arguments) for c in whole.tool_calls]
    assert "<tool_call>" not in sent


def test_streaming_holds_back_only_what_could_be_a_call():
    stream = ToolCallStream(NAMES)
    assert stream.feed("Hello wor") == "Hello wor"
    assert stream.feed("ld <tool") == "ld"  # "<tool" may open a call, the space may end the content
    assert stream.feed("box> ok") == " <toolbox> ok"
    assert stream.feed(" " + CALL_W) == ""
    assert stream.finish()[0] == ""
    passthrough = tool_request(TOOLS, "none").stream()
    assert passthrough.feed(CALL_W) == CALL_W


# -- response_format ---------------------------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
                   "pet": {"enum": ["cat", "dog", "none"]}},
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}


@pytest.mark.slow
@pytest.mark.parametrize(("response_format", "schema"), [
    ({"type": "json_object"}, {"type": "object"}),
    ({"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}, PERSON),
])
def test_json_output_parses_and_validates_for_20_seeds(response_format, schema, smollm2_gguf):
    ask = [{"role": "user", "content": "Describe a person as a short JSON object."}]
    for seed in range(20):
        reply = tools.chat(smol(), ask, response_format=response_format, seed=seed, temperature=0.8,
                           max_tokens=200)
        assert reply.completion.finish_reason == "eog", reply.completion.text
        jsonschema.validate(json.loads(reply.content), schema)


def test_response_format_options():
    assert response_format_options(None) == {} == response_format_options({"type": "text"})
    assert response_format_options({"type": "json_object"}) == {"json_schema": {"type": "object"}}
    spec = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    assert response_format_options(spec) == {"json_schema": PERSON}


@pytest.mark.parametrize(("response_format", "param"), [
    ("json", "response_format"),
    ({"type": "xml"}, "response_format.type"),
    ({}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": PERSON}},
     "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": [1]}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"$ref": "#/nowhere"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": "yes"}},
     "response_format.json_schema.strict"),
    # counts the converter would spell out into gigabytes of grammar: refused before it runs
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "string", "maxLength": 10**9}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "^x{2,99999999}$"}}}}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "string", "pattern": "^x{"
                                                                     + "9" * 5000 + "}$"}}},
     "response_format.json_schema.schema"),
])
def test_bad_response_formats_name_the_param(response_format, param):
    with pytest.raises(InvalidParam) as err:
        response_format_options(response_format)
    assert err.value.param == param and isinstance(err.value, edgekit.EdgekitError)


@pytest.mark.parametrize(("tools_", "choice", "param"), [
    ({"type": "function"}, None, "tools"),
    ([{"type": "retrieval"}], None, "tools[0]"),
    ([{"type": "function", "function": {"name": "has space"}}], None, "tools[0].function.name"),
    ([TOOLS[0], TOOLS[0]], None, "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], None, "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], None, "tools[0].function.description"),
    (TOOLS, "sometimes", "tool_choice"),
    (TOOLS, {"type": "function", "function": {"name": "launch_rockets"}}, "tool_choice"),
    (TOOLS, {"type": "function"}, "tool_choice"),
    (None, "required", "tool_choice"),
])
def test_bad_tools_and_tool_choice_name_the_param(tools_, choice, param):
    with pytest.raises(InvalidParam) as err:
        tool_request(tools_, choice)
    assert err.value.param == param


def test_forced_calls_and_other_constraints_do_not_mix():
    m = tiny_qwen2()
    with pytest.raises(InvalidParam) as err:
        tools.chat(m, ASK, tools=TOOLS, response_format={"type": "json_object"})
    assert err.value.param == "response_format"
    with pytest.raises(InvalidParam) as err:
        tools.chat(m, ASK, tools=TOOLS, tool_choice="required", grammar='root ::= "x"')
    assert err.value.param == "grammar"
    bad = [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/nowhere"}}}]
    with pytest.raises(InvalidParam) as err:
        tool_request(bad, "required").grammar()
    assert err.value.param == "tools[0].function.parameters"
    with pytest.raises(InvalidParam) as err:  # the one home of the rule: sampling.schema_grammar
        tools.constraint_options(tool_request([{**TOOLS[0], "function": {**TOOLS[0]["function"], "parameters": {
            "type": "wat"}}}], "required"))
    assert err.value.param == "tools[0].function.parameters"
