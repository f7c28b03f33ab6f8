"""Converted models, the model store, and the 32k context on a tiny Qwen2 made by `edgekit convert`."""

from __future__ import annotations

import shutil

import pytest
from loaded_models import tiny_qwen2_gguf

import edgekit
import edgekit.store
from edgekit.errors import SourceError
from edgekit.paths import cache_dir


@pytest.fixture(scope="module")
def tiny():
    return tiny_qwen2_gguf()


@pytest.mark.slow
def test_converted_qwen2_loads_and_generates_at_32k(tiny):
    _ckpt, gguf = tiny
    with edgekit.load(gguf, kv_cache="q8_0") as m:  # n_ctx=None: the trained 32768
        assert m.n_ctx == m.n_ctx_train == 32768
        assert (m.type_k, m.type_v, m.flash_attn) == ("q8_0", "q8_0", True)
        assert m.is_eog(m.tokenize("<|im_end|>", add_special=False)[0])  # set by the converter
        c = m.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0)
        assert c.stats.gen_tokens + (c.finish_reason == "eog") >= 1
        # a 4k-token prompt in the 32k context: cheap on this model, exercises positions past 2k
        ids = m.tokenize("The quick brown fox jumps over the lazy dog. " * 500, add_special=False)[:4096]
        c = m.generate(ids, max_tokens=4, temperature=0)
        assert c.stats.prompt_tokens == 4096 and c.stats.ctx_used >= 4096
        again = m.generate(ids + [ids[0]], max_tokens=2, temperature=0)
        assert again.stats.cached_tokens == 4096 and again.stats.new_prompt_tokens == 1


@pytest.mark.slow
def test_generation_stops_when_the_context_is_full(tiny):
    _ckpt, gguf = tiny
    with edgekit.load(gguf, n_ctx=256, kv_cache="f16") as m:
        ids = m.tokenize("word " * 300, add_special=False)[:200]
        c = m.generate(ids, max_tokens=None, temperature=0, min_p=0.0, repeat_penalty=1.0,
                       grammar='root ::= "a"+')  # never EOG, so only the context can stop it
        assert c.finish_reason == "length" and c.stats.ctx_used == 256


@pytest.mark.slow
def test_hf_dir_is_converted_once_into_the_cache(tiny, monkeypatch):
    ckpt, _gguf = tiny
    import edgekit.convert as conv

    calls = []
    real = conv.convert

    def counting(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(conv, "convert", counting)
    first = edgekit.store.resolve(ckpt, quant="q8_0")
    second = edgekit.store.resolve(ckpt, quant="q8_0")
    assert first == second and len(calls) == 1
    assert cache_dir() / "models" in first.parents
    with edgekit.load(ckpt, quant="q8_0", n_ctx=512) as m:
        assert m.path == first
        c = m.generate("hi", max_tokens=2, temperature=0)
        assert c.stats.gen_tokens == 2 or c.finish_reason == "eog"  # random weights may end at once


def test_names_in_the_local_store(tiny):
    _ckpt, gguf = tiny
    from edgekit.store import list_models, models_dir

    shutil.copyfile(gguf, models_dir() / "tiny.gguf")
    assert edgekit.store.resolve("tiny") == models_dir() / "tiny.gguf"
    assert [p.stem for p in list_models()] == ["tiny"]
    with pytest.raises(SourceError, match="stored models: tiny"):
        edgekit.store.resolve("nonexistent")
    with pytest.raises(SourceError, match="does not exist"):
        edgekit.store.resolve("./missing.gguf")
