"""Runtime API on real weights: SmolLM2-135M-Instruct through llama.cpp."""

from __future__ import annotations

import threading
import time

import pytest
from loaded_models import QUESTION, SYSTEM, smol

import edgekit
from edgekit.errors import ContextOverflow, EdgekitError

PARIS = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def m():
    return smol()


def test_paris_at_temperature_zero_stops_at_im_end(m):
    start = time.perf_counter()
    c = m.chat(PARIS, temperature=0, max_tokens=64)
    wall = time.perf_counter() - start
    assert "Paris" in c.text
    assert c.finish_reason == "eog"  # stopped by <|im_end|>, which the GGUF marks as end of generation
    assert "<|im_end|>" not in c.text and m.is_eog(m.tokenize("<|im_end|>", add_special=False)[0])
    assert c.stats.gen_tokens == len(c.tokens) > 0
    assert c.stats.prompt_tokens == len(m.chat_tokens(PARIS))
    # The timings add up: they lie inside the call's wall time, and the rate is the tokens sampled after the
    # first (the answer's, then <|im_end|>) over the decode time. Each fails if a field is left at 0 or
    # measured over the wrong span.
    s = c.stats
    assert 0 < s.ttft_s and 0 < s.decode_s and s.ttft_s + s.decode_s <= wall
    assert s.decode_tps == pytest.approx(s.gen_tokens / s.decode_s)
    assert 50 << 20 < s.peak_rss < 8 << 30


@pytest.mark.slow
def test_stream_equals_generate_and_ends_with_stats(m):
    c = m.generate("The three primary colors are", temperature=0, max_tokens=40)
    items = list(m.stream("The three primary colors are", temperature=0, max_tokens=40))
    assert isinstance(items[-1], edgekit.Stats)
    assert all(isinstance(i, str) for i in items[:-1])
    assert "".join(items[:-1]) == c.text
    assert items[-1].finish_reason == c.finish_reason == "length"
    assert items[-1].gen_tokens == 40


@pytest.mark.slow
def test_same_seed_same_output_and_other_seed_differs(m):
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=32)
    a = m.generate("My favourite animal is", seed=7, **kw)
    b = m.generate("My favourite animal is", seed=7, **kw)
    outs = {m.generate("My favourite animal is", seed=s, **kw).text for s in (1, 2, 3)}
    assert a.text == b.text and a.tokens == b.tokens
    assert len(outs | {a.text}) > 1


@pytest.mark.slow
def test_prompt_cache_reuses_prefix(m):
    m.reset()
    first = m.chat(PARIS, temperature=0, max_tokens=16)
    assert first.stats.cached_tokens == 0
    follow = PARIS + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And of Italy?"}]
    second = m.chat(follow, temperature=0, max_tokens=16)
    n_prev = first.stats.prompt_tokens
    assert second.stats.cached_tokens >= n_prev  # the whole previous prompt (and part of the answer) reused
    assert second.stats.new_prompt_tokens == second.stats.prompt_tokens - second.stats.cached_tokens
    assert second.stats.new_prompt_tokens < 20


@pytest.mark.slow
def test_stop_strings_are_never_leaked(m):
    prompt = "Count: one, two, three,"
    m.reset()  # both runs prefill from scratch: the same computation, so the same greedy text on any CPU
    full = m.generate(prompt, temperature=0, max_tokens=30)
    # Three tokens from the middle of this machine's answer: several tokens long, so its prefix must be held
    # back while streaming (taken from the answer, not typed in, since greedy text can differ between CPUs).
    stop = next(s for i in range(8, 27) if (s := m.detokenize(full.tokens[i:i + 3])).strip())
    assert len(m.tokenize(stop, add_special=False)) > 1 and stop in full.text
    m.reset()
    items = list(m.stream(prompt, temperature=0, max_tokens=30, stop=[stop]))
    text = "".join(i for i in items if isinstance(i, str))
    assert items[-1].finish_reason == "stop"
    assert text == full.text[: full.text.index(stop)]
    # no chunk ever showed a partial stop string that was later taken back
    shown = ""
    for chunk in items[:-1]:
        shown += chunk
        assert full.text.startswith(shown) and stop not in shown


def test_grammar_and_json_schema(m):
    c = m.generate("Answer yes or no: is the sky blue?", temperature=0, max_tokens=8,
                   grammar='root ::= "yes" | "no"')
    assert c.text in ("yes", "no")
    import json

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    c = m.chat(PARIS, temperature=0, max_tokens=40, json_schema=schema)
    assert isinstance(json.loads(c.text)["city"], str)
    with pytest.raises(EdgekitError, match="GBNF"):
        m.generate("x", grammar='root ::= "unterminated', max_tokens=2)


