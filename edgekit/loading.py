"""Loading: :func:`load` resolves the options and the memory plan; then the weights (a load
Ctrl-C can cancel) and the context become llama.cpp objects for :class:`~edgekit.Model`.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import _llama
from edgekit.errors import ContextOverflow, EdgekitError, ModelLoadError
from edgekit.gguf_check import ModelInfo, check
from edgekit.llama_facts import ggml_type_id, physical_cores, resolve_gpu_layers
from edgekit.planner import Plan, plan_info, require_fit
from edgekit.progress import ProgressFn, report
from edgekit.speculative import check_mode

if TYPE_CHECKING:
    from edgekit.model import Model

# llama.cpp's LLAMA_MAX_SEQ: the most sequences one context can hold.
MAX_SLOTS = 256


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


def load(model: str | Path, *, n_ctx: int | None = None, kv_cache: str = "auto", threads: int | None = None,
         gpu_layers: int | str = "auto", flash_attn: bool | str = "auto", mmap: bool = True, mlock: bool = False,
         seed: int | None = None, n_batch: int = 512, n_ubatch: int | None = None, rope_scaling: str | None = None,
         quant: str | None = None, progress: ProgressFn | None = None, chat_template: str | None = None,
         speculative: str = "auto", slots: int = 1, draft: str | Path | None = None) -> Model:
    """Load a model for generation, planned to fit memory.

    Args:
        model: a GGUF path, a Hugging Face checkpoint dir or Hub repo id (converted once
            into the cache, type ``quant``), or a name from the local store.
        n_ctx: context size in tokens; None = the model's trained context. More than
            the trained context is refused unless ``rope_scaling`` ("linear" or "yarn") is given.
        kv_cache: "auto" (the tuned type if it fits, else the static rule: f16 when it fits, quantized
            only when memory requires it), "f16", "q8_0", "q4_0", or "K/V" like "q8_0/f16".
        threads: CPU threads; None = the tuned decode and prefill thread counts, else physical cores.
        gpu_layers: layers to offload: "auto" = all where the build supports GPU offload (Metal), else 0;
            a negative number = all. ``Model.gpu_layers`` is the resolved count (all = n_layer + 1).
        flash_attn: "auto" (the tuned setting, else on), True or False. A quantized V cache turns it on.
        mmap, mlock: map the weights instead of reading them; lock them in RAM.
        seed: default sampling seed (None = random per call unless the call gives one).
        n_batch, n_ubatch: prompt tokens per llama_decode call / per compute pass (n_ubatch None =
            the tuned value, else 512).

    Settings left on their defaults come from the model's tuned profile when ``edgekit tune`` made
    one for this device, file and llama.cpp build (docs/tune.md); explicit arguments always win,
    and the memory plan has the last word. ``Model.plan.tuned`` shows what was used, and
    ``Model.plan.note`` says why a profile was ignored.
        progress: ``progress(stage, done, total)`` for conversion and loading.
        chat_template: a chat template (Jinja text) to use instead of the one in the GGUF,
            e.g. for a model converted without one.
        speculative: "auto" (the default: the draft model if one is given, else prompt lookup),
            "ngram" (prompt lookup) or "off" (one token at a time). Drafted tokens are verified
            in one batch; the output stays what one-token-at-a-time decoding gives. How many
            tokens to draft, if any, follows the measured acceptance and the cost of verifying
            a batch, so text that doesn't repeat its prompt decodes at plain speed
            (docs/speculative.md). ``Sampling(speculative=...)`` overrides it for one call.
        draft: a draft model (resolved like ``model``; same vocabulary as the target) that
            proposes tokens for ``speculative="auto"``. It gets its own f16 KV cache of n_ctx tokens.
        slots: sequences decoded at once (:meth:`Model.start`, or generate/stream from several
            threads): each has its own ``n_ctx`` of KV cache, so the cache is ``slots`` x ``n_ctx``.

    Raises:
        SourceError, CorruptFile, UnsupportedModel: the model can't be found or read.
        OutOfMemory: the plan doesn't fit; the message says which n_ctx would.
        ModelLoadError: llama.cpp refused the file or the context.
        KeyboardInterrupt: Ctrl-C while the weights loaded (the load is cancelled, nothing kept).
    """
    from edgekit.store import DEFAULT_QUANT
    from edgekit.store import resolve as resolve_model

    check_mode(speculative)
    path = resolve_model(model, quant=quant or DEFAULT_QUANT, progress=progress)
    info = check(path)
    if n_ctx is not None and n_ctx > info.n_ctx_train and not rope_scaling:
        raise ContextOverflow(
            f"n_ctx {n_ctx} is above the model's trained context of {info.n_ctx_train} tokens",
            "Use a smaller n_ctx, or pass rope_scaling='yarn' (or 'linear') to stretch it on purpose.",
            needed=n_ctx, available=info.n_ctx_train)
    if rope_scaling not in (None, "linear", "yarn"):
        raise EdgekitError(f"rope_scaling must be 'linear' or 'yarn', got {rope_scaling!r}")
    if not 1 <= slots <= min(MAX_SLOTS, n_batch):
        raise EdgekitError(f"slots must lie in 1..{min(MAX_SLOTS, n_batch)}, got {slots}",
                           "Every slot needs a row in each batch: at most n_batch (and llama.cpp's 256) slots.")
    p, n_threads, threads_batch, n_ubatch = _resolve_settings(info, n_ctx, kv_cache, flash_attn, threads, n_batch,
                                                              n_ubatch, slots)
    require_fit(p)
    from edgekit.model import Model

    draft_path = resolve_model(draft, quant=quant or DEFAULT_QUANT, progress=progress) if draft is not None else None
    n_gpu = resolve_gpu_layers(gpu_layers, info.n_layer)
    m = Model(info, p, threads=n_threads, gpu_layers=n_gpu, mmap=mmap, mlock=mlock, seed=seed, n_batch=n_batch,
              n_ubatch=n_ubatch, rope_scaling=rope_scaling, progress=progress, chat_template=chat_template,
              speculative=speculative)
    if threads_batch != n_threads:  # the Model sets one count for both phases; the profile picked each
        _llama.lib().llama_set_n_threads(m.llama_context, n_threads, threads_batch)
    if draft_path is not None:
        from edgekit.draft import DraftModel

        try:
            m.attach_draft(DraftModel(draft_path, target_vocab=_llama.lib().llama_model_get_vocab(m.llama_model),
                                      target_size=_llama.lib().llama_model_size(m.llama_model),
                                      target_name=path.name, n_ctx=m.n_ctx, threads=n_threads, n_seq_max=m.slots,
                                      gpu_layers=n_gpu, n_batch=n_batch))
        except BaseException:
            m.close()
            raise
    return m


def _resolve_settings(info: ModelInfo, n_ctx: int | None, kv_cache: str, flash_attn: bool | str,
                      threads: int | None, n_batch: int, n_ubatch: int | None,
                      slots: int = 1) -> tuple[Plan, int, int, int]:
    """The memory plan, decode threads, prefill threads and n_ubatch: explicit arguments, else the
    tuned profile's settings, else the static rule; a tuned KV type that doesn't fit falls back."""
    from dataclasses import replace

    from edgekit.llama_facts import is_quantized
    from edgekit.profile import lookup

    profile, note = lookup(info.path)
    tuned = profile.settings if profile is not None else None
    if n_ubatch is None:
        n_ubatch = tuned.n_ubatch if tuned else 512
    if n_batch < 1 or n_ubatch < 1:
        raise EdgekitError("n_batch and n_ubatch must be positive")
    kv, fa = kv_cache, flash_attn
    if tuned and flash_attn == "auto":
        fa = tuned.flash_attn
    use_kv = tuned and kv_cache == "auto" and not (fa is False and is_quantized(tuned.type_v))
    if use_kv:
        kv = f"{tuned.type_k}/{tuned.type_v}"
    try:
        p: Plan | None = plan_info(info, n_ctx, kv, fa, min(n_ubatch, n_batch), slots=slots)
        why = f"doesn't fit n_ctx {n_ctx or info.n_ctx_train}"
    except EdgekitError as exc:
        if not use_kv:
            raise
        p, why = None, f"can't be used here ({exc.message})"
    if use_kv and (p is None or not p.fits):
        note = f"the tuned KV cache {kv} {why}; the static rule's is used"
        p = plan_info(info, n_ctx, "auto", fa, min(n_ubatch, n_batch), slots=slots)
    assert p is not None
    n_threads = int(threads) if threads else (tuned.threads if tuned else physical_cores())
    threads_batch = tuned.threads_batch if tuned and not threads else n_threads
    if tuned:
        used = {"threads": n_threads, "threads_batch": threads_batch, "flash_attn": p.flash_attn,
                "type_k": p.type_k, "type_v": p.type_v, "n_ubatch": min(n_ubatch, n_batch),
                "tuned_n_ctx": profile.n_ctx}
        p = replace(p, tuned=used, note=note)
    elif note:
        p = replace(p, note=note)
    return p, n_threads, threads_batch, n_ubatch
