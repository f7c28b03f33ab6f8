"""The engines a sweep loads: edgekit's own Model, or llama-cpp-python's ``Llama`` as the "no wrapper" baseline.

Either way the result is a :class:`Loaded`: the llama.cpp pointers the pp/tg timers drive,
a ``stream_chat`` for the chat turn, and the settings the loader really used.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import _compute, _llama
from edgekit.gguf_check import ModelInfo, check
from edgekit.llama_facts import ggml_type_id, resolve_gpu_layers

from . import measure

__all__ = ["Loaded"]


class Loaded:
    """A loaded model: the edgekit Model (or a raw Llama), its llama.cpp pointers and model facts."""

    def __init__(self, model: str, type_k: str, type_v: str, flash_attn: bool, threads: int, n_ctx: int,
                 engine: str, n_batch: int, n_ubatch: int, gpu_layers: int | str) -> None:
        self.model: Any = None
        measure.reset_peak_rss()
        t0 = time.perf_counter()
        if engine == "edgekit":
            import edgekit

            m = self.model = edgekit.load(model, n_ctx=n_ctx, kv_cache=f"{type_k}/{type_v}", threads=threads,
                                          flash_attn=flash_attn, n_batch=n_batch, n_ubatch=n_ubatch,
                                          gpu_layers=gpu_layers, seed=1234,
                                          prompt_cache="off")  # measure prefill, not a restore from disk
            self.speculative = m.speculative  # the runtime's default: records say which
            ctx_ptr, model_ptr = m.llama_context, m.llama_model
            self.info: ModelInfo = m.info
            self.metadata = dict(m.metadata)
            self.load_s = m.load_s
            # What the loader actually used (the planner may adjust a setting), not just what was asked.
            self.type_k, self.type_v = m.type_k, m.type_v
            self.gpu_layers, self.flash_attn = m.gpu_layers, m.flash_attn
            on_clear = None  # the Model is reset once after the raw tests (see runner.run)
        else:
            self.info = check(model)
            self.gpu_layers = resolve_gpu_layers(gpu_layers, self.info.n_layer)
            llama = _load_raw(model, self.info, type_k, type_v, flash_attn, threads, n_ctx, n_batch, n_ubatch,
                              self.gpu_layers)
            self.model = _RawChat(llama)
            ctx_ptr, model_ptr = llama.ctx, llama.model
            self.metadata = dict(llama.metadata or {})
            self.load_s = time.perf_counter() - t0
            self.type_k, self.type_v, self.flash_attn = type_k, type_v, flash_attn
            self.speculative = "off"
            on_clear = llama.reset
        self.rss = measure.rss_bytes()
        L = _llama.lib()
        buf = ctypes.create_string_buffer(256)
        L.llama_model_desc(model_ptr, buf, 256)
        self.model_type = buf.value.decode(errors="replace")
        self.model_size = int(L.llama_model_size(model_ptr))
        self.model_n_params = int(L.llama_model_n_params(model_ptr))
        self.n_ctx = int(L.llama_n_ctx(ctx_ptr))
        self.ctx = measure.Context(ctx_ptr, model_ptr, threads, on_clear=on_clear)

    def after_raw_tests(self) -> None:
        """The raw decodes bypassed the Model's prompt-cache bookkeeping: make it start clean."""
        self.model.reset()

    def close(self) -> None:
        if self.model is not None:
            self.model.close()


def _load_raw(model: str, info: ModelInfo, type_k: str, type_v: str, flash_attn: bool, threads: int, n_ctx: int,
              n_batch: int, n_ubatch: int, gpu_layers: int) -> Any:
    """llama-cpp-python's Llama with the same settings: the "no wrapper" baseline."""
    from edgekit.errors import ModelLoadError

    Llama = _llama.high_level_llama()
    try:
        with _llama.same_weight_buffers(Path(model), info.tensor_types, info.matrices):
            return Llama(str(model), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_threads=threads,
                         n_threads_batch=threads, flash_attn=flash_attn, type_k=ggml_type_id(type_k),
                         type_v=ggml_type_id(type_v), n_gpu_layers=gpu_layers, seed=1234, verbose=False)
    except ValueError as exc:
        raise ModelLoadError(f"llama.cpp could not load {model}: {exc}",
                             "Check that the file is a complete GGUF.") from None


class _RawChat:
    """stream_chat for the raw Llama engine, via llama-cpp-python's own chat formatting."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama

    def reset(self) -> None:
        L = _llama.lib()
        L.llama_memory_clear(L.llama_get_memory(self.llama.ctx), True)
        self.llama.reset()

    def stream_chat(self, messages: list[dict], **sampling: Any) -> Iterator[Any]:
        n = 0
        chunks = self.llama.create_chat_completion(messages, stream=True, temperature=sampling["temperature"],
                                                   max_tokens=sampling["max_tokens"], seed=sampling.get("seed"))
        # llama-cpp-python decodes on the thread that steps its stream: step it on edgekit's compute thread,
        # so the process keeps one OpenMP team (edgekit._compute).
        while (chunk := _compute.run(next, chunks, None)) is not None:
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                n += 1
                yield text
        yield _RawStats(gen_tokens=n)

    def close(self) -> None:
        self.llama.close()


@dataclass
class _RawStats:
    gen_tokens: int
    prompt_tokens: int = 0