def test_tokenize_roundtrip_and_count(m):
    text = "Hello <|im_start|> wörld 日本"
    toks = m.tokenize(text, add_special=False)
    assert m.detokenize(toks) == text
    assert m.count_tokens(text) == len(toks)
    assert len(m.tokenize("<|im_start|>", add_special=False)) == 1  # parsed as the special token
    assert len(m.tokenize("<|im_start|>", add_special=False, parse_special=False)) > 1


def test_prompt_longer_than_context_is_refused_with_numbers(m):
    long = "word " * (m.n_ctx + 10)
    with pytest.raises(ContextOverflow) as err:
        m.generate(long, max_tokens=1)
    assert err.value.available == m.n_ctx and err.value.needed > m.n_ctx


@pytest.mark.slow
def test_max_tokens_none_stops_at_eog(m):
    c = m.chat(PARIS, temperature=0, max_tokens=None)
    assert c.finish_reason == "eog"


def test_two_threads_are_serialized(m):
    # After this call each thread finds the prompt cached and decodes the same batches (a fresh prefill
    # and a cached one may differ in the last bits of the logits on some CPUs, and so at greedy near-ties).
    m.generate("One plus one is", temperature=0, max_tokens=8)
    results, errors = [], []

    def work():
        try:
            results.append(m.generate("One plus one is", temperature=0, max_tokens=8).text)
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]


def test_nested_generation_in_one_thread_is_refused(m):
    it = m.stream("Hello", temperature=0, max_tokens=5)
    next(it)
    with pytest.raises(EdgekitError, match="already generating"):
        m.generate("Hi", max_tokens=1)
    it.close()
    assert m.generate("Hi", temperature=0, max_tokens=1).stats.gen_tokens == 1


@pytest.fixture
def fresh_m(m):
    """The shared model with an empty prompt cache before and after the test (through its public reset)."""
    m.reset()
    yield m
    m.reset()


@pytest.fixture
def ctrl_c_after_decode(monkeypatch):
    """``arm(n)``: llama.cpp's llama_decode finishes its n-th call, then KeyboardInterrupt is raised
    (where Python would raise a Ctrl-C that arrived during the call). monkeypatch puts the real one back."""
    from edgekit import _llama

    L = _llama.lib()
    real = L.llama_decode

    def arm(at_call: int) -> None:
        calls = 0

        def decode(ctx, batch):
            nonlocal calls
            rc = real(ctx, batch)
            calls += 1
            if calls == at_call:
                raise KeyboardInterrupt
            return rc

        monkeypatch.setattr(L, "llama_decode", decode)

    return arm


@pytest.mark.slow
def test_ctrl_c_inside_prefill_leaves_a_cache_the_next_call_can_trust(fresh_m, ctrl_c_after_decode, monkeypatch):
    m = fresh_m
    prompt = "The river ran past the mill and the old stone bridge. " * 100  # three n_batch chunks
    assert m.count_tokens(prompt) > 2 * m.n_batch
    expected = m.generate(prompt, temperature=0, max_tokens=12)
    m.reset()
    ctrl_c_after_decode(2)  # chunk 2 is in the KV cache, unrecorded
    with pytest.raises(KeyboardInterrupt):
        m.generate(prompt, temperature=0, max_tokens=12)
    monkeypatch.undo()
    assert len(m.cached_tokens) == m.n_batch
    again = m.generate(prompt, temperature=0, max_tokens=12)
    assert again.stats.cached_tokens == m.n_batch  # the recorded chunk is reused, the stray one is dropped
    assert again.tokens == expected.tokens


@pytest.mark.slow
def test_save_and_load_state_round_trip(m, tmp_path, smollm2_gguf):
    doc = "Notes: " + "The quick brown fox jumps over the lazy dog. " * 20
    prompt = doc + "\nSummary:"
    m.reset()
    m.generate(doc, max_tokens=1, temperature=0)  # prefill the document
    path = m.save_state(tmp_path / "doc.state")
    live = m.generate(prompt, temperature=0, max_tokens=20)  # continues from the live cache
    m.reset()
    assert m.generate("Hello", max_tokens=1).stats.cached_tokens == 0  # nothing of the document is left
    m.reset()
    n = m.load_state(path)
    assert n > 100
    again = m.generate(prompt, temperature=0, max_tokens=20)
    assert again.stats.cached_tokens == live.stats.cached_tokens >= n - 1  # no prefill of the document
    # the restored cache is the saved one, so the same batches follow: the same text on any CPU
    assert again.text == live.text
    # a state from another KV layout is refused before llama.cpp sees it
    other = edgekit.load(smollm2_gguf, n_ctx=1024, kv_cache="q8_0")  # m has auto's f16 cache
    try:
        with pytest.raises(EdgekitError, match="KV cache"):
            other.load_state(path)
    finally:
        other.close()
    (tmp_path / "junk").write_bytes(b"not a state")
    with pytest.raises(edgekit.CorruptFile):
        m.load_state(tmp_path / "junk")


