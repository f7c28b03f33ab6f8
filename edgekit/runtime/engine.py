"""The engine: one llama.cpp context decoding many sequences at once, on a background thread.

A context has ``slots`` sequences (llama.cpp ``n_seq_max``, each its own KV stream). Every
step builds ONE ``llama_batch``: the next token of every generating sequence (plus its
prompt-lookup draft, with logits at each position), and a chunk of prompt tokens from one
sequence that is still prefilling: a chunk sized so the step takes at most :data:`STALL` times
as long as a step without it while others generate (so a long new prompt doesn't freeze running
streams), the whole ``n_batch`` when nothing else runs. Then each sequence is sampled at its own
output rows by its own sampler chain, checked for EOG, stop strings, ``max_tokens`` and its
context, and its :class:`Step` events go to its own queue. :class:`Sequence` is the consumer's
end of that queue.

Why a thread: a served client that reads slowly must not stall the others, and
``Model.generate`` from several threads must batch instead of queueing on a lock. The
thread holds no reference to the :class:`~edgekit.Model`, only to the engine, so an
unclosed model is still collected (and its ``__del__`` stops the thread). The steps themselves
run on the process's compute thread (:mod:`edgekit._compute`), many in a row (:meth:`Engine._steps`),
so a token costs no handoff between threads (docs/architecture.md, "One OpenMP team"); the engine
thread admits requests and grants exclusive holds between two runs of steps.

Who frees what, and when: the engine owns the llama.cpp handles its thread uses (its batch,
the draft model, and through ``release`` the model's context and weights). :meth:`Engine.close`
only asks the thread to stop; the handles are freed once the thread has exited and no caller
is inside :meth:`Engine.use` (tokenizing, building a sampler chain). So ``close`` may be reached
from anywhere, any number of times: from the engine thread itself (``Model.__del__`` in a GC
pass that thread's allocations started), from another thread while streams run, or while the
interpreter finalizes (then a daemon thread can't run again, and nothing is freed: the process
is ending). ``_stepping`` is held for a whole step (and by an :meth:`Engine.exclusive` holder),
``_cv`` while sequences are admitted; holding both stops the engine between two steps: that is
how :meth:`Engine.set_draft` swaps the draft and :meth:`Engine.cached_tokens` reads a slot.

Speculation per sequence is exact, as in plain decoding: a drafted token is kept only while
the sequence's own sample at the previous position equals it (see :mod:`edgekit.runtime.speculative`).

llama.cpp detail that shapes the batch: with one KV stream per sequence (``kv_unified``
off) llama.cpp splits a batch into ubatches of *consecutive* sequence ids with equal token
counts, so tokens go in slot order; a prefill chunk or a draft rides in the first ubatch
with one token and the rest of it runs in a pass of its own. One stream per sequence keeps
each sequence's attention over its own cells only, so a sequence decodes the same tokens
alone or beside others (a unified cache changed greedy output: its attention kernels depend
on how many cells all sequences hold).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from edgekit import _compute, _llama
from edgekit.errors import EdgekitError
from edgekit.runtime import speculative
from edgekit.runtime.sampling import Sampling
from edgekit.runtime.speculative import MAX_DRAFT
from edgekit.runtime.textstream import TextStream
from edgekit.stats import Completion, FinishReason, Stats, peak_rss, running_average

# While other sequences generate, a prefill chunk may make a step at most STALL times as long
# as a step without one. The chunk size follows from measured times (PrefillChunks): on a
# CPU, where batch cost grows with its tokens, that is a few dozen tokens; where a batch costs
# little more than one token (a GPU), it grows to the whole batch.
STALL = 2.5
FIRST_CHUNK = 32  # the chunk before any step has been timed
MIN_CHUNK = 8  # a prompt makes progress however slow the prefill tokens are
_EMA = 0.3  # weight of the newest step in the running step-time averages
# The token of the last Step of a sequence that only carries held-back text (see Step).
TAIL = -1


class Step(NamedTuple):
    """One generated token of a :class:`Sequence`.

    ``text`` is the newly safe-to-show text and may be "": a UTF-8 character split across
    tokens, or a possible start of a stop string, is held back until it is decided. A held
    back text left at the end (an unfinished stop-string prefix, a dangling byte) comes in a
    last Step with ``token == TAIL`` (-1) and no piece. So the ``text`` of all steps joined is
    ``completion.text``. ``logprob``/``top_logprobs`` are set when ``Sampling(logprobs=k)``
    asks: the chosen token's log-probability under the model (log-softmax of the raw logits)
    and the ``k`` most likely tokens, best first.
    """

    token: int
    piece: bytes
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


_END = object()  # the last item of a Sequence's queue
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def closed_error() -> EdgekitError:
    """What every call on a closed model raises."""
    return EdgekitError("the model is closed", "Load it again with edgekit.load().")


@atexit.register
def _stop_all() -> None:
    """Stop engine threads at exit, while they can still run (a model nobody closed)."""
    for engine in list(_ENGINES):
        engine.close()


@dataclass
class _Slot:
    id: int
    tokens: list[int]  # exactly the tokens whose KV is in this slot's stream, in order
    last_used: int = 0
    seq: Sequence | None = None


class Sequence:
    """One generation running in the engine: iterate it for :class:`Step` events.

    When the iteration ends, :attr:`completion` is set (text, tokens, finish reason, Stats).
    Iterate from any thread (one consumer at a time). :meth:`cancel` stops it at the next
    step and frees its KV cells (:meth:`close` also waits for that); leaving a ``with``
    block, closing or abandoning the iteration, or an exception in the consumer (Ctrl-C)
    cancels it too. A cancelled sequence ends with ``finish_reason == "cancelled"``.
    """

    def __init__(self, engine: Engine, tokens: list[int], s: Sampling, sampler: Any, spec_mode: str,
                 index: int) -> None:
        self._engine = engine
        self.prompt_tokens = tokens
        self.sampling = s
        self.index = index  # among the n sequences of one start() call
        self.completion: Completion | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._quiet = False  # the consumer waits for the end only (wait): no Step events
        self._cancel = False
        self._ended = False  # the consumer saw the end
        self._over = False  # the engine is done with it (completion or error queued)
        # Engine-thread state.
        self._sampler = sampler
        self._spec_mode = spec_mode  # the drafting starts once the sequence has its slot (new_spec)
        self._spec: Any = None
        self._group: list[Sequence] = [self]
        self._slot: _Slot | None = None
        self._prefilling = False  # the group's leader, until its prompt is in the KV cache
        self._waiting = False  # a sibling, until the leader's prompt is copied to its slot
        self._next: int | None = None  # the sampled token to evaluate next
        self._draft: list[int] = []  # drafted tokens evaluated after _next, not yet verified
        self._stream = TextStream(s.stop)
        self._out: list[int] = []
        self._max = s.max_tokens
        self._t0 = time.perf_counter()
        self._t_admit = self._t_prefill = self._t_first = 0.0
        self._n_cached = 0
        self._n_new = 0
        self._n_disk = 0  # prompt tokens restored from the disk prompt cache
        self._restore_s = 0.0
        self._disk_checked = False
        self._n_sampled = 0
        self.prefill_steps = 0  # steps its prompt's prefill took (chunks)

    @property
    def slot(self) -> int | None:
        """The slot (llama.cpp sequence id) it runs in; None while it waits for one."""
        return self._slot.id if self._slot is not None else None

    @property
    def done(self) -> bool:
        """The engine has finished with this sequence (its completion is set or about to be read)."""
        return self.completion is not None or self._ended

    def cancel(self) -> None:
        """Stop generating (at the next step) and free the sequence's KV cells. Safe to call twice."""
        if not self._cancel and not self._ended:
            self._cancel = True
            self._engine._wake()

    def close(self) -> None:
        """Cancel, and return once the engine has let go of the sequence (its cells are free)."""
        self.cancel()
        try:
            for _ in self:
                pass
        except EdgekitError:  # it failed or the model closed: either way it is over
            pass

    def wait(self) -> Completion:
        """Wait for the end without taking the steps: from now on the engine queues no :class:`Step` for
        this sequence (their text is in ``completion.text``), so the waiting thread wakes once, not once per
        token, and leaves the cores to the decoding. Raises what iterating would (an error, a closed model);
        an exception in the waiting thread (Ctrl-C) cancels the sequence."""
        self._quiet = True
        for _ in self:
            pass
        assert self.completion is not None
        return self.completion

    def __iter__(self):
        try:
            while not self._ended:
                item = self._events.get()
                if item is _END:
                    self._ended = True
                    return
                if isinstance(item, BaseException):
                    self._ended = True
                    raise item
                yield item
        finally:
            if not self._ended:  # the consumer stopped early (closed, broke out, or raised)
                self.cancel()

    def __enter__(self) -> Sequence:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._ended:
            self.cancel()

    # -- engine side -------------------------------------------------------------------------------

    def _put(self, item: Any) -> None:
        self._events.put(item)


