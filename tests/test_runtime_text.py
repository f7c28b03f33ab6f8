"""Streaming text safety (UTF-8 splits, stop strings) and sandboxed chat templates; no model needed."""

from __future__ import annotations

import pytest

from edgekit.errors import EdgekitError
from edgekit.runtime.sampling import Sampling, resolve
from edgekit.runtime.template import TemplateError, render
from edgekit.runtime.textstream import TextStream


def test_multibyte_characters_split_across_tokens():
    s = TextStream()
    data = "日本é🙂".encode()
    out = [s.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) == "日本é🙂"
    assert all(o == "" or len(o) == 1 for o in out)  # each char released exactly when complete
    assert s.finish() == ""


def test_dangling_bytes_become_replacement_char_at_the_end():
    s = TextStream()
    assert s.push(b"ok\xe6\x97") == "ok"
    assert s.finish() == "\ufffd"


def test_stop_string_prefix_is_held_back_then_dropped():
    s = TextStream(stop=["</s>"])
    assert s.push(b"Hello <") == "Hello "
    assert s.push(b"/s") == ""
    assert s.push(b">and more") == "" and s.stopped
    assert s.text == "Hello " and s.finish() == ""


def test_false_alarm_is_released():
    s = TextStream(stop=["</s>"])
    assert s.push(b"a <") == "a "
    assert s.push(b"b> c") == "<b> c"
    assert s.finish() == "" and s.text == "a <b> c"


def test_earliest_of_several_stops_wins_and_tail_flushes():
    s = TextStream(stop=["END", "\n\n"])
    assert s.push(b"x\n") == "x"
    assert s.push(b"y END") == "\ny "  # "\n" was a possible "\n\n" prefix until "y" came
    assert s.stopped and s.text == "x\ny "
    t = TextStream(stop=["END"])
    assert t.push(b"almost EN") == "almost "
    assert t.finish() == "EN"  # no stop came: what was held back is released at the end
    assert t.text == "almost EN"


def test_template_renders_with_generation_prompt_and_specials():
    src = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}" \
          "{% if add_generation_prompt %}[assistant]{% endif %}"
    msgs = [{"role": "user", "content": "hi"}]
    assert render(src, msgs, bos_token="<s>", eos_token="</s>") == "<s>[user]hi</s>[assistant]"
    assert render(src, msgs, add_generation_prompt=False) == "[user]hi"
    assert render(None, msgs).startswith("<|im_start|>user\nhi<|im_end|>")  # ChatML when the GGUF has none


def test_template_raise_exception_and_sandbox():
    src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    with pytest.raises(TemplateError, match="first must be user"):
        render(src, [{"role": "assistant", "content": "x"}])
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError):
        render(evil, [{"role": "user", "content": "x"}])
    mutate = "{% set _ = messages.append({'role': 'x'}) %}"
    with pytest.raises(TemplateError):
        render(mutate, [{"role": "user", "content": "x"}])
    with pytest.raises(TemplateError, match="not valid Jinja"):
        render("{% for %}", [{"role": "user", "content": "x"}])
    with pytest.raises(EdgekitError, match="role"):
        render(None, [{"content": "no role"}])


def test_sampling_options_merge_and_validate():
    base = Sampling(temperature=0.2, stop=["a"])
    s = resolve(base, None, {"max_tokens": 5})
    assert (s.temperature, s.max_tokens, s.stop) == (0.2, 5, ("a",))
    assert resolve(base, Sampling(top_k=3), {}).top_k == 3
    with pytest.raises(EdgekitError, match="unknown sampling option"):
        resolve(base, None, {"temprature": 1})
    with pytest.raises(EdgekitError):
        Sampling(top_p=2.0)
    with pytest.raises(EdgekitError, match="either grammar or json_schema"):
        Sampling(grammar="root ::= \"a\"", json_schema={})
    assert Sampling(stop="x").stop == ("x",)
