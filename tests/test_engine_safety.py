"""The threaded core frees and swaps llama.cpp handles only when no thread uses them.

Real SmolLM2-135M-Instruct weights (target and draft), real llama.cpp, streams on two slots. Each test
ends with every stream ending with text or an EdgekitError, and with the greedy tokens a stream did
produce equal to the same call run alone (up to a near-tie, see ``assert_same_or_near_tie``). The
interleavings are forced by readiness signals (a stream's first Step, a finalizer), never by sleeps.
Run them under ``python -X faulthandler`` so a crash prints where it happened.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import weakref

import pytest
from loaded_models import assert_same_or_near_tie, no_eog

import edgekit
from edgekit import _llama
from edgekit.errors import EdgekitError
from edgekit.runtime import speculative
from edgekit.runtime.draft import DraftModel

pytestmark = pytest.mark.slow  # each test loads a target and a draft and runs hundreds of tokens

PROMPTS = ["Once upon a time, in a small village,", "The capital of France is"]
TOKENS = 32
LONG = 64  # a stream still running when the test closes or drops the model (it acts at the first Step)
WAIT_S = 900  # a bound for a hang (generous: a loaded 2-core machine), never a synchronisation


def load(path, **kw):
    m = edgekit.load(path, n_ctx=512, seed=1, slots=2, draft=path, **kw)  # a model always matches itself
    m.draft.cost = 0.0  # price the draft's guesses as free, so the streams really draft with it...
    curve = speculative.CostCurve({1: 1.0, 16: 1.0}, timed=False)  # ...and verifying a batch as one
    m._engine.cost_curve = curve  # token, whatever this CPU (or its load) measures: the rule always drafts
    return m


def new_draft(m, path) -> DraftModel:
    L = _llama.lib()
    d = DraftModel(path, target_vocab=L.llama_model_get_vocab(m.llama_model),
                   target_size=L.llama_model_size(m.llama_model), target_name=path.name, n_ctx=m.n_ctx,
                   threads=m.threads, n_seq_max=m.slots)
    d.cost = 0.0
    return d


def solo_runs(m, max_tokens: int, **kw) -> list[list]:
    """Each prompt alone and without speculation, with the log-probabilities that tell a near-tie."""
    out = []
    for p in PROMPTS:
        m.reset()
        out.append(list(m.start(p, temperature=0, max_tokens=max_tokens, logprobs=2, speculative="off", **kw)[0]))
    m.reset()
    return out


class Consumer(threading.Thread):
    """Reads one sequence to its end; ``started`` is set at its first Step (or its end)."""

    def __init__(self, seq) -> None:
        super().__init__(daemon=True)
        self.seq = seq
        self.steps: list = []
        self.error: BaseException | None = None
        self.started = threading.Event()

    def run(self) -> None:
        try:
            for step in self.seq:
                self.steps.append(step)
                self.started.set()
        except BaseException as exc:  # checked by ended_well
            self.error = exc
        finally:
            self.started.set()


def reading(seqs) -> list[Consumer]:
    """A started Consumer per sequence, returned once each has its first Step (the streams are mid-answer)."""
    readers = [Consumer(s) for s in seqs]
    for r in readers:
        r.start()
    for r in readers:
        assert r.started.wait(WAIT_S)
    return readers


def ended_well(steps, completion, error, solo_steps, *, complete: bool) -> None:
    """The stream ended with its text (``complete``: it must have) or an EdgekitError, and its tokens are
    the solo run's (a prefix of them when it was cut short)."""
    if complete or error is None:
        assert error is None, f"the stream failed: {error!r}"
        assert completion is not None and "".join(s.text for s in steps) == completion.text
    else:
        assert isinstance(error, EdgekitError), f"not an EdgekitError: {error!r}"
    assert_same_or_near_tie(solo_steps, steps)
    if complete:
        assert len([s for s in steps if s.token >= 0]) == len([s for s in solo_steps if s.token >= 0])


def engine_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "edgekit-engine"}


def test_attach_draft_while_streams_draft_on_two_slots(smollm2_gguf):
    m = load(smollm2_gguf)
    try:
        solo = solo_runs(m, TOKENS)
        olds = []
        for _ in range(3):
            readers = reading(m.start(p, temperature=0, max_tokens=TOKENS)[0] for p in PROMPTS)
            olds.append(m.draft)
            m.attach_draft(new_draft(m, smollm2_gguf))  # both streams are mid-answer, drafting
            for r in readers:
                r.join(WAIT_S)
                assert not r.is_alive()
            for r, solo_steps in zip(readers, solo, strict=True):
                ended_well(r.steps, r.seq.completion, r.error, solo_steps, complete=True)
            assert any(r.seq.completion.stats.drafted_tokens for r in readers)
        assert all(d._ctx is None for d in olds)  # every replaced draft was freed
        c = m.generate(PROMPTS[0], temperature=0, max_tokens=TOKENS)
        # Whether this call drafts is the drafting rule's, by this CPU's measured costs; what must hold is
        # that the last draft is the one attached, alive, and the text is unchanged.
        assert m.draft is not None and m.draft._ctx is not None and m.draft not in olds
        assert c.tokens == [s.token for s in solo[0] if s.token >= 0]
    finally:
        m.close()


def test_attach_draft_from_the_thread_that_streams(smollm2_gguf):
    m = load(smollm2_gguf)
    try:
        solo = solo_runs(m, TOKENS)[0]
        stream = m.start(PROMPTS[0], temperature=0, max_tokens=TOKENS)[0]
        it = iter(stream)
        steps = [next(it)]
        m.attach_draft(new_draft(m, smollm2_gguf))  # waits for a step, not for this stream: no deadlock
        steps.extend(it)
        ended_well(steps, stream.completion, None, solo, complete=True)
    finally:
        m.close()


