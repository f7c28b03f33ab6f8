"""Chat sessions: history, prompt-cache reuse, the overflow policy, retry, save/load."""

from __future__ import annotations

import json

import pytest
from loaded_models import QUESTION, SYSTEM, smol

import edgekit
from edgekit.errors import ContextOverflow, EdgekitError


@pytest.fixture(scope="module")
def small():
    return smol(n_ctx=256)


def test_chat_answers_and_keeps_history():
    chat = edgekit.Chat(smol(), system=SYSTEM, temperature=0, max_tokens=48)
    first = chat.send(QUESTION)
    assert "Paris" in first.text and first.finish_reason == "eog"
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant"]
    assert chat.messages[2]["content"] == first.text
    second = chat.send("What about Germany?")
    # the follow-up reuses the KV of the whole first turn: only its own tokens are prefilled
    assert second.stats.cached_tokens >= first.stats.prompt_tokens
    assert second.stats.new_prompt_tokens < 25
    assert chat.context_used() <= chat.context_size == smol().n_ctx
    assert chat.last_dropped == []


def test_retry_replaces_last_answer():
    chat = edgekit.Chat(smol(), system=SYSTEM, temperature=0, max_tokens=24)
    # Both answers prefill the prompt from scratch (a cached prefix would decode other batches, whose
    # logits can differ in the last bits on some CPUs and so flip a greedy near-tie).
    smol().reset()
    a = chat.send(QUESTION)
    smol().reset()
    b = chat.retry()
    assert b.text == a.text and len(chat.messages) == 3
    c = chat.retry(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=3)
    assert chat.messages[-1]["content"] == c.text and len(chat.messages) == 3
    chat.reset()
    with pytest.raises(EdgekitError, match="no answer"):
        chat.retry()


@pytest.mark.slow
def test_overflow_drops_oldest_turns_and_keeps_system(small):
    chat = edgekit.Chat(small, system="You are terse.", temperature=0, max_tokens=32)
    filler = "Please remember this sentence about apples and pears. " * 4  # ~45 tokens
    sent, dropped = [], []
    for i in range(5):
        msg = f"Turn {i}. {filler}"
        sent.append(msg)
        c = chat.send(msg)
        assert c.stats.prompt_tokens + 32 <= small.n_ctx  # room for the answer was kept
        if chat.last_dropped:  # oldest first, whole turns, never the new message
            assert chat.last_dropped[0]["role"] == "user"
            assert all(d["content"] != msg for d in chat.last_dropped)
            dropped += chat.last_dropped
        assert chat.messages[0] == {"role": "system", "content": "You are terse."}
        assert chat.messages[-2] == {"role": "user", "content": msg}
    assert dropped and dropped[0]["content"] == sent[0]
    assert sent[0] not in [m["content"] for m in chat.messages]
    assert chat.context_used() <= small.n_ctx


def test_single_message_too_big_raises_with_numbers(small):
    chat = edgekit.Chat(small, system="Short.", max_tokens=8)
    with pytest.raises(ContextOverflow) as err:
        chat.send("lorem ipsum " * 400)
    assert err.value.available == small.n_ctx and err.value.needed > small.n_ctx
    assert chat.messages == [{"role": "system", "content": "Short."}]  # nothing was added


def test_abandoned_stream_keeps_what_was_shown():
    chat = edgekit.Chat(smol(), system=SYSTEM, temperature=0, max_tokens=40)
    it = chat.stream("Tell me a long story about a cat.")
    shown = next(it) + next(it)
    it.close()
    assert chat.messages[-1] == {"role": "assistant", "content": shown}


@pytest.mark.slow
def test_save_and_load_with_state(tmp_path):
    m = smol()
    chat = edgekit.Chat(m, system=SYSTEM, temperature=0, max_tokens=24, stop=["\n\n"])
    chat.send(QUESTION)
    path = chat.save(tmp_path / "chat.json")
    d = json.loads(path.read_text())
    assert d["system"] == SYSTEM and d["sampling"]["stop"] == ["\n\n"] and len(d["messages"]) == 2
    assert (tmp_path / "chat.json.kv").is_file()
    m.reset()
    loaded = edgekit.Chat.load(m, path)
    assert loaded.messages == chat.messages and loaded.sampling == chat.sampling and loaded.state_restored
    follow = loaded.send("And Spain?")
    assert follow.stats.cached_tokens > 30  # the saved KV cache was restored, not re-prefilled
    d = loaded.to_dict() | {"cli_settings": {"theme": "dark"}}
    again = edgekit.Chat.from_dict(m, d)
    assert again.messages == loaded.messages and again.to_dict()["cli_settings"] == {"theme": "dark"}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EdgekitError):
        edgekit.Chat.load(m, tmp_path / "bad.json")
