"""A model without a chat template: a template its vocabulary identifies, or plain completion; said once.

Oracles: llama.cpp's built-in templates (``llama_chat_apply_template`` by name) for the Jinja
texts, and real GGUFs converted from checkpoints that carry no template.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys

import pytest

import edgekit
from edgekit.convert import convert
from edgekit.runtime.template import BUILTIN, COMPLETION, fallback, looks_chat_tuned, render
from edgekit.samples.checkpoints import random_qwen2_checkpoint
from edgekit.samples.spm import cached_llama_spm_checkpoint, random_llama_spm_checkpoint, spm_vocab

CONVERSATIONS = [
    [("user", "Hi there")],
    [("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello!"), ("user", "How are you?")],
    [("user", "  spaced out \n")],
    [("system", "S"), ("user", "u1"), ("assistant", " a1 "), ("user", "u2")],
]


def _llama_cpp_builtin(name: str, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
    import llama_cpp.llama_cpp as L

    chat = (L.llama_chat_message * len(messages))()
    keep = []
    for i, (role, content) in enumerate(messages):
        keep += [role.encode(), content.encode()]
        chat[i].role, chat[i].content = keep[-2], keep[-1]
    buf = ctypes.create_string_buffer(1 << 16)
    n = L.llama_chat_apply_template(name.encode(), chat, len(messages), add_generation_prompt, buf, len(buf))
    assert n > 0
    return buf.raw[:n].decode()


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_templates_render_as_llama_cpps(name):
    source, _ = BUILTIN[name]
    for messages in CONVERSATIONS:
        for add in (True, False):
            ours = render(source, [{"role": r, "content": c} for r, c in messages], add_generation_prompt=add)
            assert ours == _llama_cpp_builtin(name, messages, add)


def test_fallback_needs_every_control_token_and_a_chat_tuned_name():
    gemma = ("<start_of_turn>", "<end_of_turn>")
    assert fallback(lambda t: t in gemma, ["gemma-3-270m-it"])[0] == "gemma"
    assert fallback(lambda t: t in ("<|im_start|>", "<|im_end|>"), ["SmolLM2-135M-Instruct.Q4_1"])[0] == "chatml"
    # One of a template's tokens missing: not that template.
    assert fallback(lambda t: t == "<|im_start|>", ["Qwen2.5-0.5B-Instruct"])[0] == "completion"
    name, source, note = fallback(lambda t: False, ["chat"])
    assert (name, source) == ("completion", COMPLETION) and "--chat-template" in note
    # A base model: plain completion, and the note names the template its vocabulary would fit.
    name, _, note = fallback(lambda t: t in gemma, ["Gemma 3 270m", "", "gemma-3-270m-q4_k_m"])
    assert name == "completion" and "--chat-template gemma" in note
    assert not looks_chat_tuned(["Qwen2.5-0.5B", "digit", "edit", "chatty"])


def test_completion_continues_the_text():
    messages = [{"role": "user", "content": "The capital of France is"}, {"role": "assistant", "content": " Paris."},
                {"role": "user", "content": "And of Spain?"}]
    assert render(COMPLETION, messages[:1]) == "The capital of France is"
    # The answer continued the prompt directly, so the follow-up's prompt starts with the first one's tokens.
    assert render(COMPLETION, messages) == "The capital of France is Paris.\n\nAnd of Spain?"


@pytest.fixture(scope="module")
def phi3_no_template(tmp_path_factory):
    ck = random_llama_spm_checkpoint(tmp_path_factory.mktemp("phi") / "ck", spm_vocab("phi-3"), layers=1,
                                     chat_template=None)
    return convert(ck, tmp_path_factory.mktemp("phi") / "phi3-vocab-instruct.gguf", "f16")[0].path


def test_vocabulary_identifies_the_template(phi3_no_template):
    with edgekit.load(phi3_no_template, n_ctx=128, threads=2) as model:
        assert model.info.chat_template is None
        assert "'phi3'" in model.template_note and "--chat-template" in model.template_note
        text = model.render_chat([{"role": "user", "content": "Hi"}])
        assert text == "<|user|>\nHi<|end|>\n<|assistant|>\n"
        tokens = model.chat_tokens([{"role": "user", "content": "Hi"}])
        assert model.detokenize([tokens[1]]) == "<|user|>"  # after BOS: one control token, not text
        assert model.is_eog(model.tokenize("<|end|>", add_special=False)[0])


def test_a_template_given_is_used_without_a_note(phi3_no_template):
    with edgekit.load(phi3_no_template, n_ctx=128, threads=2, chat_template="{{ messages[0]['content'] }}!") as model:
        assert model.template_note == ""
        assert model.render_chat([{"role": "user", "content": "Hi"}]) == "Hi!"


@pytest.mark.slow
def test_chatml_only_when_its_tokens_are_there(tmp_path, qwen2_vocab_gguf):
    """Qwen2's vocabulary has <|im_start|>; Llama 2's has none of the templates' tokens."""
    ck = random_qwen2_checkpoint(tmp_path / "q", qwen2_vocab_gguf, layers=1)
    config = (ck / "tokenizer_config.json")
    config.write_text(config.read_text(encoding="utf-8").replace('"chat_template"', '"unused_template"'),
                      encoding="utf-8")
    qwen = convert(ck, tmp_path / "q-chat.gguf", "f16")[0].path
    with edgekit.load(qwen, n_ctx=128, threads=2) as model:
        assert model.info.chat_template is None and "'chatml'" in model.template_note
    llama2 = convert(cached_llama_spm_checkpoint("llama-spm", chat_template=False), tmp_path / "l-chat.gguf",
                     "f16")[0].path
    with edgekit.load(llama2, n_ctx=128, threads=2) as model:
        assert "fits none" in model.template_note
        assert model.render_chat([{"role": "system", "content": "A"}, {"role": "user", "content": "B"}]) == "A\n\nB"
        assert "<|im_start|>" not in model.render_chat([{"role": "user", "content": "B"}])


