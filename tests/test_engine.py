"""The multi-sequence engine on real weights (SmolLM2-135M-Instruct) and a tiny random Qwen2.

Greedy outputs of batched and solo runs: llama.cpp computes a batch of several sequences
with other kernels than a batch of one (other matmul shapes, so other rounding), so a
stream may leave the solo path at a near-tie. Where a stream differs from its solo run, the
test requires that the first differing position is such a tie: the solo run's two best
log-probabilities there (log-softmax keeps logit differences) lie within NEAR_TIE
(``loaded_models.assert_same_or_near_tie``). The tests that run long streams, a 4-slot batch from
solo runs, a long prefill or a real SIGINT are marked slow.
"""

from __future__ import annotations

import math
import os
import signal
import threading

import numpy as np
import pytest
from loaded_models import assert_same_or_near_tie, no_eog, tiny_qwen2_gguf

import edgekit
from edgekit import _llama
from edgekit.errors import ContextOverflow, EdgekitError

PROMPTS = ["Once upon a time, in a small village,", "The capital of France is", "def fibonacci(n):",
           "My favourite food is"]


@pytest.fixture(scope="module")
def m4():
    from edgekit.samples.assets import smollm2_gguf

    m = edgekit.load(smollm2_gguf(), n_ctx=1024, seed=1, slots=4)
    yield m
    m.close()


def run(seq) -> list:
    return list(seq)