class _Exclusive:
    """A queued request for the whole context (save/load state, reset): granted when no sequence runs."""

    def __init__(self) -> None:
        self.granted = threading.Event()
        self.released = threading.Event()


class Engine:
    """Owns a context's slots and decodes them on one background thread. One per :class:`~edgekit.Model`.

    ``release`` frees the context and the weights; the engine calls it once, when no thread uses them
    any more (see the module docstring).
    """

    def __init__(self, ctx: Any, vocab: Any, *, slots: int, n_ctx: int, n_batch: int, n_vocab: int,
                 pieces: _llama.Pieces, rewindable: bool, release: Callable[[], None]) -> None:
        L = _llama.lib()
        self._L = L
        self._ctx = ctx
        self._mem = L.llama_get_memory(ctx)
        # the sliding window (_llama.window_covers); recurrent and hybrid memory are cut back by other rules
        self.n_swa = L.llama_model_n_swa(L.llama_get_model(ctx)) if rewindable else 0
        self._vocab = vocab
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.n_vocab = n_vocab
        self.chunks = PrefillChunks()  # how much prompt a step of running sequences may take
        self.cost_curve = speculative.CostCurve()  # what one sequence's batch of n tokens costs here
        self.load_s = 0.0  # the model's, copied into every Stats
        self.rewindable = rewindable
        self.draft: Any = None  # an edgekit.runtime.draft.DraftModel with a sequence per slot (Model.attach_draft)
        self.prompt_cache: Any = None  # an edgekit.runtime.prompt_cache.PromptCache (Model.attach_prompt_cache)
        self._pieces = pieces
        self.slots = [_Slot(i, []) for i in range(slots)]
        self.recent: _Slot = self.slots[0]  # the slot of the most recent sequence
        self._clock = itertools.count(1)
        self._cv = threading.Condition()
        self._queue: collections.deque[list[Sequence] | _Exclusive] = collections.deque()
        self._active: list[Sequence] = []  # admitted, in admission order (engine thread only)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._exited = False  # the thread has left its loop and touches no handle any more
        self._users = 0  # callers inside use()
        self._freed = False
        self._free_handles = release
        self._stepping = threading.RLock()  # held for a whole step, or an exclusive hold (module docstring)
        self._batch = _llama.Batch(n_batch)
        _ENGINES.add(self)

    # -- API (any thread) ----------------------------------------------------------------------------

    @property
    def ctx(self) -> Any:
        """The ``llama_context*``: for :meth:`exclusive` holders (valid while they hold the engine)."""
        return self._ctx

    @property
    def whole_states(self) -> bool:
        """Whether a slot's saved state (the prompt cache's snapshots, ``Model.save_state``) is the whole
        context's (llama.cpp's sequence -1) rather than the slot's sequence.

        llama.cpp saves one sequence of sliding-window memory without the cells its window masks, so a
        state restored from it can't be cut back to a shorter prefix (:func:`_llama.window_covers`). In a
        one-slot context every cell is the slot's: the whole state restores into the slot with every
        position held, and any prefix of it is usable. Several slots keep the sequence's own state.
        """
        return self.n_swa > 0 and len(self.slots) == 1

    def state_seq(self, slot: _Slot) -> int:
        """The sequence id to save ``slot``'s state under (:attr:`whole_states`)."""
        return -1 if self.whole_states else slot.id

    def submit(self, group: list[Sequence]) -> None:
        """Queue the sequences of one request (FIFO); they start when len(group) slots are free."""
        for seq in group:
            seq._group = group
        with self._cv:
            if self._closing:
                raise closed_error()
            self._queue.append(group)
            self._ensure_thread()
            self._cv.notify()

    def _ensure_thread(self) -> None:
        """Start the thread on first use (called with the lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgekit-engine", daemon=True)
            self._thread.start()

    def exclusive(self) -> _ExclusiveHold:
        """``with engine.exclusive():`` the caller alone uses the context (waits for running sequences)."""
        return _ExclusiveHold(self)

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        """``with engine.use():`` the caller uses the model's handles (the vocabulary, to tokenize or build
        a sampler chain) outside the engine thread: they are not freed before it leaves the block.
        Raises EdgekitError once the model is closed."""
        with self._cv:
            if self._closing:
                raise closed_error()
            self._users += 1
        try:
            yield
        finally:
            with self._cv:
                self._users -= 1
            self._free_when_unused()

    def set_draft(self, draft: Any) -> Any:
        """Draft with ``draft`` from the next step on and return the draft it replaces, which no step and
        no sequence uses any more (the caller closes it). Waits for the step in progress, not for the
        running sequences: those drafting with the old draft go on with the new one."""
        with self._stepping, self._cv:
            if self._closing:
                raise closed_error()
            old, self.draft = self.draft, draft
            if old is None or old is draft:
                return None
            for seq in self._active:
                drafter = seq._spec.drafter if seq._spec is not None else None
                if drafter is not None and getattr(drafter, "model", None) is old:
                    seq._spec.drafter = draft.drafter(drafter.text, seq_id=drafter.seq_id)
            return old

    def cached_tokens(self) -> list[int]:
        """The tokens whose KV is in the most recent sequence's slot, read between two steps."""
        with self._stepping, self._cv:
            if self._closing:
                raise closed_error()
            return list(self.recent.tokens)

    def close(self) -> None:
        """Stop the thread: running and queued sequences end with an error. Returns once the thread has
        exited, unless called on that thread itself or while the interpreter finalizes; the handles are
        freed when the thread is done with them (see the module docstring). Safe to call again."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            thread = self._thread
        # While the interpreter finalizes, a daemon thread can't run again, so joining it would hang; on the
        # compute thread (a GC pass during a step), the engine thread may be waiting for it.
        if (thread is not None and thread is not threading.current_thread() and not _compute.is_compute_thread()
                and not sys.is_finalizing()):
            thread.join()
        self._free_when_unused()

    def _free_when_unused(self) -> None:
        """Free the handles once: closed, the thread gone (or never started), no caller inside use()."""
        with self._cv:
            if self._freed or not self._closing or self._users or (self._thread is not None and not self._exited):
                return
            self._freed = True
            draft, self.draft = self.draft, None
        if draft is not None:
            draft.close()
        self._batch.free()
        self._free_handles()

    def touch(self, slot: _Slot) -> None:
        """Make ``slot`` the most recently used (and :attr:`recent`); for exclusive holders."""
        slot.last_used = next(self._clock)
        self.recent = slot

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        closed = EdgekitError("the model was closed during generation")
        try:
            while True:
                exclusive = None
                with self._cv:
                    while not (self._closing or self._active or self._queue):
                        self._cv.wait()
                    if self._closing:
                        break
                    exclusive = self._admit()
                if exclusive is not None:
                    exclusive.granted.set()
                    exclusive.released.wait()
                    continue
                try:
                    _compute.run(self._steps)
                except BaseException as exc:  # a bug must not kill the thread: fail what ran, keep serving
                    with self._stepping:
                        for seq in list(self._active):
                            slot = seq._slot
                            if slot is not None:
                                self._L.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
                                slot.tokens = []
                            self._fail(seq, exc)
        finally:
            with self._cv:
                pending = [s for g in self._queue if isinstance(g, list) for s in g]
                for item in self._queue:
                    if isinstance(item, _Exclusive):
                        item.granted.set()  # its holder sees the model closing
                self._queue.clear()
            for seq in self._active + pending:
                self._fail(seq, closed)
            self._active = []
            with self._cv:
                self._exited = True
            self._free_when_unused()

    def _steps(self) -> None:
        """Steps one after another on the compute thread (see the module docstring), until no sequence
        runs, a request or an exclusive hold waits to be admitted, the engine closes, or another caller
        waits for the compute thread (another model's decode gets its turn between two steps)."""
        while True:
            with self._stepping:
                self._reap()
                if not self._active:
                    return
                self._step()
            if self._queue or self._closing or _compute.pending():
                return

    def _admit(self) -> _Exclusive | None:
        """Start queued requests while slots are free (FIFO). Called with the lock held."""
        while self._queue:
            head = self._queue[0]
            if isinstance(head, _Exclusive):
                if self._active:
                    return None
                self._queue.popleft()
                return head
            live = [s for s in head if not s._cancel]
            if not live:
                self._queue.popleft()
                for seq in head:
                    self._end(seq, "cancelled")
                continue
            free = [slot for slot in self.slots if slot.seq is None]
            if len(free) < len(head):
                return None
            self._queue.popleft()
            self._start(head, free)
        return None

    def _start(self, group: list[Sequence], free: list[_Slot]) -> None:
        L, now = self._L, time.perf_counter()
        leader, tokens = group[0], group[0].prompt_tokens
        # The free slot sharing the longest prefix (ties and no match: least recently used).
        shared = {slot.id: _llama.shared_prefix(slot.tokens, tokens) for slot in free}
        best = max(free, key=lambda slot: (shared[slot.id], -slot.last_used))
        n = _llama.keep_prefix(self._mem, best.id, best.tokens, shared[best.id], self.n_swa)
        others = sorted((s for s in free if s is not best), key=lambda slot: slot.last_used)
        for seq, slot in zip(group, [best, *others], strict=False):
            slot.seq, seq._slot = seq, slot
            seq._spec = new_spec(seq._spec_mode, tokens, self, slot.id)
            slot.last_used = next(self._clock)
            seq._t_admit = now
            self._active.append(seq)
            if seq is not leader:
                seq._waiting = True
                L.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
                slot.tokens = []
        leader._prefilling = True
        leader._n_cached = n
        leader._n_new = len(tokens) - n
        self.recent = best

    def _reap(self) -> None:
        """End cancelled sequences and free their cells (a group's prefill goes on for the others)."""
        for seq in [s for s in self._active if s._cancel]:
            if seq._prefilling and not all(m._cancel for m in seq._group):
                continue
            slot = seq._slot
            assert slot is not None
            cache = self.prompt_cache
            if cache is not None and not (seq._prefilling or seq._waiting):
                # its prompt was prefilled (a client that left after the first tokens): keep it all the same
                cache.offer(self._ctx, self.state_seq(slot), slot.tokens, len(seq.prompt_tokens), self.n_ctx)
            self._L.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
            slot.tokens = []
            self._end(seq, "cancelled")

    # -- one step ------------------------------------------------------------------------------------

    def _step(self) -> None:
        b, n_batch = self._batch, self.n_batch
        generating = [s for s in self._active if s._next is not None]
        prefill = next((s for s in self._active if s._prefilling), None)
        room = n_batch - len(generating)
        chunk: list[int] = []
        if prefill is not None:
            slot = prefill._slot
            assert slot is not None
            cache = self.prompt_cache  # read once: Model.attach_prompt_cache may swap it from another thread
            if cache is not None and not prefill._disk_checked:
                self._restore(cache, prefill, slot)
            cap = room if not generating else self.chunks.cap(room)
            done = len(slot.tokens)
            chunk = prefill.prompt_tokens[done : done + cap]
            room -= len(chunk)
        for seq in generating:  # drafts take what is left of the batch
            seq._draft = []
            if seq._spec is not None and room > 0:
                slot = seq._slot
                assert slot is not None
                left = min(self.n_ctx - len(slot.tokens) - 1, self._left(seq) - 1, MAX_DRAFT, room)
                seq._draft = seq._spec.propose(left)
                room -= len(seq._draft)
        # Fill in slot order (see the module docstring).
        rows: list[tuple[Sequence, int]] = []  # (sequence, its first output row)
        b.clear()
        for slot in self.slots:
            seq = slot.seq
            if seq is None:
                continue
            if seq is prefill:
                last = len(slot.tokens) + len(chunk) == len(seq.prompt_tokens)
                row = b.add(chunk, len(slot.tokens), slot.id, logits_from=len(chunk) - 1 if last else len(chunk))
                if last:
                    rows.append((seq, row + len(chunk) - 1))
            elif seq._next is not None:
                rows.append((seq, b.add([seq._next, *seq._draft], len(slot.tokens), slot.id)))
        n = len(b)
        if n == 0:  # only sequences waiting for a prefill that is gone: never spin on them
            for seq in list(self._active):
                self._fail(seq, EdgekitError("the sequence lost the prompt it was waiting for"))
            return
        batch_seqs = generating + ([prefill] if prefill is not None else [])
        try:
            rc = _llama.decode(self._ctx, b.raw)  # on the process's compute thread (edgekit._compute)
            if rc != 0:
                raise EdgekitError(f"llama.cpp failed to evaluate a batch (llama_decode returned {rc})",
                                   "The context may be full; use a larger n_ctx.")
            self._time_step(_llama.decode_seconds(), generating, len(chunk), n)
        except BaseException as exc:  # a failed decode (or a Ctrl-C raised around it) fails this batch only
            for seq in batch_seqs:
                slot = seq._slot
                assert slot is not None
                self._L.llama_memory_seq_rm(self._mem, slot.id, len(slot.tokens), -1)  # unrecorded cells
                seq._draft = []
                for member in (seq._group if seq is prefill else [seq]):
                    self._fail(member, exc)
            return
        for seq in generating:
            slot = seq._slot
            assert slot is not None and seq._next is not None
            slot.tokens.append(seq._next)
            seq._next = None
        if prefill is not None:
            slot = prefill._slot
            assert slot is not None
            slot.tokens.extend(chunk)
            prefill.prefill_steps += 1
            if len(slot.tokens) == len(prefill.prompt_tokens):
                self._prefilled(prefill)
        for seq, row in rows:
            for member in (seq._group if seq is prefill else [seq]):
                if member._cancel or member._over or member._slot is None:
                    continue  # a cancelled leader still prefilled for its siblings: reaped next step
                try:
                    self._sample(member, row)
                except BaseException as exc:
                    self._fail(member, exc)

    def _restore(self, cache: Any, seq: Sequence, slot: _Slot) -> None:
        """Before a prompt's first chunk: take what the disk prompt cache holds beyond the slot's live KV."""
        seq._disk_checked = True
        t0, live = time.perf_counter(), len(slot.tokens)
        n = cache.restore(self._ctx, slot.id, seq.prompt_tokens, live, self.n_ctx)
        if n != live:  # the slot's KV was replaced (by a snapshot, or emptied when llama.cpp refused one)
            slot.tokens = list(seq.prompt_tokens[:n])
            seq._n_cached, seq._n_disk, seq._n_new = 0, n, len(seq.prompt_tokens) - n
            seq._restore_s = time.perf_counter() - t0

    def _time_step(self, seconds: float, generating: list[Sequence], chunk: int, n: int) -> None:
        """Fold one decode of ``n`` tokens into the averages the chunk size and the drafting rule use."""
        self.chunks.observe(seconds, len(generating), chunk)
        if len(generating) == 1 and not chunk:  # one sequence's tokens, one ubatch: what the drafting rule prices
            spec = generating[0]._spec
            # a draft model learns the curve from its few probes, so their timings replace the prior's price
            self.cost_curve.observe(n, seconds, first_replaces=spec is not None and not spec.drafter.free)

    def _prefilled(self, leader: Sequence) -> None:
        """The leader's prompt is in its slot: copy it to the waiting siblings' slots."""
        L, now = self._L, time.perf_counter()
        leader._prefilling = False
        src = leader._slot
        assert src is not None
        for seq in leader._group:
            seq._t_prefill = now
            if seq is leader or not seq._waiting:
                continue
            seq._waiting = False
            dst = seq._slot
            assert dst is not None
            L.llama_memory_seq_cp(self._mem, src.id, dst.id, -1, -1)  # across streams: the whole buffer
            dst.tokens = list(src.tokens)
            seq._n_cached = len(src.tokens)

    def _left(self, seq: Sequence) -> int:
        return (seq._max if seq._max is not None else self.n_ctx) - len(seq._out)

    def _sample(self, seq: Sequence, row: int) -> None:
        """Sample ``seq`` at output ``row`` (and on through its accepted draft); set what to evaluate next."""
        L, slot, spec = self._L, seq._slot, seq._spec
        assert slot is not None
        draft = seq._draft
        while True:
            if self._left(seq) <= 0:
                self._finish(seq, "length")
                return
            tok = L.llama_sampler_sample(seq._sampler, self._ctx, row)
            seq._n_sampled += 1
            if not seq._t_first:
                seq._t_first = time.perf_counter()
            if draft and spec is not None:
                spec.verdict(tok == draft[0])
            k = seq.sampling.logprobs
            lp, top = self._logprobs(row, tok, k) if k is not None else (None, None)
            if L.llama_vocab_is_eog(self._vocab, tok):
                self._finish(seq, "eog")
                return
            seq._out.append(tok)
            piece = self._pieces(tok)
            text = seq._stream.push(piece)
            if not seq._quiet:
                seq._put(Step(tok, piece, text, lp, top))
            if seq._stream.stopped:
                self._finish(seq, "stop")
                return
            if len(slot.tokens) >= self.n_ctx or self._left(seq) <= 0:
                self._finish(seq, "length")  # the sampled token is kept but not evaluated
                return
            if spec is not None:
                spec.append(tok)
            if draft and tok == draft[0]:  # drafted, so already evaluated
                draft.pop(0)
                slot.tokens.append(tok)
                row += 1
                continue
            if draft:
                self._drop_draft(seq)
            seq._next = tok
            return

    def _logprobs(self, row: int, tok: int, k: int) -> tuple[float, list[tuple[int, float]]]:
        import numpy as np

        ptr = self._L.llama_get_logits_ith(self._ctx, row)
        x = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
        m, rest = _llama.log_normalizer(x)
        lp = x - (m + rest)
        top: list[tuple[int, float]] = []
        if k > 0:
            best = np.argpartition(-lp, min(k, lp.size - 1))[:k]
            best = best[np.argsort(-lp[best], kind="stable")]
            top = [(int(i), float(lp[i])) for i in best]
        return float(lp[tok]), top

    def _drop_draft(self, seq: Sequence) -> None:
        slot = seq._slot
        assert slot is not None
        seq._draft = []
        if not self._L.llama_memory_seq_rm(self._mem, slot.id, len(slot.tokens), -1):
            raise EdgekitError("llama.cpp could not remove a rejected draft from the KV cache")

    # -- endings -----------------------------------------------------------------------------------------

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        if seq._draft:
            self._drop_draft(seq)
        tail = seq._stream.finish()
        if tail and not seq._quiet:
            seq._put(Step(TAIL, b"", tail))
        self._end(seq, reason)

    def _end(self, seq: Sequence, reason: FinishReason) -> None:
        """Set the completion, free the slot and the sampler, and close the sequence's queue."""
        t_end = time.perf_counter()
        slot = seq._slot
        t_first = seq._t_first or t_end
        t_start = seq._t_admit or seq._t0
        decode_s = t_end - t_first
        spec = seq._spec
        stats = Stats(
            load_s=self.load_s, prompt_tokens=len(seq.prompt_tokens), cached_tokens=seq._n_cached,
            new_prompt_tokens=seq._n_new, ttft_s=t_first - seq._t0,
            prefill_tps=seq._n_new / (seq._t_prefill - t_start) if seq._t_prefill > t_start else 0.0,
            gen_tokens=len(seq._out), decode_s=decode_s,
            decode_tps=(seq._n_sampled - 1) / decode_s if seq._n_sampled > 1 and decode_s > 0 else 0.0,
            peak_rss=peak_rss(), n_ctx=self.n_ctx, ctx_used=len(slot.tokens) if slot else 0, finish_reason=reason,
            drafted_tokens=spec.drafted if spec else 0, accepted_tokens=spec.accepted if spec else 0,
            disk_tokens=seq._n_disk, disk_restore_s=seq._restore_s,
        )
        seq.completion = Completion(seq._stream.text, seq._out, reason, stats)
        seq._over = True
        self._release(seq)
        # The answer's text is out: a long prompt's KV (with its answer) is copied for the disk prompt cache
        # before the completion is handed over, so a caller that returns and exits has it queued (written
        # by the cache's own thread, which the interpreter waits for).
        cache = self.prompt_cache
        if cache is not None and slot is not None and reason != "cancelled":
            cache.offer(self._ctx, self.state_seq(slot), slot.tokens, len(seq.prompt_tokens), self.n_ctx)
        seq._put(_END)

    def _fail(self, seq: Sequence, exc: BaseException) -> None:
        if not seq._over:
            seq._over = True
            self._release(seq)
            seq._put(exc)

    def _release(self, seq: Sequence) -> None:
        slot = seq._slot
        if slot is not None and slot.seq is seq:
            slot.seq = None
            slot.last_used = next(self._clock)
        if seq in self._active:
            self._active.remove(seq)
        seq._prefilling = seq._waiting = False
        seq._next = None
        self._free_sampler(seq)

    def _free_sampler(self, seq: Sequence) -> None:
        if seq._sampler is not None:
            self._L.llama_sampler_free(seq._sampler)
            seq._sampler = None


class PrefillChunks:
    """How many prompt tokens a prefill may add to a step of generating sequences: a step may take at
    most :data:`STALL` times as long as a step without them, by the running averages of the steps timed
    so far (:meth:`observe`)."""

    def __init__(self) -> None:
        self.decode_s: float | None = None  # average step time without a prefill chunk
        self.prompt_token_s: float | None = None  # average added time of one chunk token in a mixed step

    def observe(self, seconds: float, generating: int, chunk: int) -> None:
        """A step of ``generating`` sequences' tokens and ``chunk`` prompt tokens took ``seconds``."""
        if generating and not chunk:
            self.decode_s = running_average(self.decode_s, seconds, _EMA)
        elif generating and self.decode_s is not None:
            added = max(seconds - self.decode_s, 0.0) / chunk
            self.prompt_token_s = running_average(self.prompt_token_s, added, _EMA)

    def cap(self, room: int) -> int:
        """The chunk for a step with ``room`` tokens left in its batch."""
        if self.decode_s is None or self.prompt_token_s is None:
            return min(room, FIRST_CHUNK)
        fits = int((STALL - 1) * self.decode_s / max(self.prompt_token_s, 1e-9))
        return max(1, min(room, max(MIN_CHUNK, fits)))


class _ExclusiveHold:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._request: _Exclusive | None = None

    def __enter__(self) -> Engine:
        e = self._engine
        with e._cv:
            if e._closing:
                raise closed_error()
            self._request = request = _Exclusive()
            e._queue.append(request)
            e._ensure_thread()
            e._cv.notify()
        try:
            request.granted.wait()
        except BaseException:  # Ctrl-C while waiting: the engine must not wait for us
            request.released.set()
            raise
        if e._closing:
            request.released.set()
            raise closed_error()
        e._stepping.acquire()  # so readers between steps (cached_tokens) wait for the holder too
        return e

    def __exit__(self, *exc: object) -> None:
        if self._request is not None:
            self._engine._stepping.release()
            self._request.released.set()


def new_spec(mode: str, tokens: list[int], engine: Engine, slot: int) -> Any:
    """The drafting for one sequence in ``slot``, or None (off, a recurrent model, or a batch of one token)."""
    if not engine.rewindable or engine.n_batch <= 1:
        return None
    return speculative.start(mode, tokens, draft=engine.draft, seq_id=slot, cost=engine.cost_curve)