def test_load_refuses_context_above_training(smollm2_gguf):
    with pytest.raises(ContextOverflow, match="trained context of 8192"):
        edgekit.load(smollm2_gguf, n_ctx=16384)


def _physical_cores_from_sysfs() -> int | None:
    """Distinct (package, core) pairs in Linux's CPU topology: hyperthreads of one core count once."""
    from pathlib import Path

    cores = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*"):
        topology = cpu / "topology"
        if (topology / "core_id").is_file():
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
    return len(cores) or None


def test_load_defaults(smollm2_gguf):
    m = edgekit.load(smollm2_gguf, n_ctx=512, gpu_layers="auto")
    try:
        cores = _physical_cores_from_sysfs()
        if cores is None:  # not Linux: at least within the machine's logical CPUs
            import os

            assert 1 <= m.threads <= os.cpu_count()
        else:
            assert m.threads == cores  # one thread per physical core by default
        assert m.n_ctx == 512 and m.n_ctx_train == 8192
        assert (m.type_k, m.type_v) == ("f16", "f16") and m.flash_attn  # f16 while it fits (docs/memory.md)
        assert m.plan.fits and m.chat_template and "im_start" in m.chat_template
        assert m.metadata["general.architecture"] == "llama"
    finally:
        m.close()
    with pytest.raises(EdgekitError, match="closed"):
        m.generate("x")


def test_quantized_v_cache_turns_flash_attention_on(smollm2_gguf):
    with edgekit.load(smollm2_gguf, n_ctx=512, kv_cache="q4_0", flash_attn="auto") as m:
        assert m.flash_attn and (m.type_k, m.type_v) == ("q4_0", "q4_0")
        assert m.generate("Hello", max_tokens=4, temperature=0).stats.gen_tokens == 4
    with pytest.raises(EdgekitError, match="flash attention"):
        edgekit.load(smollm2_gguf, n_ctx=512, kv_cache="q8_0", flash_attn=False)


@pytest.mark.slow
def test_extra_weight_buffers_are_probed_once_and_the_verdict_holds(smollm2_gguf, monkeypatch):
    """On a build with AMX, a subprocess probe decides whether the AMX weight buffers survive a batched
    decode here; the verdict is cached and a load with it decodes a batch without crashing."""
    from edgekit import _llama
    from edgekit.gguf_check import check

    monkeypatch.delenv("EDGEKIT_EXTRA_BUFFERS", raising=False)
    monkeypatch.setattr(_llama, "_extra_buffers_verdicts", {})
    types = check(smollm2_gguf).tensor_types
    assert {"Q4_1", "Q8_0"} <= types  # SmolLM2's file: both AMX-eligible types
    verdict = _llama.extra_buffers_ok(smollm2_gguf, types)
    amx = _llama.build_has_amx()
    from edgekit.paths import cache_dir

    store = cache_dir() / "extra-buffers.json"
    assert store.exists() == amx  # probed (and cached) only where AMX is in the build
    if not amx:
        assert verdict is True
    assert _llama.extra_buffers_ok(smollm2_gguf, frozenset({"F16", "F32"})) is True  # nothing AMX would take
    monkeypatch.setenv("EDGEKIT_EXTRA_BUFFERS", "0")
    assert _llama.extra_buffers_ok(smollm2_gguf, types) is False
    monkeypatch.setenv("EDGEKIT_EXTRA_BUFFERS", "1" if verdict else "0")
    with edgekit.load(smollm2_gguf, n_ctx=256) as m:
        assert m.extra_buffers is verdict
        assert m.generate("The capital of France is a city called", max_tokens=4, temperature=0).stats.prompt_tokens > 4


def test_logit_bias_and_penalties_change_greedy_choices(m):
    plain = m.generate("The three primary colors are", temperature=0, max_tokens=12)
    first = plain.tokens[0]
    banned = m.generate("The three primary colors are", temperature=0, max_tokens=12, logit_bias={first: -100})
    assert banned.tokens[0] != first
    forced = m.generate("The three primary colors are", temperature=0, max_tokens=3, logit_bias={first: 0, 42: 100})
    assert forced.tokens == [42, 42, 42]
    # A token already in the answer is pushed down per occurrence: greedy repeats disappear.
    looped = m.generate("one one one one one one", temperature=0, max_tokens=16)
    penalized = m.generate("one one one one one one", temperature=0, max_tokens=16, frequency_penalty=2.0,
                           presence_penalty=2.0)
    assert looped.tokens != penalized.tokens
    assert len(set(penalized.tokens)) > len(set(looped.tokens))
    with pytest.raises(EdgekitError, match="outside the vocabulary"):
        m.generate("x", logit_bias={m.n_vocab: 1.0}, max_tokens=1)
    with pytest.raises(EdgekitError, match="presence_penalty"):
        edgekit.Sampling(presence_penalty=3.0)
