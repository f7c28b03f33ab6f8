"""The memory planner: what a model needs at a given context, before anything is allocated.

total = weights (tensor bytes, mmapped and all touched while decoding)
      + KV cache (slots x n_ctx x layers x KV heads x (K dim x K type bytes + V dim x V type bytes))
      + compute buffers (activations of one ubatch; without flash attention also the
        n_ubatch x n_ctx x heads f32 attention scores, twice: the scores and their softmax)
      + runtime overhead (interpreter, llama.cpp, vocabulary tables)

``slots`` sequences decoded at once each get their own n_ctx of KV cache (a stream of their
own: no sequence can crowd out another), so the KV term is per slot; ``n_ctx`` is always
what ONE sequence can use.

The compute and overhead terms are calibrated against peak RSS measured with
llama.cpp (see tests/test_plan.py); the KV term is exact (llama.cpp allocates
and clears the whole cache up front).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.errors import EdgekitError, OutOfMemory
from edgekit.gguf_check import ModelInfo
from edgekit.llama_facts import (
    CTX_ALIGN,
    KV_CACHE_TYPES,
    block_size,
    is_quantized,
    kv_bytes_per_token,
    kv_bytes_per_value,
)

MiB = 1 << 20
# kv_cache="auto" tries these in order and takes the first that fits: an f16 cache first,
# quantized types only when memory requires them, largest (least lossy) first. Measured with
# llama-bench on the 0.5B Q4_0, 2 threads, two interleaved rounds (docs/memory.md, "Which KV
# cache is fastest"): a q8_0 K cache cut pp512 at depth 4096 to 0.15-0.42x of f16's on both our
# 2-core machines (AMD EPYC and Intel Xeon), and was no faster to decode; the old "q8_0/f16
# first" came from a decode-only measurement. Flash attention stays on ("auto"): it was faster
# for prefill on both machines and keeps the 32k plan small (no n_ubatch x n_ctx score buffer),
# though on the Xeon it halved decode at depth 4096: the kind of device difference tuning measures.
AUTO_ORDER: tuple[tuple[str, str], ...] = (("f16", "f16"), ("q8_0", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"))
# Calibrated constants (bytes). They are checked by tests/test_plan.py, which loads
# SmolLM2-135M in a fresh process at n_ctx 4096 (f16 KV) and 32768 (q8_0/f16), prefills a
# 512-token ubatch, and requires the plan to be within 15% of the peak RSS (VmHWM).
# Process baseline: a fresh Python 3.11 with edgekit, numpy and llama.cpp's libraries loaded
# and the backend initialised peaks at about 41 MiB (measured 2026-12-03 on an Intel Xeon,
# llama-cpp-python 0.3.36); the other 27 MiB is what that fit needed for allocations the
# weights, KV and compute terms don't model.
OVERHEAD_BASE = 68 * MiB
# llama.cpp's token and merge tables: loading only the vocabulary (vocab_only) grew peak RSS
# by 18.9 MB for SmolLM2's 49152 tokens and 52.5 MB for Qwen2's 151936 (384 and 345 bytes a
# token, measured the same way); 400 keeps the plan on the safe side.
OVERHEAD_PER_VOCAB = 400
# f32 activations one layer keeps alive per ubatch token, in units of n_embd (residual, its
# norm, Q, K, V, the attention output and its projection: about 8) and of n_ff (the FFN's
# gate, up and their product: 3). An estimate from the layer's graph, checked by the test above.
ACT_FLOATS_PER_TOKEN_EMBD = 8
ACT_FLOATS_PER_TOKEN_FF = 3


@dataclass(frozen=True)
class Plan:
    """A memory plan for one model at one context size (all sizes in bytes)."""

    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    total_bytes: int
    available_bytes: int
    n_ctx: int
    type_k: str
    type_v: str
    flash_attn: bool
    fits: bool
    max_fitting_ctx: int
    n_ctx_train: int = 0
    n_ubatch: int = 512
    path: str = ""
    slots: int = 1  # sequences decoded at once, each with its own n_ctx of KV cache
    max_fitting_slots: int = 1  # the most slots that fit at this n_ctx
    # Settings taken from the model's tuned profile (edgekit tune), as Settings.as_dict(); None = the static rule.
    tuned: dict | None = None
    note: str = ""  # e.g. why a tuned profile was ignored or a tuned KV type didn't fit
    prompt_cache: str = ""  # the persistent prompt cache's directory ("" = off); set by edgekit.load
    prompt_cache_bytes: int = 0  # its disk budget

    def as_dict(self) -> dict:
        return asdict(self)

    def tuning(self) -> str:
        """``tuned: threads 2 (prefill 2), ...`` or ``untuned (static rule)``."""
        if not self.tuned:
            return "untuned (static rule)"
        t = self.tuned
        return (f"tuned: threads {t['threads']} (prefill {t['threads_batch']}), ubatch {t['n_ubatch']}, "
                f"KV {t['type_k']}/{t['type_v']}, flash attention {'on' if t['flash_attn'] else 'off'}")

    def summary(self) -> str:
        """A short human-readable breakdown, e.g. for ``edgekit chat --plan``."""

        def mib(n: int) -> str:
            return f"{n / MiB:,.0f} MiB"

        verdict = "fits" if self.fits else f"does NOT fit (max n_ctx {self.max_fitting_ctx})"
        if not self.fits and self.slots > 1:
            verdict = (f"does NOT fit (max n_ctx {self.max_fitting_ctx} with {self.slots} slots, "
                       f"or {self.max_fitting_slots} slots of {self.n_ctx})")
        size = f"{self.slots} slots x {self.n_ctx} tokens" if self.slots > 1 else f"n_ctx {self.n_ctx}"
        return (f"{size}, KV {self.type_k}/{self.type_v}, flash attention "
                f"{'on' if self.flash_attn else 'off'}: weights {mib(self.weights_bytes)} + KV {mib(self.kv_bytes)}"
                f" + compute {mib(self.compute_bytes)} + overhead {mib(self.overhead_bytes)} = "
                f"{mib(self.total_bytes)} of {mib(self.available_bytes)} available; {verdict}; {self.tuning()}"
                + (f" ({self.note})" if self.note else "") + f"; {self.cache_summary()}")

    def cache_summary(self) -> str:
        """``prompt cache DIR (budget N MiB)`` or ``prompt cache off``."""
        if not self.prompt_cache:
            return "prompt cache off"
        return f"prompt cache {self.prompt_cache} (budget {self.prompt_cache_bytes / MiB:,.0f} MiB)"


def parse_kv_cache(kv_cache: str) -> list[tuple[str, str]]:
    """Candidate (type_k, type_v) pairs for a ``kv_cache`` setting."""
    value = (kv_cache or "auto").lower().strip()
    if value == "auto":
        return list(AUTO_ORDER)
    k, _, v = value.partition("/")
    v = v or k
    for t in (k, v):
        if t not in KV_CACHE_TYPES:
            raise EdgekitError(f"unknown KV cache type {t!r}",
                               f"Use auto, one of {', '.join(KV_CACHE_TYPES)}, or a K/V pair like q8_0/f16.")
    return [(k, v)]


def available_memory() -> int:
    """Bytes the process can still use: the OS's available memory, capped by a cgroup limit."""
    import psutil

    avail = int(psutil.virtual_memory().available)
    try:  # containers (cgroup v2): the limit may be far below the host's memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def kv_bytes(info: ModelInfo, n_ctx: int, type_k: str, type_v: str) -> int:
    return int(n_ctx * kv_bytes_per_token(info.kv_values_per_token(), type_k, type_v))