def test_close_while_streams_run(smollm2_gguf):
    before = engine_threads()  # other tests' models may still run theirs
    m = load(smollm2_gguf)
    solo = solo_runs(m, LONG, logit_bias=no_eog(m))
    readers = reading(m.start(p, temperature=0, max_tokens=LONG, logit_bias=no_eog(m))[0] for p in PROMPTS)
    (thread,) = engine_threads() - before
    draft = m.draft
    m.close()
    assert not thread.is_alive() and draft._ctx is None
    m.close()  # again: nothing to do
    for r, solo_steps in zip(readers, solo, strict=True):
        r.join(WAIT_S)
        assert not r.is_alive()
        ended_well(r.steps, r.seq.completion, r.error, solo_steps, complete=False)
    with pytest.raises(EdgekitError, match="closed"):
        m.start("Hello")
    with pytest.raises(EdgekitError, match="closed"):
        m.tokenize("Hello")


def test_close_reached_from_the_engine_thread_by_a_gc_pass_there(smollm2_gguf):
    """A model dropped without close() while its streams are mid-answer, collected by a GC pass that the
    engine's own allocations trigger: Model.__del__ closes it on the thread running the engine's steps
    (the compute thread; the engine thread between two runs of steps), which must not wait for itself."""
    before = engine_threads()
    m = load(smollm2_gguf)
    solo = solo_runs(m, LONG, logit_bias=no_eog(m))
    seqs = [m.start(p, temperature=0, max_tokens=LONG, logit_bias=no_eog(m))[0] for p in PROMPTS]
    its = [iter(s) for s in seqs]
    firsts = [next(it) for it in its]  # both run; nobody reads them now, the engine goes on
    closed_on: list[str] = []
    collected = threading.Lock()
    collected.acquire()

    def on_collect() -> None:
        closed_on.append(threading.current_thread().name)
        collected.release()

    weakref.finalize(m, on_collect)
    threshold = gc.get_threshold()
    gc.disable()
    try:
        box = [m]
        box.append(box)  # the model's last reference is in a cycle: only a GC pass frees it
        del m, box
        wait = collected.acquire
        gc.set_threshold(1)
        gc.enable()  # from here on this thread allocates nothing: the engine thread's next allocation collects
        got = wait(timeout=WAIT_S)
    finally:
        gc.set_threshold(*threshold)
        gc.enable()
    assert got, "the model was never collected"
    assert closed_on in (["edgekit-compute"], ["edgekit-engine"])
    for seq, it, first, solo_steps in zip(seqs, its, firsts, solo, strict=True):
        steps, error = [first], None
        try:
            steps.extend(it)
        except BaseException as exc:
            error = exc
        ended_well(steps, seq.completion, error, solo_steps, complete=False)
    for t in engine_threads() - before:
        t.join(WAIT_S)
    assert not engine_threads() - before


def test_a_model_dropped_mid_answer_is_collected_on_another_thread(smollm2_gguf):
    before = engine_threads()
    m = load(smollm2_gguf)
    solo = solo_runs(m, LONG, logit_bias=no_eog(m))
    readers = reading(m.start(p, temperature=0, max_tokens=LONG, logit_bias=no_eog(m))[0] for p in PROMPTS)
    ref = weakref.ref(m)
    box = [m]
    box.append(box)
    del m, box
    gc.collect()
    assert ref() is None
    for r, solo_steps in zip(readers, solo, strict=True):
        r.join(WAIT_S)
        assert not r.is_alive()
        ended_well(r.steps, r.seq.completion, r.error, solo_steps, complete=False)
    assert not engine_threads() - before


def test_cached_tokens_is_a_snapshot_at_a_step(smollm2_gguf):
    m = load(smollm2_gguf)
    try:
        prompt = m.tokenize(PROMPTS[0])
        reader = Consumer(m.start(prompt, temperature=0, max_tokens=LONG, logit_bias=no_eog(m))[0])
        reader.start()
        assert reader.started.wait(WAIT_S)
        snapshots = []
        while reader.is_alive() and len(snapshots) < 2000:  # read while the engine appends to it
            snapshots.append(m.cached_tokens)
        reader.join(WAIT_S)
        assert reader.error is None
        # Each snapshot is the prompt and the answer's tokens evaluated so far: never a drafted token
        # that was dropped, never a list of another slot.
        full = prompt + reader.seq.completion.tokens
        assert all(s == full[: len(s)] and len(s) >= len(prompt) for s in snapshots)
        assert any(len(s) > len(prompt) for s in snapshots)
    finally:
        m.close()


def test_a_model_left_open_at_interpreter_exit(smollm2_gguf):
    """Streams mid-answer when the interpreter exits: the engine stops and frees cleanly (no crash, no hang)."""
    script = textwrap.dedent(f"""
        import threading, edgekit
        m = edgekit.load({str(smollm2_gguf)!r}, n_ctx=512, slots=2, draft={str(smollm2_gguf)!r})
        m.draft.cost = 0.0
        box = [m]
        box.append(box)  # collected (if at all) during finalization
        started = threading.Event()
        def read(seq):
            for _ in seq:
                started.set()
        for p in ("Once upon a time", "The capital of France is"):
            seq = m.start(p, temperature=0, max_tokens=400)[0]
            threading.Thread(target=read, args=(seq,), daemon=True).start()
        started.wait()
        print("exiting", flush=True)
    """)
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], capture_output=True, text=True,
                       timeout=WAIT_S)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "exiting" in r.stdout and "Fatal Python error" not in r.stderr
