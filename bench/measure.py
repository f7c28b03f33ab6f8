"""The measurements: pp and tg at a depth (the llama-bench way) and a chat turn (the user's way).

pp/tg drive the loaded model's own llama.cpp context with random tokens exactly
like ``llama-bench`` does (clear the KV cache, fill ``n_depth`` tokens untimed, then
time ``n_prompt`` tokens in ``n_batch`` chunks, or ``n_gen`` single-token decodes).
The context is the one :func:`edgekit.load` made, so its settings (n_ctx, KV types,
flash attention, threads, batch sizes) are the ones users get. The chat turn goes
through :meth:`edgekit.Model.stream_chat`, the same path the chat CLI uses.
"""

from __future__ import annotations

import ctypes
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import BenchError

__all__ = ["Context", "time_pp_tg", "time_chat", "rss_bytes", "reset_peak_rss", "peak_rss_bytes",
           "CHAT_SYSTEM", "CHAT_USER", "request_stop", "clear_stop", "check_stop"]

# Ctrl-C: a KeyboardInterrupt raised while llama.cpp calls back into Python (its log callback)
# is swallowed by ctypes, so the CLI's SIGINT handler only sets this flag and the loops below
# raise KeyboardInterrupt themselves, between llama.cpp calls.
_STOP = threading.Event()


def request_stop() -> None:
    """Ask the running measurement to stop at the next batch or token (safe from a signal handler)."""
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()


def check_stop() -> None:
    """Raise KeyboardInterrupt if a stop was requested."""
    if _STOP.is_set():
        _STOP.clear()
        raise KeyboardInterrupt

# A realistic chat turn: a short system prompt and a user request that asks for a long answer,
# so 128 answer tokens are usually produced before the model stops on its own.
CHAT_SYSTEM = "You are a helpful assistant running on a small device. Answer clearly and in detail."
CHAT_USER = ("I am planning a weekend trip to Paris with two kids. Suggest a detailed two-day itinerary with "
             "museums, parks and places to eat, and explain why each stop is good for children.")