def compute_bytes(info: ModelInfo, n_ctx: int, n_ubatch: int, flash_attn: bool, slots: int = 1) -> int:
    """Compute-buffer bytes touched at full depth: one ubatch of activations, the attention
    mask (ubatch x n_ctx; f16 with flash attention, else f32), the output row of logits,
    and without flash attention the f32 attention scores of one layer and their softmax.

    llama.cpp reserves the buffer for the deepest graph up front, but pages become resident
    only as the cache fills: a 32k prompt on the 0.5B grows by the mask's 32 MiB (measured).
    With ``slots`` sequences the ubatch's tokens are shared out among their streams (so the
    mask and scores stay about the same), and the logits buffer holds a row per slot.
    """
    n_tok = min(n_ubatch, n_ctx)
    act = 4 * n_tok * (ACT_FLOATS_PER_TOKEN_EMBD * info.n_embd + ACT_FLOATS_PER_TOKEN_FF * info.n_ff)
    mask = (2 if flash_attn else 4) * n_tok * n_ctx
    # Without flash attention one layer's f32 scores and their softmax (a new tensor) are alive at once.
    scores = 0 if flash_attn else 2 * 4 * n_tok * n_ctx * info.n_head
    return int(act + mask + scores + 4 * info.n_vocab * max(1, slots))


def overhead_bytes(info: ModelInfo) -> int:
    return OVERHEAD_BASE + OVERHEAD_PER_VOCAB * info.n_vocab


def _total(info: ModelInfo, n_ctx: int, tk: str, tv: str, n_ubatch: int, fa: bool, slots: int = 1) -> int:
    return (info.weights_bytes + slots * kv_bytes(info, n_ctx, tk, tv)
            + compute_bytes(info, n_ctx, n_ubatch, fa, slots) + overhead_bytes(info))


def _max_ctx(info: ModelInfo, limit: int, tk: str, tv: str, n_ubatch: int, fa: bool, avail: int,
             slots: int = 1) -> int:
    lo, hi = 0, limit // CTX_ALIGN
    while lo < hi:  # largest multiple of CTX_ALIGN that fits
        mid = (lo + hi + 1) // 2
        if _total(info, mid * CTX_ALIGN, tk, tv, n_ubatch, fa, slots) <= avail:
            lo = mid
        else:
            hi = mid - 1
    return lo * CTX_ALIGN


