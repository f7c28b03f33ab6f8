"""A chat template given by the user replaces the GGUF's: ``load(chat_template=)`` and ``edgekit chat --chat-template``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import edgekit

# Renders only the last message, so the prompt is exactly its text.
LAST_MESSAGE_ONLY = "{{ messages[-1]['content'] }}"
TAGGED = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
          "{% if add_generation_prompt %}[assistant]{% endif %}")
QUESTION = "What is the capital of France?"


def test_load_with_a_chat_template_uses_it_instead_of_the_files(smollm2_gguf):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    with edgekit.load(smollm2_gguf, n_ctx=256, chat_template=TAGGED) as m:
        assert m.chat_template == TAGGED
        assert m.render_chat(messages) == "[system] Be brief.\n[user] hi\n[assistant]"
        c = m.chat(messages, max_tokens=4, temperature=0)
        assert c.stats.prompt_tokens == len(m.tokenize("[system] Be brief.\n[user] hi\n[assistant]"))
    with edgekit.load(smollm2_gguf, n_ctx=256) as m:  # without it, the GGUF's own (ChatML) template
        assert "<|im_start|>" in m.render_chat(messages)


def _chat(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    return subprocess.run([sys.executable, "-m", "edgekit", "chat", *args], capture_output=True, text=True,
                          env={**env, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL, timeout=180)


@pytest.mark.slow
def test_chat_cli_reads_the_template_file(smollm2_gguf, tmp_path):
    template = tmp_path / "last-message.jinja"
    template.write_text(LAST_MESSAGE_ONLY)
    out = _chat(str(smollm2_gguf), "--chat-template", str(template), "--prompt", QUESTION, "--max-tokens", "2",
                "--temp", "0", "--ctx", "256", "--json")
    assert out.returncode == 0, out.stderr
    with edgekit.load(smollm2_gguf, n_ctx=256) as m:
        expected = len(m.tokenize(QUESTION))  # the question alone (plus BOS where the model adds one)
        with_file_template = len(m.chat_tokens([{"role": "user", "content": QUESTION}]))
    assert json.loads(out.stdout)["stats"]["prompt_tokens"] == expected < with_file_template


def test_chat_cli_names_a_missing_template_file(smollm2_gguf, tmp_path):
    out = _chat(str(smollm2_gguf), "--chat-template", str(tmp_path / "nope.jinja"), "--prompt", "hi")
    assert out.returncode == 1
    assert "nope.jinja does not exist" in out.stderr and "Traceback" not in out.stderr
