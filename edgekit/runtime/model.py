"""Model: a GGUF loaded into llama.cpp, with generate / stream / chat and a prompt cache.

Generation runs in :mod:`edgekit.runtime.engine`: one background thread decodes every running
sequence of the model in one batch per step. :meth:`Model.start` queues a request and
returns its :class:`~edgekit.runtime.engine.Sequence` (n of them for n answers to one prompt);
:meth:`Model.generation`, the generator behind ``generate``, ``stream``, ``chat`` and
:class:`edgekit.Chat`, is a thin consumer of it. So calls from several threads are batched
together (with ``load(slots=N)``) or queue for the one slot, and each request reuses the KV
prefix its slot shares with it (a chat follow-up prefills only its new tokens).

Thread safety: any thread may call any method, :meth:`Model.close` too (streams still running
end with an :class:`~edgekit.EdgekitError`; llama.cpp's handles are freed once no thread uses
them, see :mod:`edgekit.runtime.engine`). Starting a second stream from the thread that is consuming
one, with no slot left for it, raises :class:`~edgekit.EdgekitError` instead of quietly
waiting for the first stream to run to its end.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import _llama, llama_handles
from edgekit.errors import ContextOverflow, CorruptFile, EdgekitError
from edgekit.gguf_check import ModelInfo
from edgekit.planner import Plan
from edgekit.progress import ProgressFn
from edgekit.runtime import kv_file
from edgekit.runtime.engine import Engine, Sequence, Step, closed_error
from edgekit.runtime.sampling import Sampling, build_sampler, resolve
from edgekit.runtime.speculative import CostCurve, check_mode
from edgekit.stats import Completion, Stats

if TYPE_CHECKING:
    from edgekit.runtime.draft import DraftModel
    from edgekit.runtime.prompt_cache import PromptCache


class _Handles:
    """The model's llama.cpp weights and context: freed together, once, by the engine when no thread
    uses them (it holds this, never the Model, so an unclosed Model is still collected)."""

    def __init__(self) -> None:
        self._model: Any = None
        self._ctx: Any = None

    def free(self) -> None:
        llama_handles.free(self)


class Model:
    """A loaded model. Create it with :func:`edgekit.load`; close it (or use ``with``) to free memory."""

    def __init__(self, info: ModelInfo, plan: Plan, *, threads: int, gpu_layers: int, mmap: bool, mlock: bool,
                 seed: int | None, n_batch: int, n_ubatch: int, rope_scaling: str | None,
                 progress: ProgressFn | None, chat_template: str | None = None, speculative: str = "off") -> None:
        L = _llama.lib()
        self._L = L
        self.info = info
        self.path: Path = info.path
        self.plan = plan
        self.metadata: dict = info.metadata
        # The GGUF's template, or chat_template=; one by name or plain completion when neither (see below).
        self.chat_template: str | None = chat_template if chat_template is not None else info.chat_template
        self.threads = threads
        self.gpu_layers = gpu_layers
        self.seed = seed
        self.type_k, self.type_v, self.flash_attn = plan.type_k, plan.type_v, plan.flash_attn
        self.n_ctx_train = info.n_ctx_train
        self.n_batch = n_batch
        self.defaults = Sampling()
        self.speculative = check_mode(speculative)  # Sampling.speculative overrides it per call
        self.slots = plan.slots
        self._live: dict[int, int] = {}  # thread id -> its streams of generation() not yet finished
        self._live_lock = threading.Lock()
        self._model = self._ctx = None
        self._handles = _Handles()
        self._engine: Engine | None = None
        self.draft: DraftModel | None = None  # see attach_draft
        self.prompt_cache: PromptCache | None = None  # see attach_prompt_cache
        t0 = time.perf_counter()

        buffers = _llama.weight_buffers(info.path, info.tensor_types, info.matrices)
        self.extra_buffers = buffers.extra
        self._model = self._handles._model = llama_handles.load_weights(info, gpu_layers=gpu_layers, mmap=mmap,
                                                                        mlock=mlock, buffers=buffers,
                                                                        progress=progress)
        self._vocab = L.llama_model_get_vocab(self._model)
        # Speculation drops rejected draft tokens from the cache; a recurrent state can't be rewound.
        self._rewindable = not (L.llama_model_is_recurrent(self._model) or L.llama_model_is_hybrid(self._model))
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        try:
            self._ctx = self._handles._ctx = llama_handles.new_context(self._model, info, plan, threads=threads,
                                                                       n_batch=n_batch, n_ubatch=n_ubatch,
                                                                       rope_scaling=rope_scaling)
        except BaseException:
            self.close()
            raise
        self.n_ctx: int = L.llama_n_ctx_seq(self._ctx)  # what ONE sequence can use
        self._pieces = _llama.Pieces(self._vocab)
        self._add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))
        self._bos_text = self._token_text(L.llama_vocab_bos(self._vocab))
        self._eos_text = self._token_text(L.llama_vocab_eos(self._vocab))
        # Why the chat template isn't the model's own, for the CLI to show once ("" when it is).
        self.template_note = ""
        if self.chat_template is None:
            from edgekit.runtime.template import fallback

            names = [str(info.metadata.get(k) or "") for k in ("general.name", "general.finetune")] + [info.path.stem]
            _, self.chat_template, self.template_note = fallback(self._is_control, names)
        self._engine = Engine(self._ctx, self._vocab, slots=self.slots, n_ctx=self.n_ctx, n_batch=n_batch,
                              n_vocab=self.n_vocab, pieces=self._pieces, rewindable=self._rewindable,
                              release=self._handles.free)
        self.load_s = self._engine.load_s = time.perf_counter() - t0

    def attach_draft(self, draft: DraftModel) -> None:
        """Draft with ``draft`` (one sequence per slot) for ``speculative="auto"``; the model closes it,
        and the draft it replaces.

        Any thread may call it while streams run: the swap waits for the engine's step in progress (not
        for the streams), and streams that drafted with the old draft go on drafting with the new one
        (their output stays the same: a draft never changes what is sampled). The old draft is closed
        once no step uses it.
        """
        try:
            engine = self._check_open()
            if draft.n_seq_max < self.slots:
                raise EdgekitError(f"the draft model holds {draft.n_seq_max} sequences but the model has "
                                   f"{self.slots} slots")
            old = engine.set_draft(draft)
        except BaseException:
            draft.close()
            raise
        self.draft = draft
        if old is not None:
            old.close()

    def attach_prompt_cache(self, cache: PromptCache | None) -> None:
        """Restore long prompts from, and keep them in, the persistent prompt cache ``cache``
        (docs/prompt-cache.md); None turns it off. Recurrent memory uses exact snapshots only, and
        sliding-window memory in a context of several slots too (they may drop their last token). The engine reads the reference once
        per prompt, so it may change at any time."""
        engine = self._check_open()
        if cache is not None:
            cache.n_swa = engine.n_swa
            # a sliding-window slot's own state can't be cut back; a one-slot context's whole state can
            cache.cut_back = 0 if not self._rewindable else 1 if engine.n_swa and not engine.whole_states else None
        old, self.prompt_cache = self.prompt_cache, cache
        engine.prompt_cache = cache
        if old is not None and old is not cache:
            old.close()

    # -- lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the engine thread (running streams end with an error), free the context, the weights and
        the draft model. The model can't be used afterwards. Safe to call again, and from any thread;
        called on the engine thread itself (``__del__`` in a GC pass there), it returns at once and the
        thread frees the handles when it exits."""
        engine, self._engine = getattr(self, "_engine", None), None
        self._model = self._ctx = None
        self.draft = None
        if engine is not None:
            engine.close()  # the engine frees the handles and the draft when its thread is done with them
        elif getattr(self, "_handles", None) is not None:  # a Model whose __init__ failed before the engine
            self._handles.free()
        cache, self.prompt_cache = getattr(self, "prompt_cache", None), None
        if cache is not None:
            cache.close()  # the snapshots taken so far are written

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # also a Model whose __init__ failed before its attributes existed
            pass

    def __repr__(self) -> str:
        slots = f", slots={self.slots}" if self.slots > 1 else ""
        return (f"Model({self.path.name}, n_ctx={self.n_ctx}{slots}, kv={self.type_k}/{self.type_v}, "
                f"threads={self.threads})")

    @property
    def cost_curve(self) -> CostCurve:
        """What evaluating one sequence's batch of n tokens costs on this device relative to one token,
        as timed while this model ran: the curve the drafting rule prices verification with."""
        return self._check_open().cost_curve

    def _check_open(self) -> Engine:
        if not self._ctx or self._engine is None:
            raise closed_error()
        return self._engine

    # -- tokens ------------------------------------------------------------------------------------------

    def _token_text(self, tok: int) -> str:
        if tok < 0:
            return ""
        return _llama.detokenize(self._vocab, [tok], render_special=True)

    def _is_control(self, text: str) -> bool:
        """Whether ``text`` is one special (control or user-defined) token of the vocabulary."""
        ids = _llama.tokenize(self._vocab, text, False, True)
        return len(ids) == 1 and _llama.tokenize(self._vocab, text, False, False) != ids

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text`` (``add_special`` adds BOS where the model wants it)."""
        with self._check_open().use():
            return _llama.tokenize(self._vocab, text, add_special, parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        """Text of ``tokens`` (special tokens rendered as their text)."""
        with self._check_open().use():
            return _llama.detokenize(self._vocab, list(tokens), render_special=True)

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes (without BOS)."""
        return len(self.tokenize(text, add_special=False))

    def is_eog(self, token: int) -> bool:
        with self._check_open().use():
            return bool(self._L.llama_vocab_is_eog(self._vocab, token))

    # -- chat --------------------------------------------------------------------------------------------

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None) -> str:
        """The prompt text for ``messages``, by the model's own chat template (Jinja sandbox).

        ``tools`` (OpenAI function tools), assistant ``tool_calls`` and ``tool`` results are rendered
        by the template if it supports them, else as text it can show (:mod:`edgekit.runtime.tools`).
        """
        from edgekit.runtime.template import render
        from edgekit.runtime.tool_prompt import chat_inputs
        from edgekit.runtime.tools import check_tools

        messages, extra = chat_inputs(self.chat_template, messages, check_tools(tools))
        return render(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                      bos_token=self._bos_text, eos_token=self._eos_text, **extra)

    def chat_tokens(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None) -> list[int]:
        """Prompt tokens for ``messages`` (and ``tools``); BOS is added only if the template didn't write it."""
        text = self.render_chat(messages, add_generation_prompt, tools)
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        with self._check_open().use():
            tokens = _llama.tokenize(self._vocab, text, False, True)
            if add_bos:
                tokens.insert(0, self._L.llama_vocab_bos(self._vocab))
        return tokens

    def chat(self, messages: list[dict], sampling: Sampling | None = None, **kwargs: Any) -> Completion:
        """Answer ``messages`` (list of {"role", "content"}); stops at the model's end-of-generation tokens."""
        return self.generate(self.chat_tokens(messages), sampling, **kwargs)

    def stream_chat(self, messages: list[dict], sampling: Sampling | None = None,
                    **kwargs: Any) -> Iterator[str | Stats]:
        """Like :meth:`chat`, yielding text chunks and finally a :class:`Stats`."""
        return self.stream(self.chat_tokens(messages), sampling, **kwargs)

    # -- generation --------------------------------------------------------------------------------------

    def generate(self, prompt: str | list[int], sampling: Sampling | None = None, **kwargs: Any) -> Completion:
        """Complete ``prompt`` (text, or token ids used as is). See :class:`Sampling` for the options."""
        gen = self.generation(prompt, resolve(self.defaults, sampling, kwargs), steps=False)
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
        raise AssertionError("generation(steps=False) yields no text")

    def stream(self, prompt: str | list[int], sampling: Sampling | None = None,
               **kwargs: Any) -> Iterator[str | Stats]:
        """Yield text chunks as they become safe to show, then a :class:`Stats` as the last item."""
        s = resolve(self.defaults, sampling, kwargs)

        def items() -> Iterator[str | Stats]:
            completion = yield from self.generation(prompt, s)
            yield completion.stats

        return items()

    def _prompt_tokens(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(prompt, add_special=True)
        return [int(t) for t in prompt]

    def start(self, prompt: str | list[int], sampling: Sampling | None = None, *, n: int = 1,
              **kwargs: Any) -> list[Sequence]:
        """Queue a generation and return its :class:`~edgekit.runtime.engine.Sequence` (``n`` of them: ``n``
        answers to one prompt, prefilled once and copied). Iterate each for its
        :class:`~edgekit.runtime.engine.Step` events; its ``completion`` is set when the iteration ends.

        The sequences run in the engine's thread as soon as ``n`` slots are free (requests start
        in order of arrival), batched with whatever else runs. With a ``seed``, the i-th sequence
        samples with ``seed + i``, so the same seed gives the same n answers.

        Raises:
            ContextOverflow: the prompt doesn't fit one sequence's context (``n_ctx``).
            EdgekitError: an empty prompt, ``n`` outside 1..slots, a bad grammar or logit_bias.
        """
        engine = self._check_open()
        s = resolve(self.defaults, sampling, kwargs)
        if not 1 <= n <= self.slots:
            raise EdgekitError(f"n={n} answers need {n} slots, but the model has {self.slots}",
                               f"Load the model with slots={max(n, 1)} or more, or ask for fewer answers.")
        tokens = self._prompt_tokens(prompt)
        self.check_prompt(tokens)
        seed = s.seed if s.seed is not None else self.seed
        group: list[Sequence] = []
        with engine.use():  # the sampler chains (a grammar's too) read the vocabulary
            try:
                for i in range(n):
                    si = s if seed is None or n == 1 else s.replace(seed=seed + i)
                    sampler = build_sampler(si, self._vocab, self.n_vocab, default_seed=self.seed, history=tokens)
                    group.append(Sequence(engine, tokens, si, sampler, s.speculative or self.speculative, i))
                engine.submit(group)
            except BaseException:
                for seq in group:
                    self._L.llama_sampler_free(seq._sampler)
                raise
        return group

    def check_prompt(self, tokens: list[int]) -> None:
        """Refuse (never truncate) prompt ``tokens`` that can't start a generation: an empty prompt
        (:class:`~edgekit.EdgekitError`), or one that leaves no room to generate in one sequence's
        context (:class:`~edgekit.errors.ContextOverflow`)."""
        if not tokens:
            raise EdgekitError("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflow(f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}",
                                  "Shorten the prompt or load the model with a larger n_ctx.",
                                  needed=len(tokens) + 1, available=self.n_ctx)

    def generation(self, prompt: str | list[int], s: Sampling, *,
                   steps: bool = True) -> Generator[str, None, Completion]:
        """The generation loop every text API shares: yields text chunks; its return value
        (``StopIteration.value``) is the :class:`Completion`. :meth:`generate`, :meth:`stream` and
        :class:`edgekit.Chat` build on it; it consumes one :meth:`start` sequence. ``steps=False`` yields
        nothing and waits for the end (:meth:`Sequence.wait`: no wake-up per token).

        Closing the generator (or an exception in the consumer, like Ctrl-C) cancels the sequence.
        """
        me = threading.get_ident()
        with self._live_lock:
            live = self._live.get(me, 0)
            if live >= self.slots:  # it would wait for a stream that this very thread has to finish
                raise EdgekitError("this model is already generating in this thread",
                                   "Finish or close the previous stream before starting another, or load "
                                   "the model with more slots.")
            self._live[me] = live + 1
        try:
            (seq,) = self.start(prompt, s)
            try:
                if not steps:
                    seq.wait()
                for step in seq:  # (after wait(): already at its end)
                    if step.text:
                        yield step.text
            finally:
                seq.close()  # a no-op once it ended; else cancel and wait until its cells are free
        finally:
            with self._live_lock:
                self._live[me] -= 1
                if not self._live[me]:
                    del self._live[me]
        assert seq.completion is not None
        return seq.completion

    # -- state ---------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the prompt cache of every slot (the next call prefills from scratch).

        Waits until no sequence runs.
        """
        with self._check_open().exclusive() as engine:
            self._L.llama_memory_clear(self._L.llama_get_memory(engine.ctx), True)
            for slot in engine.slots:
                slot.tokens = []

    @property
    def llama_model(self) -> Any:
        """The raw ``llama_model*`` (for tools like the benchmark that drive llama.cpp directly)."""
        self._check_open()
        return self._model

    @property
    def llama_context(self) -> Any:
        """The raw ``llama_context*``, for tools that decode on it themselves (sequence 0): only while no
        generation runs, and call :meth:`reset` afterwards."""
        self._check_open()
        return self._ctx

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens whose KV is in the cache of the most recent sequence's slot: a copy taken between
        two engine steps, so it matches the cache (never a list the engine is changing)."""
        return self._check_open().cached_tokens()

    def save_state(self, path: str | Path) -> Path:
        """Write the KV cache of the most recent sequence's slot and its tokens to ``path``;
        :meth:`load_state` restores them. Waits until no sequence runs.

        A long system prompt or document is then prefilled once and reused by later runs.
        """
        with self._check_open().exclusive() as engine:
            L, slot = self._L, engine.recent
            seq = engine.state_seq(slot)
            size = L.llama_state_seq_get_size(engine.ctx, seq)
            buf = (ctypes.c_uint8 * size)()
            n = L.llama_state_seq_get_data(engine.ctx, buf, size, seq)
            if n == 0 and slot.tokens:
                raise EdgekitError("llama.cpp could not copy the KV cache state")
            return kv_file.write(self, Path(path), list(slot.tokens), memoryview(buf)[:n])

    def load_state(self, path: str | Path) -> int:
        """Restore a state written by :meth:`save_state` (same model file, KV types) into the least
        recently used slot, where the next matching prompt finds it; returns its token count."""
        path = Path(path)
        tokens, data = kv_file.read(self, path)
        with self._check_open().exclusive() as engine:
            L = self._L
            slot = min(engine.slots, key=lambda sl: sl.last_used)
            mem = L.llama_get_memory(engine.ctx)
            L.llama_memory_seq_rm(mem, slot.id, -1, -1)
            slot.tokens = []
            if tokens and L.llama_state_seq_set_data(engine.ctx, data, len(data), slot.id) == 0:
                L.llama_memory_seq_rm(mem, slot.id, -1, -1)
                raise CorruptFile(f"llama.cpp rejected the state in {path.name}")
            slot.tokens = tokens
            engine.touch(slot)
            return len(tokens)


__all__ = ["Model", "Sequence", "Step"]
