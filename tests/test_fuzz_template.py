"""Fuzz the chat-template renderer (edgekit.runtime.template.render).

Templates come from model files, so they are untrusted code. Random templates
are built from Jinja fragments (expressions, filters, tests, loops, macros,
broken tags), rendered with random messages: each must render or raise an
EdgekitError (TemplateError), in bounded time and memory.

A longer run (examples per test; the default is a few hundred):
    EDGEKIT_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_*.py
"""

from __future__ import annotations

import pytest
from fuzzing import fuzz_settings, only_edgekit_errors
from hypothesis import example, given
from hypothesis import strategies as st

from edgekit.runtime.template import CHATML, render

NAMES = ["messages", "message", "loop.index", "loop.last", "add_generation_prompt", "bos_token", "eos_token",
         "none", "true", "'x'", "'<|im_start|>'", "messages[0]", "messages[-1]", "message['role']",
         "message.content", "tools", "range(3)", "namespace(a=1)", "x", "f", "[]", "{}", "0", "-1", "1.5"]
OPERATORS = ["+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", "and", "or", "in", "not in", "is", "is not"]
FILTERS = ["length", "tojson", "upper", "trim", "join", "first", "last", "list", "string", "int", "float", "safe",
           "items", "reverse", "sort", "unique", "default('d')", "replace('a', 'b')", "indent(2)", "e", "count",
           "tojson(indent=2)", "map(attribute='role')", "selectattr('role', 'equalto', 'user')", "sum", "abs"]
ATTRIBUTES = ["role", "content", "items", "keys", "get", "append", "startswith", "__class__", "mro", "format", "a"]

numbers = st.one_of(st.integers(-1000, 1000), st.sampled_from([2**31, 10**6, 10**9, 10**12, 10**100])).map(str)
expressions = st.recursive(
    st.one_of(st.sampled_from(NAMES), numbers, st.text(max_size=6).map(repr)),
    lambda e: st.one_of(
        st.tuples(e, st.sampled_from(OPERATORS), e).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(e, st.sampled_from(FILTERS)).map(lambda t: f"{t[0]}|{t[1]}"),
        st.tuples(e, e).map(lambda t: f"{t[0]}[{t[1]}]"),
        st.tuples(e, st.sampled_from(ATTRIBUTES)).map(lambda t: f"{t[0]}.{t[1]}"),
        st.tuples(e, e).map(lambda t: f"{t[0]}({t[1]})"),
        e.map(lambda x: f"({x})"),
        e.map(lambda x: f"raise_exception({x})"),
        e.map(lambda x: f"strftime_now({x})"),
        e.map(lambda x: f"range({x})"),
        st.tuples(e, e).map(lambda t: f"[{t[0]}, {t[1]}]"),
        st.tuples(e, e).map(lambda t: f"{{{t[0]}: {t[1]}}}"),
        st.tuples(e, e, e).map(lambda t: f"{t[0]} if {t[1]} else {t[2]}"),
    ),
    max_leaves=6,
)
templates = st.recursive(
    st.one_of(st.text(max_size=10), expressions.map(lambda x: f"{{{{ {x} }}}}"),
              st.sampled_from(["{%", "{{", "%}", "}}", "{#", "{% break %}", "{% continue %}", "{{ f(1) }}",
                               "{% endfor %}", "{% raw %}{{{% endraw %}", "{%- if true -%}x{%- endif -%}"])),
    lambda body: st.one_of(
        st.lists(body, min_size=2, max_size=4).map("".join),
        st.tuples(expressions, body, body).map(lambda t: f"{{% if {t[0]} %}}{t[1]}{{% else %}}{t[2]}{{% endif %}}"),
        st.tuples(expressions, body).map(lambda t: f"{{% for message in {t[0]} %}}{t[1]}{{% endfor %}}"),
        st.tuples(expressions, body).map(lambda t: f"{{% set x = {t[0]} %}}{t[1]}"),
        body.map(lambda b: f"{{% macro f(a) %}}{b}{{% endmacro %}}"),
        st.tuples(expressions, body).map(lambda t: f"{{% set ns = namespace(a={t[0]}) %}}{t[1]}"),
    ),
    max_leaves=8,
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), st.text()),
                               "content": st.one_of(st.text(max_size=40), st.none(),
                                                    st.lists(st.dictionaries(st.text(max_size=4),
                                                                             st.text(max_size=4), max_size=2),
                                                             max_size=2))}),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
        st.text(max_size=5),
    ),
    max_size=4,
)


@fuzz_settings(400)
@given(templates, messages, st.booleans())
@example(CHATML, [{"role": "user", "content": "hi"}], True)
# Found by this test: compiling raised Python's SyntaxError or a constant-folding TypeError ...
@example("{% break %}", [], False)
@example("{% for message in strftime_now({[]: none}) %}{% endfor %}", [], False)
# ... rendering ZeroDivisionError, OverflowError (a range over the sandbox's cap), RecursionError ...
@example("{{ 1 / 0 }}", [], False)
@example("{% for message in range(10**6) %}{% endfor %}", [], False)
@example("{% macro f(a) %}{{ f(a) }}{% endmacro %}{{ f(1) }}", [], False)
# ... and a repetition or power allocated gigabytes.
@pytest.mark.slow
@example("{{ 'x' * 10**9 }}", [], False)
@example("{{ 10 ** 10 ** 9 }}", [], False)
def test_random_template_renders_or_is_refused(source, msgs, add_generation_prompt):
    out = only_edgekit_errors(render, source, msgs, add_generation_prompt=add_generation_prompt, bos_token="<s>",
                              eos_token="</s>")
    assert out is None or isinstance(out, str)