@pytest.mark.slow
def test_concurrent_greedy_streams_equal_their_solo_runs(m4):
    kw = dict(temperature=0, max_tokens=24, logprobs=2)
    solo = []
    for p in PROMPTS:
        m4.reset()  # each solo run prefills from scratch
        solo.append(run(m4.start(p, **kw)[0]))
    m4.reset()
    seqs = [m4.start(p, **kw)[0] for p in PROMPTS]  # queued together: one batch of 4 from the first steps
    results: list = [None] * len(seqs)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(seqs[i]))) for i in range(len(seqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s.slot for s in seqs) == [0, 1, 2, 3]
    for solo_steps, steps, seq in zip(solo, results, seqs, strict=True):
        assert "".join(s.text for s in steps) == seq.completion.text
        assert_same_or_near_tie(solo_steps, steps)


def test_same_thread_can_stream_twice_with_slots(m4):
    a = m4.stream("Hello", temperature=0, max_tokens=5)
    next(a)
    assert m4.generate("Hi", temperature=0, max_tokens=2).stats.gen_tokens == 2  # a second slot: no error
    a.close()


def test_n_answers_prefill_once_and_repeat_with_the_seed(m4):
    prompt = "Write a short poem about the sea."
    outputs = []
    for _ in range(2):
        m4.reset()  # both rounds compute the same batches
        seqs = m4.start(prompt, n=2, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11, max_tokens=16)
        assert len(seqs) == 2
        for seq in seqs:
            run(seq)
        assert seqs[0].slot != seqs[1].slot
        lead, sib = (s.completion.stats for s in seqs)
        assert lead.new_prompt_tokens == lead.prompt_tokens and lead.cached_tokens == 0
        assert sib.new_prompt_tokens == 0 and sib.cached_tokens == sib.prompt_tokens  # copied, not prefilled
        outputs.append([s.completion.tokens for s in seqs])
    assert outputs[0] == outputs[1]
    with pytest.raises(EdgekitError, match="slots"):
        m4.start(prompt, n=5)


@pytest.mark.slow
def test_cancel_frees_the_cells_and_the_slot(m4):
    L = _llama.lib()
    mem = L.llama_get_memory(m4.llama_context)
    seqs = [m4.start("Tell me everything about whales.", temperature=0, max_tokens=400, logit_bias=no_eog(m4))[0]
            for _ in range(4)]  # every slot busy
    it = iter(seqs[0])
    next(it)
    seqs[0].cancel()
    rest = list(it)
    assert seqs[0].completion.finish_reason == "cancelled"
    assert len(rest) < 399
    assert L.llama_memory_seq_pos_max(mem, seqs[0].slot) == -1
    waiting = m4.start("Hi", temperature=0, max_tokens=3)[0]
    assert run(waiting) and waiting.completion.stats.gen_tokens == 3
    assert waiting.slot == seqs[0].slot  # the freed slot, while the others still run
    for seq in seqs[1:]:
        with seq:  # leaving the block cancels it
            next(iter(seq))
        list(seq)
        assert seq.completion.finish_reason == "cancelled"


@pytest.mark.slow
def test_a_long_prompt_is_prefilled_in_chunks_between_running_tokens(m4):
    m4.reset()
    running = m4.start("Once upon a time", temperature=0, max_tokens=300, logit_bias=no_eog(m4))[0]
    it = iter(running)
    next(it)  # it is generating
    long_prompt = "The river ran past the mill and the old stone bridge. " * 60
    late = m4.start(long_prompt, temperature=0, max_tokens=2)[0]
    next(iter(late))  # its prefill is done and its first token sampled
    running.cancel()
    list(it)
    # The prompt went in chunks (how small depends on this CPU's step times: the controller is tested
    # below with given times), and every step of the late prefill also decoded a token of the running stream.
    alone = math.ceil(m4.count_tokens(long_prompt) / m4.n_batch)  # steps with nothing else running
    assert late.prefill_steps >= alone > 1
    assert late.prefill_steps - 1 <= running.completion.stats.gen_tokens < 300
    list(late)


def test_the_prefill_chunk_keeps_a_step_within_stall_of_a_decode_step():
    from edgekit.runtime.engine import FIRST_CHUNK, MIN_CHUNK, STALL, PrefillChunks

    def timed(prompt_token_s: float) -> PrefillChunks:
        chunks = PrefillChunks()
        chunks.observe(0.040, 2, 0)  # a decode step of two sequences: 40 ms
        chunks.observe(0.040 + 32 * prompt_token_s, 2, 32)  # the same with 32 prompt tokens
        return chunks

    fresh = PrefillChunks()
    assert fresh.cap(512) == FIRST_CHUNK and fresh.cap(5) == 5  # nothing timed yet
    fresh.observe(0.100, 1, 32)  # a mixed step before any plain one prices nothing
    assert fresh.cap(512) == FIRST_CHUNK
    assert timed(0.005).cap(512) == int((STALL - 1) * 0.040 / 0.005)  # 5 ms more per prompt token
    assert timed(0.005).cap(5) == 5  # never more than the batch has room for
    assert timed(1.0).cap(512) == MIN_CHUNK  # slow prompt tokens still make progress
    assert timed(1e-7).cap(512) == 512  # where a prompt token costs nothing: the whole batch
    chunks = timed(0.005)
    chunks.observe(0.030, 2, 32)  # faster than a plain step (noise): a prompt token costs 0, not less
    assert chunks.prompt_token_s == pytest.approx(0.7 * 0.005)


def test_logprobs_match_the_models_log_softmax(m4):
    prompt = "The capital of France is"
    m4.reset()
    steps = run(m4.start(prompt, temperature=0.8, seed=3, max_tokens=6, logprobs=5)[0])
    for step in steps:
        top = step.top_logprobs
        assert len(top) == 5 and [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        assert sum(math.exp(lp) for _, lp in top) <= 1 + 1e-6
        assert step.logprob <= top[0][1] + 1e-9
    # Oracle: the first token's logits from a plain decode of the prompt on the raw context.
    L = _llama.lib()
    m4.reset()
    tokens = m4.tokenize(prompt)
    arr = (L.llama_token * len(tokens))(*tokens)
    assert _llama.decode(m4.llama_context, L.llama_batch_get_one(arr, len(tokens))) == 0
    x = np.ctypeslib.as_array(L.llama_get_logits_ith(m4.llama_context, -1), shape=(m4.n_vocab,)).astype(np.float64)
    m4.reset()
    lp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
    assert steps[0].logprob == pytest.approx(lp[steps[0].token], abs=2e-3)
    assert [t for t, _ in steps[0].top_logprobs[:1]] == [int(np.argmax(x))]


@pytest.mark.slow
def test_context_limits_are_per_sequence():
    from edgekit.samples.assets import smollm2_gguf

    with edgekit.load(smollm2_gguf(), n_ctx=256, slots=2) as m:
        assert m.n_ctx == 256
        with pytest.raises(ContextOverflow) as err:
            m.start("word " * 300)
        assert err.value.available == 256
        c = m.generate("word " * 200, temperature=0, max_tokens=None, logit_bias=no_eog(m))
        assert c.finish_reason == "length" and c.stats.ctx_used == 256


@pytest.mark.slow
def test_ctrl_c_while_consuming_leaves_the_model_usable(m4):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread")
    stream = m4.stream("Tell me about the moon.", temperature=0, max_tokens=400, logit_bias=no_eog(m4))
    with pytest.raises(KeyboardInterrupt):
        for i, _ in enumerate(stream):
            if i == 0:  # readiness: the stream runs; the signal lands while we wait for the next chunks
                threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT)).start()
    stream.close()  # where the interrupt hit the loop body, not the generator
    assert m4.cached_tokens == []  # its cells were freed
    assert m4.generate("Hi", temperature=0, max_tokens=3).stats.gen_tokens == 3