@dataclass
class Context:
    """A raw llama.cpp context to time (the ``llama_context*`` and ``llama_model*`` pointers of a loaded model)."""

    ctx: Any
    model: Any
    threads: int
    on_clear: Callable[[], None] | None = None  # tell the owner its cache bookkeeping is stale
    seed: int = 1234
    _rng: random.Random = field(init=False, repr=False)
    # (depth, llama.cpp's sequence state at that depth): fill_depth restores it instead of refilling.
    # Another context of the same model, KV types and flash-attention setting can take it over.
    depth_state: tuple[int, Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from edgekit import _llama

        self._lib = L = _llama.lib()
        vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = int(L.llama_vocab_n_tokens(vocab))
        self.bos = int(L.llama_vocab_bos(vocab)) if L.llama_vocab_get_add_bos(vocab) else None
        self._rng = random.Random(self.seed)
        self.set_threads(self.threads)

    def set_threads(self, threads: int, threads_batch: int = 0) -> None:
        """Threads for decoding and for prompts (0: the same). Set once per test, as llama-bench does:
        llama.cpp logs each call, so never inside the timed loops."""
        self.threads = threads
        self._lib.llama_set_n_threads(self.ctx, threads, threads_batch or threads)

    def _token(self) -> int:
        return self._rng.randrange(self.n_vocab)

    def clear(self) -> None:
        """Empty the KV cache (and tell the owner its prompt cache is gone)."""
        mem = self._lib.llama_get_memory(self.ctx)
        self._lib.llama_memory_clear(mem, False)
        if self.on_clear is not None:
            self.on_clear()

    def _decode(self, tokens: list[int]) -> None:
        arr = (self._lib.llama_token * len(tokens))(*tokens)
        batch = self._lib.llama_batch_get_one(arr, len(tokens))
        from edgekit import _llama

        rc = _llama.decode(self.ctx, batch)
        if rc != 0:
            raise BenchError(f"llama.cpp failed to decode a batch of {len(tokens)} tokens (code {rc})",
                             "The context is probably too small for this depth; lower -d or -p.")

    def prompt(self, n_tokens: int, n_batch: int) -> None:
        """Process ``n_tokens`` random tokens in ``n_batch`` chunks (BOS first when the model adds one)."""
        done = 0
        while done < n_tokens:
            check_stop()
            n = min(n_tokens - done, n_batch)
            tokens = [self._token() for _ in range(n)]
            if done == 0 and self.bos is not None:
                tokens[0] = self.bos
            self._decode(tokens)
            done += n
        self._lib.llama_synchronize(self.ctx)

    def gen(self, n_tokens: int) -> None:
        """Decode ``n_tokens`` single tokens, each at the next position."""
        token = self.bos if self.bos is not None else self._token()
        for _ in range(n_tokens):
            check_stop()
            self._decode([token])
            self._lib.llama_synchronize(self.ctx)
            token = self._token()

    def fill_depth(self, depth: int, n_batch: int) -> None:
        """Clear the cache and put ``depth`` tokens in it.

        A saved state of this depth is restored; one of a smaller depth is restored and topped
        up, so depths measured in increasing order fill the cache only once.
        """
        self.clear()
        if depth <= 0:
            return
        lib = self._lib
        have = 0
        if self.depth_state is not None and self.depth_state[0] <= depth:
            saved, buf = self.depth_state
            if lib.llama_state_seq_set_data(self.ctx, buf, len(buf), 0) != 0:
                if saved == depth:
                    return
                have = saved
            else:
                self.clear()  # an incompatible state: refill from scratch
        self.prompt(depth - have, n_batch)
        size = lib.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        lib.llama_state_seq_get_data(self.ctx, buf, size, 0)
        self.depth_state = (depth, buf)


def time_pp_tg(ctx: Context, *, n_prompt: int, n_gen: int, n_depth: int, n_batch: int, reps: int,
               warmup: bool = True, on_rep: Callable[[], None] | None = None) -> list[int]:
    """Time one llama-bench test (pp if ``n_prompt`` else tg) ``reps`` times; return nanoseconds per rep."""
    if warmup:
        ctx.clear()
        if n_prompt > 0:
            ctx.prompt(n_prompt, n_batch)
        if n_gen > 0:
            ctx.gen(1)
    samples: list[int] = []
    for _ in range(reps):
        ctx.fill_depth(n_depth, n_batch)
        t0 = time.perf_counter_ns()
        if n_prompt > 0:
            ctx.prompt(n_prompt, n_batch)
        if n_gen > 0:
            ctx.gen(n_gen)
        samples.append(time.perf_counter_ns() - t0)
        if on_rep is not None:
            on_rep()
    return samples


def time_chat(model: Any, *, n_gen: int, reps: int, warmup: bool = True,
              on_rep: Callable[[], None] | None = None) -> dict[str, Any]:
    """Time a chat turn through ``model.stream_chat`` ``reps`` times (greedy, cache cleared before each).

    Returns raw samples: ``ttft_ns``, ``e2e_ns`` (wall time from the call to the last chunk),
    ``prompt_tokens``, ``gen_tokens``, and ``drafted_tokens`` / ``accepted_tokens`` summed over the
    timed turns (from the final Stats).
    """
    messages = [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": CHAT_USER}]
    ttft: list[int] = []
    e2e: list[int] = []
    prompt_tokens = 0
    gen_tokens: list[int] = []
    drafted = accepted = 0
    for i in range(reps + (1 if warmup else 0)):
        _reset_model(model)
        t0 = time.perf_counter_ns()
        first = None
        stats = None
        for item in model.stream_chat(messages, temperature=0.0, max_tokens=n_gen, seed=1):
            check_stop()
            if isinstance(item, str):
                if first is None and item:
                    first = time.perf_counter_ns()
            else:
                stats = item
        end = time.perf_counter_ns()
        if warmup and i == 0:
            continue
        ttft.append((first or end) - t0)
        e2e.append(end - t0)
        if stats is not None:
            prompt_tokens = int(getattr(stats, "prompt_tokens", 0) or 0)
            gen_tokens.append(int(getattr(stats, "gen_tokens", 0) or 0))
            drafted += int(getattr(stats, "drafted_tokens", 0) or 0)
            accepted += int(getattr(stats, "accepted_tokens", 0) or 0)
        if on_rep is not None:
            on_rep()
    return {"ttft_ns": ttft, "e2e_ns": e2e, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
            "drafted_tokens": drafted, "accepted_tokens": accepted}


def _reset_model(model: Any) -> None:
    """Forget the previous turn so each repetition pays the full prefill (TTFT measured cold)."""
    reset = getattr(model, "reset", None)
    if callable(reset):
        reset()
        return
    raise BenchError("this model object can't reset its prompt cache (no reset())",
                     "Update edgekit: bench needs Model.reset() to time each chat turn cold.")


# -- memory ------------------------------------------------------------------------------------------------

def rss_bytes() -> int:
    """The current resident set size of this process."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to clear_refs); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last :func:`reset_peak_rss` (Linux VmHWM), else since process start."""
    from edgekit.stats import peak_rss

    return peak_rss()
