"""Model: a GGUF loaded into llama.cpp, with generate / stream / chat and a prompt cache.

One generator (:meth:`Model.generation`) does all the work: reuse the KV prefix shared
with the previous evaluation, prefill only the new tokens, then sample in C and
decode one token at a time (or a token plus a prompt-lookup draft, verified in one
batch: :mod:`edgekit.speculative`), yielding text that is safe to show and finally a
:class:`Stats`. ``generate``, ``chat`` and :class:`edgekit.Chat` all consume it.

Thread safety: llama.cpp contexts are not thread-safe, so every call that
touches the context holds the model's lock. Calls from other threads wait;
starting a second generation from the thread that is still consuming a stream
raises :class:`~edgekit.EdgekitError` instead of deadlocking.

Size: about 430 lines, over the house's ~400, for one reason: the generation loop and the
bookkeeping it keeps exact (the cached token list, draft cells, the lock) are one idea;
loading lives in :mod:`edgekit.loading`, drafting in :mod:`edgekit.speculative`, file I/O
of saved state in :mod:`edgekit.state`. The multi-sequence engine (issue 12) is where it splits.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from edgekit import _llama, loading, speculative, state
from edgekit.errors import ContextOverflow, CorruptFile, EdgekitError
from edgekit.gguf_check import ModelInfo
from edgekit.loading import load
from edgekit.planner import Plan
from edgekit.progress import ProgressFn
from edgekit.sampling import Sampling, build_sampler, resolve
from edgekit.speculative import MAX_DRAFT, check_mode
from edgekit.stats import Completion, FinishReason, Stats, peak_rss
from edgekit.textstream import TextStream


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
        self.chat_template: str | None = chat_template if chat_template is not None else info.chat_template
        self.threads = threads
        self.gpu_layers = gpu_layers
        self.seed = seed
        self.type_k, self.type_v, self.flash_attn = plan.type_k, plan.type_v, plan.flash_attn
        self.n_ctx_train = info.n_ctx_train
        self.n_batch = n_batch
        self.defaults = Sampling()
        self.speculative = check_mode(speculative)  # Sampling.speculative overrides it per call
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._model = self._ctx = None
        self._tokens: list[int] = []  # exactly the tokens whose KV is in the cache, in order
        self.draft: Any = None  # an edgekit.draft.DraftModel this model owns (load(draft=...)), or None
        t0 = time.perf_counter()

        self.extra_buffers = _llama.extra_buffers_ok(info.path, info.tensor_types)
        self._model = loading.load_weights(info, gpu_layers=gpu_layers, mmap=mmap, mlock=mlock,
                                           extra_buffers=self.extra_buffers, progress=progress)
        self._vocab = L.llama_model_get_vocab(self._model)
        # Speculation drops rejected draft tokens from the cache; a recurrent state can't be rewound.
        self._rewindable = not (L.llama_model_is_recurrent(self._model) or L.llama_model_is_hybrid(self._model))
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        try:
            self._ctx = loading.new_context(self._model, info, plan, threads=threads, n_batch=n_batch,
                                            n_ubatch=n_ubatch, rope_scaling=rope_scaling)
        except BaseException:
            self.close()
            raise
        self._mem = L.llama_get_memory(self._ctx)
        self.n_ctx: int = L.llama_n_ctx(self._ctx)
        self._pieces = _llama.Pieces(self._vocab)
        self._add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))
        self._bos_text = self._token_text(L.llama_vocab_bos(self._vocab))
        self._eos_text = self._token_text(L.llama_vocab_eos(self._vocab))
        self.load_s = time.perf_counter() - t0

    # -- lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the context and the weights. The model can't be used afterwards."""
        L = self._L
        if getattr(self, "draft", None) is not None:
            self.draft.close()
            self.draft = None
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            L.llama_model_free(self._model)
            self._model = None

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
        return (f"Model({self.path.name}, n_ctx={self.n_ctx}, kv={self.type_k}/{self.type_v}, "
                f"threads={self.threads})")

    def _check_open(self) -> None:
        if not self._ctx:
            raise EdgekitError("the model is closed", "Load it again with edgekit.load().")

    # -- locking -----------------------------------------------------------------------------------------

    def _acquire(self) -> None:
        self._check_open()
        me = threading.get_ident()
        if self._owner == me:
            raise EdgekitError("this model is already generating in this thread",
                               "Finish or close the previous stream before starting another.")
        self._lock.acquire()
        self._owner = me

    def _release(self) -> None:
        self._owner = None
        self._lock.release()

    # -- tokens ------------------------------------------------------------------------------------------

    def _token_text(self, tok: int) -> str:
        if tok < 0:
            return ""
        return _llama.detokenize(self._vocab, [tok], render_special=True)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text`` (``add_special`` adds BOS where the model wants it)."""
        self._check_open()
        return _llama.tokenize(self._vocab, text, add_special, parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        """Text of ``tokens`` (special tokens rendered as their text)."""
        self._check_open()
        return _llama.detokenize(self._vocab, list(tokens), render_special=True)

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes (without BOS)."""
        return len(self.tokenize(text, add_special=False))

    def is_eog(self, token: int) -> bool:
        return bool(self._L.llama_vocab_is_eog(self._vocab, token))

    # -- chat --------------------------------------------------------------------------------------------

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages``, by the model's own chat template (Jinja sandbox)."""
        from edgekit.template import render

        return render(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                      bos_token=self._bos_text, eos_token=self._eos_text)

    def chat_tokens(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Prompt tokens for ``messages``; BOS is added only if the template didn't write it."""
        text = self.render_chat(messages, add_generation_prompt)
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        tokens = self.tokenize(text, add_special=False)
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
        chunks: list[str] = []
        gen = self.generation(prompt, resolve(self.defaults, sampling, kwargs))
        completion = None
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                completion = stop.value
                break
            if isinstance(item, str):
                chunks.append(item)
        assert completion is not None and "".join(chunks) == completion.text
        return completion

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

    def _prefill(self, tokens: list[int]) -> None:
        """Decode ``tokens`` after what the cache holds, in n_batch chunks (logits for the last one)."""
        L = self._L
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i : i + self.n_batch]
            arr = (L.llama_token * len(chunk))(*chunk)
            rc = L.llama_decode(self._ctx, L.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                self._resync()
                raise EdgekitError(f"llama.cpp failed to evaluate the prompt (llama_decode returned {rc})",
                                   "The context may be full; use a larger n_ctx.")
            self._tokens.extend(chunk)

    def _resync(self) -> None:
        """After a failed decode, make the cache and our token list agree again (empty)."""
        self._L.llama_memory_clear(self._mem, True)
        self._tokens = []

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the longest cached prefix of ``tokens`` (minus one, so the last token yields logits)."""
        cached = self._tokens
        n = 0
        limit = min(len(cached), len(tokens) - 1)
        while n < limit and cached[n] == tokens[n]:
            n += 1
        # Always trim: an interrupted decode (e.g. KeyboardInterrupt) may have left cells past our list.
        if not self._L.llama_memory_seq_rm(self._mem, 0, n, -1):
            self._resync()
            return 0
        del self._tokens[n:]
        return n

    def generation(self, prompt: str | list[int], s: Sampling) -> Generator[str, None, Completion]:
        """The generation loop: yields text chunks; its return value (``StopIteration.value``) is the
        :class:`Completion`. :meth:`generate`, :meth:`stream` and :class:`edgekit.Chat` build on it.

        With speculation on, a token is evaluated together with a draft of the tokens expected
        after it, in one batch with logits at every position. The next tokens are then sampled
        there, in C, by the same sampler chain, one after another: while a sample equals the
        drafted token, that token's KV is already in the cache; the first sample that differs
        is the next token to evaluate, and the cells of the rest of the draft are removed. So
        every emitted token is sampled exactly as plain decoding samples it (the chain accepts
        exactly the emitted tokens), and EOG, stop strings, max_tokens and the context limit
        are checked per token as before.
        """
        L = self._L
        self._acquire()
        sampler = batch = None
        pending: list[int] = []  # drafted tokens whose KV follows self._tokens, not yet verified
        try:
            t0 = time.perf_counter()
            tokens = self._prompt_tokens(prompt)
            if not tokens:
                raise EdgekitError("the prompt is empty")
            if len(tokens) >= self.n_ctx:
                raise ContextOverflow(f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}",
                                      "Shorten the prompt or load the model with a larger n_ctx.",
                                      needed=len(tokens) + 1, available=self.n_ctx)
            n_cached = self._reuse_prefix(tokens)
            self._prefill(tokens[n_cached:])
            t_prefill = time.perf_counter()
            sampler = build_sampler(s, self._vocab, self.n_vocab, default_seed=self.seed, history=tokens)
            stream = TextStream(s.stop)
            out: list[int] = []
            max_tokens = s.max_tokens if s.max_tokens is not None else self.n_ctx
            finish: FinishReason = "length"
            tok_buf = (L.llama_token * 1)()
            one = L.llama_batch_get_one(tok_buf, 1)
            sample, decode, ctx, pieces = L.llama_sampler_sample, L.llama_decode, self._ctx, self._pieces
            is_eog, vocab = L.llama_vocab_is_eog, self._vocab
            spec = None
            if self._rewindable and self.n_batch > 1:
                spec = speculative.start(s.speculative or self.speculative, tokens, draft=self.draft)
            if spec is not None:
                batch = _llama.TokenBatch(min(MAX_DRAFT, self.n_batch - 1) + 1)
            idx = -1  # where the next token's logits are among the last decode's outputs
            t_first = None
            n_sampled = 0
            while len(out) < max_tokens:
                tok = sample(sampler, ctx, idx)
                n_sampled += 1
                if t_first is None:
                    t_first = time.perf_counter()
                if pending and spec is not None:
                    spec.verdict(tok == pending[0])
                if is_eog(vocab, tok):
                    finish = "eog"
                    break
                out.append(tok)
                chunk = stream.push(pieces(tok))
                if chunk:
                    yield chunk
                if stream.stopped:
                    finish = "stop"
                    break
                if len(self._tokens) >= self.n_ctx or len(out) >= max_tokens:
                    break  # "length": the sampled token is kept but not evaluated
                if spec is not None:
                    spec.append(tok)
                if pending and tok == pending[0]:  # drafted, so already evaluated
                    pending.pop(0)
                    self._tokens.append(tok)
                    idx += 1
                    continue
                if pending:
                    self._drop_cells(pending)
                draft: list[int] = []
                if spec is not None and batch is not None:
                    # Room: the context, the tokens still allowed (the last one is never evaluated), the batch.
                    room = min(self.n_ctx - len(self._tokens) - 1, max_tokens - len(out) - 1, batch.capacity - 1)
                    draft = spec.propose(room)
                if draft:
                    rc = decode(ctx, batch.fill([tok, *draft], len(self._tokens)))  # type: ignore[union-attr]
                    pending, idx = draft, 0
                else:
                    tok_buf[0] = tok
                    rc = decode(ctx, one)
                    idx = -1
                if rc != 0:
                    pending = []
                    self._resync()
                    raise EdgekitError("llama.cpp failed to evaluate a generated token")
                self._tokens.append(tok)
            if pending:
                self._drop_cells(pending)
            tail = stream.finish()
            if tail:
                yield tail
            t_end = time.perf_counter()
            t_first = t_first or t_end
            n_new = len(tokens) - n_cached
            decode_s = t_end - t_first
            stats = Stats(
                load_s=self.load_s, prompt_tokens=len(tokens), cached_tokens=n_cached, new_prompt_tokens=n_new,
                ttft_s=t_first - t0, prefill_tps=n_new / (t_prefill - t0) if t_prefill > t0 else 0.0,
                gen_tokens=len(out), decode_s=decode_s,
                decode_tps=(n_sampled - 1) / decode_s if n_sampled > 1 and decode_s > 0 else 0.0,
                peak_rss=peak_rss(), n_ctx=self.n_ctx, ctx_used=len(self._tokens), finish_reason=finish,
                drafted_tokens=spec.drafted if spec else 0, accepted_tokens=spec.accepted if spec else 0,
            )
            return Completion(stream.text, out, finish, stats)
        finally:
            if pending and self._ctx:  # stopped mid-draft (an exception, or the stream was closed)
                self._drop_cells(pending)
            if batch is not None:
                batch.free()
            if sampler is not None:
                L.llama_sampler_free(sampler)
            self._release()

    def _drop_cells(self, pending: list[int]) -> None:
        """Remove the KV cells past ``self._tokens`` (a draft's rejected tokens) and forget ``pending``."""
        pending.clear()
        if not self._L.llama_memory_seq_rm(self._mem, 0, len(self._tokens), -1):
            self._resync()
            raise EdgekitError("llama.cpp could not remove a rejected draft from the KV cache")

    # -- state ---------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the prompt cache (the next call prefills from scratch)."""
        self._acquire()
        try:
            self._resync()
        finally:
            self._release()

    @property
    def llama_model(self) -> Any:
        """The raw ``llama_model*`` (for tools like the benchmark that drive llama.cpp directly)."""
        self._check_open()
        return self._model

    @property
    def llama_context(self) -> Any:
        """The raw ``llama_context*``. Call :meth:`reset` after decoding on it yourself."""
        self._check_open()
        return self._ctx

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens whose KV is in the cache now (a copy)."""
        return list(self._tokens)

    def save_state(self, path: str | Path) -> Path:
        """Write the KV cache and its tokens to ``path``; :meth:`load_state` restores them.

        A long system prompt or document is then prefilled once and reused by later runs.
        """
        self._acquire()
        try:
            L = self._L
            size = L.llama_state_seq_get_size(self._ctx, 0)
            buf = (ctypes.c_uint8 * size)()
            n = L.llama_state_seq_get_data(self._ctx, buf, size, 0)
            if n == 0 and self._tokens:
                raise EdgekitError("llama.cpp could not copy the KV cache state")
            return state.write(self, Path(path), list(self._tokens), memoryview(buf)[:n])
        finally:
            self._release()

    def load_state(self, path: str | Path) -> int:
        """Restore a state written by :meth:`save_state` (same model file, KV types); returns its token count."""
        path = Path(path)
        tokens, data = state.read(self, path)
        self._acquire()
        try:
            self._resync()
            if tokens and self._L.llama_state_seq_set_data(self._ctx, data, len(data), 0) == 0:
                self._resync()
                raise CorruptFile(f"llama.cpp rejected the state in {path.name}")
            self._tokens = tokens
            return len(tokens)
        finally:
            self._release()


__all__ = ["Completion", "Model", "Stats", "load", "peak_rss"]
