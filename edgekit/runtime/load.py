"""Loading: :func:`load` resolves the model and the options (explicit arguments, the tuned profile,
the static rule) into a memory plan, then builds a :class:`~edgekit.Model` on llama.cpp's handles
(:mod:`edgekit.llama_handles`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgekit import _llama
from edgekit.errors import ContextOverflow, EdgekitError
from edgekit.gguf_check import ModelInfo, check
from edgekit.llama_facts import physical_cores, resolve_gpu_layers
from edgekit.planner import Plan, plan_info, require_fit
from edgekit.profile import Settings
from edgekit.progress import ProgressFn
from edgekit.runtime.speculative import check_mode

if TYPE_CHECKING:
    from edgekit.runtime.model import Model
    from edgekit.runtime.prompt_cache import PromptCache

# llama.cpp's LLAMA_MAX_SEQ: the most sequences one context can hold.
MAX_SLOTS = 256
# The static rule's batch sizes: prompt tokens per llama_decode call, and per compute pass.
DEFAULT_N_BATCH = 512
DEFAULT_N_UBATCH = 512


def load(model: str | Path, *, n_ctx: int | None = None, kv_cache: str = "auto", threads: int | None = None,
         gpu_layers: int | str = "auto", flash_attn: bool | str = "auto", mmap: bool = True, mlock: bool = False,
         seed: int | None = None, n_batch: int = DEFAULT_N_BATCH, n_ubatch: int | None = None, rope_scaling: str | None = None,
         quant: str | None = None, progress: ProgressFn | None = None, chat_template: str | None = None,
         speculative: str = "auto", slots: int = 1, draft: str | Path | None = None,
         prompt_cache: str | Path | None = "auto", prompt_cache_size: int | str | None = None) -> Model:
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
        prompt_cache: the persistent prompt cache (docs/prompt-cache.md): long prompts' KV kept on
            disk, so a new process doesn't prefill them again. "auto" = ``EDGEKIT_PROMPT_CACHE``
            (``off`` or a directory) if set, else ``prompts/`` in the user cache dir; a directory;
            or "off"/None. A directory that can't be used turns it off with a warning.
        prompt_cache_size: its disk budget (bytes, or "500M", "2G"); None = 2 GiB or a tenth of
            the free space, whichever is smaller. The least recently used snapshots go first.

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
    cache, p = _prompt_cache(path, p, prompt_cache, prompt_cache_size, rope_scaling)
    from edgekit.runtime.model import Model

    draft_path = resolve_model(draft, quant=quant or DEFAULT_QUANT, progress=progress) if draft is not None else None
    n_gpu = resolve_gpu_layers(gpu_layers, info.n_layer)
    m = Model(info, p, threads=n_threads, gpu_layers=n_gpu, mmap=mmap, mlock=mlock, seed=seed, n_batch=n_batch,
              n_ubatch=n_ubatch, rope_scaling=rope_scaling, progress=progress, chat_template=chat_template,
              speculative=speculative)
    if threads_batch != n_threads:  # the Model sets one count for both phases; the profile picked each
        _llama.lib().llama_set_n_threads(m.llama_context, n_threads, threads_batch)
    if cache is not None:
        m.attach_prompt_cache(cache)
    if draft_path is not None:
        from edgekit.runtime.draft import DraftModel

        try:
            m.attach_draft(DraftModel(draft_path, target_vocab=_llama.lib().llama_model_get_vocab(m.llama_model),
                                      target_size=_llama.lib().llama_model_size(m.llama_model),
                                      target_name=path.name, n_ctx=m.n_ctx, threads=n_threads, n_seq_max=m.slots,
                                      gpu_layers=n_gpu, n_batch=n_batch))
        except BaseException:
            m.close()
            raise
    return m


def _prompt_cache(path: Path, p: Plan, setting: str | Path | None, size: int | str | None,
                  rope_scaling: str | None) -> tuple[PromptCache | None, Plan]:
    """The model's persistent prompt cache (None when off or unusable: one warning) and the plan naming it."""
    import warnings
    from dataclasses import replace

    from edgekit.errors import PromptCacheWarning
    from edgekit.runtime.prompt_cache import PromptCache, identity_key, parse_size, resolve_dir

    directory = resolve_dir(setting)
    if directory is None:
        return None, p
    budget = parse_size(size, directory)
    rope = {"scaling": rope_scaling, "n_ctx": p.n_ctx} if rope_scaling else None
    try:
        key = identity_key(path, type_k=p.type_k, type_v=p.type_v, flash_attn=p.flash_attn, rope=rope, slots=p.slots)
        cache = PromptCache(directory, budget, key, model_file=path.name)
    except EdgekitError as exc:
        warnings.warn(f"prompt cache turned off: {exc}", PromptCacheWarning, stacklevel=3)
        return None, p
    return cache, replace(p, prompt_cache=str(directory), prompt_cache_bytes=budget)


def static_settings(info: ModelInfo, n_ctx: int | None = None, threads: int | None = None) -> Settings:
    """The static rule: what :func:`load` uses without a tuned profile or explicit arguments, for ``info``
    at ``n_ctx`` (default: the trained context); ``threads`` default: the physical cores."""
    p = plan_info(info, n_ctx, "auto", "auto", DEFAULT_N_UBATCH)
    n = threads or physical_cores()
    return Settings(n, n, p.flash_attn, p.type_k, p.type_v, DEFAULT_N_UBATCH)


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
        n_ubatch = tuned.n_ubatch if tuned else DEFAULT_N_UBATCH
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