def test_state_loads_into_a_slot_that_later_prompts_reuse(m4, tmp_path):
    prefix = "You are a careful assistant. Answer briefly. Question: "
    m4.generate(prefix + "what is two plus two?", temperature=0, max_tokens=4)
    m4.save_state(tmp_path / "s.kv")
    m4.reset()
    n = m4.load_state(tmp_path / "s.kv")
    c = m4.generate(prefix + "what is two plus two?", temperature=0, max_tokens=4)
    assert c.stats.cached_tokens >= n - 4 > 0
    # llama.cpp would refuse it in a context with another slot count: edgekit says so first, naming the fix
    with edgekit.load(m4.path, n_ctx=1024, prompt_cache="off") as one:
        with pytest.raises(EdgekitError, match="saved from a model with 4 slots, this one has 1") as err:
            one.load_state(tmp_path / "s.kv")
        assert err.value.hint == "Load the model with slots=4."


@pytest.mark.slow
def test_close_joins_the_engine_thread_and_ends_open_streams():
    _, path = tiny_qwen2_gguf()
    m = edgekit.load(path, n_ctx=256, slots=2)
    before = {t for t in threading.enumerate() if t.name == "edgekit-engine"}
    assert m.generate("Hello", temperature=0, max_tokens=3).stats.gen_tokens == 3
    (thread,) = {t for t in threading.enumerate() if t.name == "edgekit-engine"} - before
    assert thread.is_alive()
    seq = m.start("Hello there", temperature=0, max_tokens=200, logit_bias=no_eog(m))[0]
    next(iter(seq))
    m.close()
    assert not thread.is_alive()
    with pytest.raises(EdgekitError, match="closed"):
        list(seq)
    with pytest.raises(EdgekitError, match="closed"):
        m.start("Hello")


@pytest.mark.slow
def test_tiny_qwen2_batched_streams_match_solo():
    _, path = tiny_qwen2_gguf()
    with edgekit.load(path, n_ctx=256, slots=3) as m:
        kw = dict(temperature=0, max_tokens=12, logprobs=2)
        solo = []
        for p in PROMPTS[:3]:
            m.reset()
            solo.append(run(m.start(p, **kw)[0]))
        m.reset()
        seqs = [m.start(p, **kw)[0] for p in PROMPTS[:3]]
        for solo_steps, seq in zip(solo, seqs, strict=True):
            assert_same_or_near_tie(solo_steps, run(seq))
