"""Many models in one process: every decode runs on one compute thread (one OpenMP team), so models give
the same greedy output beside each other as alone, from one thread or several; closing one while another
decodes is safe; and a draft model that can't pay evaluates nothing after its probe."""

from __future__ import annotations

import os
import sys
import threading

import pytest
from loaded_models import smol, tiny_qwen2_gguf

import edgekit
from edgekit import _compute, _llama
from edgekit.runtime import speculative

pytestmark = pytest.mark.slow  # several models and threads per test: about 6 s in all on an idle 2-core machine

PROMPTS = ("The capital of France is", "Counting: 1, 2, 3, 4, 5,", "Once upon a time")


@pytest.fixture(scope="module")
def models():
    """SmolLM2, a second SmolLM2 context (its own engine thread) and the tiny Qwen2, with their outputs alone."""
    from edgekit.samples.assets import smollm2_gguf

    _, qwen = tiny_qwen2_gguf()
    ms = [smol(), edgekit.load(smollm2_gguf(), n_ctx=512, seed=1), edgekit.load(qwen, n_ctx=256, seed=1)]
    alone = [m.generate(p, temperature=0, max_tokens=12).tokens for m, p in zip(ms, PROMPTS, strict=True)]
    yield ms, alone
    for m in ms[1:]:
        m.close()


def _stream_tokens(m, prompt, n=12):
    seq = m.start(m.tokenize(prompt, add_special=True), temperature=0, max_tokens=n)[0]
    return (step.token for step in seq if step.token >= 0), seq


@pytest.mark.parametrize("k", [2, 3])
def test_models_interleaved_from_one_thread_decode_as_alone(models, k):
    ms, alone = models
    streams = [_stream_tokens(m, p) for m, p in zip(ms[:k], PROMPTS, strict=False)]
    got: list[list[int]] = [[] for _ in range(k)]
    live = set(range(k))
    while live:  # one token of each in turn: their decodes interleave on the compute thread
        for i in sorted(live):
            tok = next(streams[i][0], None)
            if tok is None:
                live.discard(i)
            else:
                got[i].append(tok)
    assert got == alone[:k]


def test_models_decoding_at_once_from_threads_decode_as_alone(models):
    ms, alone = models
    start = threading.Barrier(len(ms))
    got: list[list[int] | BaseException | None] = [None] * len(ms)

    def work(i: int) -> None:
        try:
            start.wait()
            got[i] = [ms[i].generate(PROMPTS[i], temperature=0, max_tokens=12).tokens for _ in range(2)][-1]
        except BaseException as exc:  # reported below
            got[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(ms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone


def test_closing_a_model_while_another_decodes(smollm2_gguf, models):
    ms, alone = models
    victim = edgekit.load(smollm2_gguf, n_ctx=256, seed=1)  # room for 200 tokens: it is still going when closed
    victim.generate("Hello", temperature=0, max_tokens=2)  # it has decoded: its context is in use
    tokens, _ = _stream_tokens(ms[0], PROMPTS[0])
    got = [next(tokens)]  # the other model is mid-generation
    v_tokens, _ = _stream_tokens(victim, PROMPTS[1], n=200)
    next(v_tokens)  # and the victim too
    victim.close()
    got += list(tokens)
    assert got == alone[0]
    with pytest.raises(edgekit.EdgekitError):
        list(v_tokens)  # its own stream ends with a clear error
    assert ms[1].generate(PROMPTS[1], temperature=0, max_tokens=12).tokens == alone[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_new_models_start_no_openmp_threads(smollm2_gguf):
    """Decoding on new models starts no OS thread but their engine threads: the compute thread's OpenMP
    team serves them (before, each engine thread started a team of its own, which is what throttled them)."""
    if "libgomp" not in open("/proc/self/maps").read():
        pytest.skip("this llama.cpp build doesn't use GNU OpenMP")
    warm = edgekit.load(smollm2_gguf, n_ctx=256, threads=2, seed=1)
    warm.generate("Hi", temperature=0, max_tokens=2)  # the compute thread's team of 2 exists
    warm.close()
    before = set(os.listdir("/proc/self/task"))
    fresh = [edgekit.load(smollm2_gguf, n_ctx=256, threads=2, seed=1) for _ in range(2)]
    try:
        for m in fresh:
            m.generate("Hi", temperature=0, max_tokens=3)
        python = {str(t.native_id) for t in threading.enumerate()}
        new = set(os.listdir("/proc/self/task")) - before - python
        assert not new, f"threads started by the decodes: {sorted(new)}"
    finally:
        for m in fresh:
            m.close()


def test_every_decode_runs_on_the_compute_thread(models, monkeypatch):
    """The engine's steps run on the compute thread, so its decodes are inline calls there: each is
    recorded with the thread it ran on (the real llama_decode still computes)."""
    ms, _ = models
    L = _llama.lib()
    real, on_compute = L.llama_decode, []

    def recorded(ctx, batch):
        on_compute.append(_compute.is_compute_thread())
        return real(ctx, batch)

    monkeypatch.setattr(L, "llama_decode", recorded)
    c = ms[2].generate(PROMPTS[2], temperature=0, max_tokens=5, speculative="off")
    assert c.tokens and len(on_compute) >= len(c.tokens) and all(on_compute)  # a prefill, a decode per further token


def test_a_draft_that_cannot_pay_evaluates_one_token_and_never_the_prompt(smollm2_gguf):
    """Verification priced so no draft can pay (a batch of n costs n steps, the same on every CPU): the
    draft model times one step on the prompt's first token, is dropped, and never calls llama_decode
    again; the output is plain decoding's."""
    with edgekit.load(smollm2_gguf, n_ctx=512, draft=smollm2_gguf, seed=1) as m:
        curve = speculative.CostCurve({1: 1.0, 16: 16.0}, timed=False)
        m._engine.cost_curve = curve
        draft = m.draft
        assert draft is not None and draft.decode_calls == 0
        messages = [{"role": "user", "content": "Repeat exactly: the quick brown fox jumps over the lazy dog."}]
        first = m.chat(messages, temperature=0, max_tokens=24)
        probe = draft.decode_calls
        assert probe == draft.costs.tokens == 1 and first.stats.drafted_tokens == 0
        follow = messages + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Again."}]
        second = m.chat(follow, temperature=0, max_tokens=24)
        third = m.chat(messages, temperature=0, max_tokens=24)
        assert draft.decode_calls == probe and second.stats.drafted_tokens == third.stats.drafted_tokens == 0
        assert third.tokens == first.tokens == m.chat(messages, temperature=0, max_tokens=24,
                                                       speculative="off").tokens


def test_a_draft_that_pays_still_drafts(smollm2_gguf):
    """The same pair with its guesses priced free and verification flat drafts on every call."""
    with edgekit.load(smollm2_gguf, n_ctx=512, draft=smollm2_gguf, seed=1) as m:
        curve = speculative.CostCurve({1: 1.0, 16: 1.0}, timed=False)
        m._engine.cost_curve = curve
        m.draft.cost = 0.0
        messages = [{"role": "user", "content": "Repeat exactly: the quick brown fox jumps over the lazy dog."}]
        for _ in range(2):
            c = m.chat(messages, temperature=0, max_tokens=24)
            assert c.stats.drafted_tokens > 4 and c.stats.accepted_tokens > 4