@pytest.mark.slow
def test_chat_cli_says_so_once(phi3_no_template):
    out = subprocess.run([sys.executable, "-m", "edgekit", "chat", str(phi3_no_template), "-p", "Hi", "-n", "4",
                          "--temp", "0"], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("has no chat template") == 1
    assert "'phi3'" in out.stderr and "--chat-template" in out.stderr
    assert "has no chat template" not in out.stdout


@pytest.mark.slow
def test_cli_takes_a_builtin_template_by_name(phi3_no_template):
    out = subprocess.run([sys.executable, "-m", "edgekit", "chat", str(phi3_no_template), "-p", "Hi", "-n", "2",
                          "--temp", "0", "--chat-template", "chatml"], capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "has no chat template" not in out.stderr


@pytest.mark.slow
def test_registry_gemma3_without_template_completes_instead_of_echoing():
    """The registry's Gemma 3 270M GGUF (a base model) has no template; ChatML made it echo the question."""
    from edgekit.samples.assets import gemma3_270m_gguf

    with edgekit.load(gemma3_270m_gguf(), n_ctx=512, threads=2) as model:
        assert model.info.chat_template is None
        assert "--chat-template gemma" in model.template_note
        question = [{"role": "user", "content": "What is the capital of France?"}]
        assert model.render_chat(question) == "What is the capital of France?"
        answer = model.chat(question, temperature=0, max_tokens=24)
        assert "Paris" in answer.text


@pytest.mark.slow
def test_instruct_model_without_template_chats_with_its_vocabularys_template(smollm2_hf_dir, tmp_path):
    """SmolLM2-135M-Instruct's real weights, converted after removing its template: ChatML by its
    vocabulary and name, and the answer stops at <|im_end|>."""
    ck = tmp_path / "SmolLM2-135M-Instruct"
    shutil.copytree(smollm2_hf_dir, ck)
    config = json.loads((ck / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["chat_template"]
    (ck / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (ck / "chat_template.jinja").unlink(missing_ok=True)
    path = convert(ck, tmp_path / "SmolLM2-135M-Instruct-no-template.gguf", "q8_0")[0].path
    with edgekit.load(path, n_ctx=512, threads=2) as model:
        assert model.info.chat_template is None and "'chatml'" in model.template_note
        answer = model.chat([{"role": "user", "content": "What is the capital of France?"}], temperature=0,
                            max_tokens=48)
        assert answer.finish_reason == "eog" and "Paris" in answer.text


@pytest.mark.slow
def test_serve_says_so_once_and_takes_the_option(phi3_no_template, tmp_path):
    from serve_process import ServerProcess

    srv = ServerProcess(phi3_no_template, "--ctx", "128", "--threads", "2", home=tmp_path).wait_ready()
    assert srv.stop() == 0
    assert "".join(srv.stderr).count("has no chat template") == 1 and "'phi3'" in "".join(srv.stderr)
    srv = ServerProcess(phi3_no_template, "--ctx", "128", "--threads", "2", "--chat-template", "completion",
                        home=tmp_path).wait_ready()
    assert srv.stop() == 0
    assert "has no chat template" not in srv.output()