def _max_slots(info: ModelInfo, n_ctx: int, tk: str, tv: str, n_ubatch: int, fa: bool, avail: int) -> int:
    per_slot = kv_bytes(info, n_ctx, tk, tv) + 4 * info.n_vocab
    spare = avail - _total(info, n_ctx, tk, tv, n_ubatch, fa, 0)
    return max(0, spare // per_slot) if per_slot else 0


def plan_info(info: ModelInfo, n_ctx: int | None = None, kv_cache: str = "auto", flash_attn: bool | str = "auto",
              n_ubatch: int = 512, available: int | None = None, *, slots: int = 1) -> Plan:
    """Plan for an already validated model (see :func:`plan`)."""
    n_ctx = int(n_ctx or info.n_ctx_train)
    if n_ctx < 16:
        raise EdgekitError(f"n_ctx must be at least 16, got {n_ctx}")
    if slots < 1:
        raise EdgekitError(f"slots must be at least 1, got {slots}")
    avail = available_memory() if available is None else int(available)
    candidates = parse_kv_cache(kv_cache)
    # A quantized cache row is whole blocks (32 values): the head size must be a multiple of the block.
    usable = [(k, v) for k, v in candidates
              if info.head_dim_k % block_size(k) == 0 and info.head_dim_v % block_size(v) == 0]
    if not usable:
        k, v = candidates[0]
        block = max(block_size(k), block_size(v))
        raise EdgekitError(f"a {k}/{v} KV cache needs heads of a multiple of {block} values; "
                           f"this model's are {info.head_dim_k}", "Use kv_cache='f16'.")
    candidates = usable
    if flash_attn is False:  # a quantized V cache needs flash attention in llama.cpp
        usable = [(k, v) for k, v in candidates if not is_quantized(v)]
        if not usable:
            raise EdgekitError(f"a quantized V cache ({candidates[0][1]}) needs flash attention",
                               "Use flash_attn=True (or 'auto'), or an f16 V cache.")
        candidates = usable
    chosen = None
    for tk, tv in candidates:
        fa = True if flash_attn == "auto" else bool(flash_attn)
        fa = fa or is_quantized(tv)
        total = _total(info, n_ctx, tk, tv, n_ubatch, fa, slots)
        chosen = (tk, tv, fa, total)
        if total <= avail:
            break
    assert chosen is not None
    tk, tv, fa, total = chosen
    # The largest context that fits with the smallest cache on offer.
    sk, sv = min(candidates, key=lambda kv: kv_bytes_per_value(kv[0]) + kv_bytes_per_value(kv[1]))
    sfa = fa or is_quantized(sv)
    max_ctx = _max_ctx(info, max(n_ctx, info.n_ctx_train), sk, sv, n_ubatch, sfa, avail, slots)
    max_slots = _max_slots(info, n_ctx, sk, sv, n_ubatch, sfa, avail)
    return Plan(
        weights_bytes=info.weights_bytes, kv_bytes=slots * kv_bytes(info, n_ctx, tk, tv),
        compute_bytes=compute_bytes(info, n_ctx, n_ubatch, fa, slots), overhead_bytes=overhead_bytes(info),
        total_bytes=total, available_bytes=avail, n_ctx=n_ctx, type_k=tk, type_v=tv, flash_attn=fa,
        fits=total <= avail, max_fitting_ctx=max_ctx, n_ctx_train=info.n_ctx_train, n_ubatch=n_ubatch,
        path=str(info.path), slots=slots, max_fitting_slots=max_slots,
    )


def plan(model: str | Path, n_ctx: int | None = None, kv_cache: str = "auto", flash_attn: bool | str = "auto",
         n_ubatch: int = 512, slots: int = 1) -> Plan:
    """Memory plan for ``model`` (GGUF path, HF dir, repo id or store name) at ``n_ctx`` per slot.

    ``n_ctx=None`` is the model's trained context. With ``kv_cache="auto"`` the
    fastest KV type that fits is chosen; ``Plan.fits`` says whether it does, and
    ``Plan.max_fitting_ctx`` which context would.
    """
    from edgekit.gguf_check import check
    from edgekit.store import resolve

    return plan_info(check(resolve(model)), n_ctx, kv_cache, flash_attn, n_ubatch, slots=slots)


def require_fit(p: Plan) -> None:
    """Raise :class:`OutOfMemory` with the numbers when ``p`` does not fit."""
    if p.fits:
        return
    hint = (f"Use n_ctx={p.max_fitting_ctx} or less (or a smaller KV cache type)" if p.max_fitting_ctx
            else "Use a smaller (more quantized) model file")
    if p.slots > 1:
        hint = (f"Use n_ctx={p.max_fitting_ctx} or less per slot" if p.max_fitting_ctx else "Use fewer slots")
        if p.max_fitting_slots:
            hint += f", or slots={p.max_fitting_slots} or fewer at n_ctx {p.n_ctx}"
        hint += " (or a smaller KV cache type)"
    where = f"{p.slots} slots x n_ctx {p.n_ctx}" if p.slots > 1 else f"n_ctx {p.n_ctx}"
    raise OutOfMemory(f"the model needs {p.total_bytes / MiB:,.0f} MiB at {where} "
                      f"(KV {p.type_k}/{p.type_v}), but only {p.available_bytes / MiB:,.0f} MiB is available",
                      hint + ".")
