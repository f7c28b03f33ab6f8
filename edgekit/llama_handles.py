"""llama.cpp's model and context handles: loading the weights (a load Ctrl-C can cancel), creating the
context a plan describes, and freeing both.

Ctrl-C during a load: llama.cpp reads the weights inside one C call and calls back
into Python only through its progress callback. A KeyboardInterrupt raised inside
a ctypes callback is swallowed (Python prints "Exception ignored ..." and llama.cpp
goes on loading), so while the weights load, SIGINT only sets a flag (on the main
thread, where Python runs signal handlers); the progress callback then returns
False, llama.cpp cancels and frees what it allocated, and :func:`load_weights`
raises KeyboardInterrupt once the C call has returned.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edgekit import _llama
from edgekit.errors import ModelLoadError
from edgekit.gguf_check import ModelInfo
from edgekit.llama_facts import ggml_type_id
from edgekit.progress import ProgressFn, report

if TYPE_CHECKING:
    from edgekit.planner import Plan


@contextlib.contextmanager
def sigint_sets(flag: threading.Event) -> Iterator[None]:
    """Within the block, SIGINT sets ``flag`` instead of raising KeyboardInterrupt.

    Only on the main thread (the only one where Python can install handlers) and only
    where SIGINT isn't ignored; the previous handler comes back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):
        yield
        return
    signal.signal(signal.SIGINT, lambda _signum, _frame: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def load_weights(info: ModelInfo, *, gpu_layers: int, mmap: bool, mlock: bool, buffers: _llama.WeightBuffers,
                 progress: ProgressFn | None) -> Any:
    """``llama_model_load_from_file`` for ``info.path``, with the weights in ``buffers``: the ``llama_model*``.

    Raises KeyboardInterrupt if Ctrl-C came during the load (nothing stays allocated),
    and ModelLoadError if llama.cpp refused the file.
    """
    L = _llama.lib()
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = gpu_layers
    mp.use_extra_bufts = buffers.extra
    if buffers.repack is not None:
        mp.tensor_buft_overrides = buffers.repack.pointer  # ``buffers`` stays referenced until the load returns
    mp.load_mode = (L.LLAMA_LOAD_MODE_MMAP_MLOCK if mmap and mlock else L.LLAMA_LOAD_MODE_MLOCK if mlock
                    else L.LLAMA_LOAD_MODE_MMAP if mmap else L.LLAMA_LOAD_MODE_NONE)
    cancel = threading.Event()
    failure: list[BaseException] = []

    def on_progress(fraction: float, _user: Any) -> bool:
        if cancel.is_set():
            return False
        try:
            report(progress, "load", int(fraction * 1000), 1000)
        except BaseException as exc:  # raised here, ctypes would print and swallow it: re-raise after the load
            failure.append(exc)
            cancel.set()
        return not cancel.is_set()

    callback = L.llama_progress_callback(on_progress)  # referenced until the C call returns
    mp.progress_callback = callback
    _llama.clear_log()
    model = None
    try:
        with sigint_sets(cancel):
            model = L.llama_model_load_from_file(str(info.path).encode(), mp)
    except KeyboardInterrupt:  # the signal was handled only as the old handler came back
        cancel.set()
    if cancel.is_set():
        if model:  # Ctrl-C after the last progress call: the load finished, so free it here
            L.llama_model_free(model)
        if failure:
            raise failure[0]
        raise KeyboardInterrupt
    if not model:
        raise ModelLoadError(f"llama.cpp could not load {info.path.name}: {_llama.log_tail(3) or 'no details'}",
                             "The file may be corrupt or of a newer format; convert it again.")
    return model


def new_context(model: Any, info: ModelInfo, plan: Plan, *, threads: int, n_batch: int, n_ubatch: int,
                rope_scaling: str | None) -> Any:
    """A ``llama_context*`` as ``plan`` says (n_ctx per slot, slots, KV types, flash attention);
    ModelLoadError if refused.

    Each slot (sequence) gets its own KV stream of ``plan.n_ctx`` cells (``kv_unified`` off):
    attention then scans only the sequence's own cells, and no sequence can crowd out another.
    """
    L = _llama.lib()
    cp = L.llama_context_default_params()
    cp.n_ctx = plan.n_ctx * plan.slots
    cp.n_batch = n_batch
    cp.n_ubatch = min(n_ubatch, n_batch)
    cp.n_seq_max = plan.slots
    cp.kv_unified = False
    cp.n_threads = cp.n_threads_batch = threads
    cp.type_k = ggml_type_id(plan.type_k)
    cp.type_v = ggml_type_id(plan.type_v)
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if plan.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.no_perf = True
    # Sliding-window layers (Gemma 3) keep every cell, not just the last window: rejected drafts, a reused
    # prefix and a restored state may rewind past the window. llama.cpp's default; the plan counts it.
    cp.swa_full = True
    if plan.n_ctx > info.n_ctx_train and rope_scaling:
        cp.rope_scaling_type = (L.LLAMA_ROPE_SCALING_TYPE_YARN if rope_scaling == "yarn"
                                else L.LLAMA_ROPE_SCALING_TYPE_LINEAR)
        cp.rope_freq_scale = info.n_ctx_train / plan.n_ctx
        cp.yarn_orig_ctx = info.n_ctx_train
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise ModelLoadError(f"llama.cpp could not create a context of {plan.slots} x {plan.n_ctx} tokens: "
                             f"{_llama.log_tail(3) or 'no details'}", "Try a smaller n_ctx or kv_cache type.")
    return ctx


def free(owner: Any) -> None:
    """Free ``owner._ctx`` (a llama_context) and then ``owner._model`` (its weights), each once."""
    L = _llama.lib()
    if owner._ctx:
        L.llama_free(owner._ctx)
        owner._ctx = None
    if owner._model:
        L.llama_model_free(owner._model)
        owner._model = None
