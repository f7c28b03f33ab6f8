"""The grid sweep: every list parameter is crossed like llama-bench, each test warmed up then repeated.

:func:`run` is a generator that yields one record per finished test, so a caller
that writes each record as it arrives keeps everything completed before a Ctrl-C.
One model load serves every test with the same load settings (model, KV types,
flash attention, threads); tests run in order of depth so a filled depth is
saved once and restored for the next repetitions, as llama-bench does.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgekit.errors import BenchError
from edgekit.llama_facts import (
    CTX_ALIGN,
    KV_CACHE_TYPES,
    is_quantized,
    kv_bytes_per_token,
    physical_cores,
)
from edgekit.planner import AUTO_ORDER
from edgekit.progress import ProgressFn, report
from edgekit.runtime.load import DEFAULT_N_BATCH, DEFAULT_N_UBATCH

from . import measure, records, roofline
from .backends import Loaded

__all__ = ["Grid", "SUITES", "Case", "Group", "plan", "run", "suite_grid", "parse_kv", "ENGINES"]

ENGINES = ("edgekit", "llama-cpp-python")
TUNABLE = frozenset({"kv_cache", "threads", "flash_attn", "n_ubatch"})  # what a tuned profile may set


@dataclass(frozen=True)
class Grid:
    """What to measure. Every tuple is swept as a grid."""

    models: tuple[str, ...]
    n_prompt: tuple[int, ...] = (512,)
    n_gen: tuple[int, ...] = (128,)
    depths: tuple[int, ...] = (0,)
    # What edgekit.load() picks when memory allows ("f16" or "K/V" such as "q8_0/f16"), so a bench
    # measures what users run.
    kv_cache: tuple[str, ...] = ("/".join(AUTO_ORDER[0]),)
    threads: tuple[int, ...] = ()  # () = physical cores
    flash_attn: tuple[bool, ...] = (True,)  # as edgekit.load(flash_attn="auto")
    reps: int = 5
    warmup: bool = True
    n_batch: int = DEFAULT_N_BATCH
    n_ubatch: int = DEFAULT_N_UBATCH
    chat: bool = True
    chat_gen: int = 128
    engine: str = "edgekit"
    llama_bench: str | None = None  # path of a llama-bench binary to interleave with
    gpu_layers: int | str = "auto"  # "auto" = every layer where the build offloads (Metal), else 0
    vs_rounds: int = 2  # A-B-A-B rounds against llama-bench, so slow drift of a shared machine cancels out
    # Load settings (kv_cache, threads, flash_attn, n_ubatch) not named here come from the model's tuned
    # profile when it has a valid one (edgekit tune), as edgekit.load does; the defaults above otherwise.
    use_profile: bool = True
    explicit: frozenset[str] = frozenset()


# Suites set the grid's defaults; explicit CLI options override them.
SUITES: dict[str, dict[str, Any]] = {
    # What llama-bench does with the same -p/-n/-d: depth 0, 5 repetitions, no chat turn.
    "llama-bench": {"chat": False},
    # Under a minute for the 0.5B Q4_0 on a 2-core machine.
    "quick": {"n_prompt": (512,), "n_gen": (128,), "depths": (0, 1024), "reps": 3},
    "standard": {"n_prompt": (512,), "n_gen": (128,), "depths": (0, 4096, 16384), "reps": 5},
    # Up to 32k tokens of context (the 0.5B's training context is 32768; the depth leaves room for the test).
    "long": {"n_prompt": (512,), "n_gen": (128,), "depths": (0, 4096, 16384, 32000), "reps": 3},
}
DEFAULT_SUITE = "quick"  # `edgekit bench MODEL` with no test options


def default_suite(*test_options: object) -> str:
    """The suite when none is named: llama-bench's behaviour once -p, -n or -d is given, else the quick one."""
    return "llama-bench" if any(o is not None for o in test_options) else DEFAULT_SUITE


def suite_grid(models: Sequence[str], suite: str = DEFAULT_SUITE, **overrides: Any) -> Grid:
    """A Grid from a suite's defaults with ``overrides`` (None values ignored)."""
    if suite not in SUITES:
        raise BenchError(f"unknown suite {suite!r}", f"Use one of: {', '.join(SUITES)}.")
    base = Grid(models=tuple(models), **SUITES[suite])
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(base, **given, explicit=frozenset(given) & TUNABLE)


def parse_kv(spec: str) -> tuple[str, str]:
    """``"q8_0"`` -> (q8_0, q8_0); ``"q8_0/f16"`` -> (q8_0, f16). Unknown types raise BenchError."""
    parts = spec.lower().split("/")
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(p not in KV_CACHE_TYPES for p in parts):
        raise BenchError(f"unknown KV cache type {spec!r}",
                         f"Use one of {', '.join(KV_CACHE_TYPES)}, or K/V like q8_0/f16.")
    return parts[0], parts[1]


@dataclass(frozen=True)
class Case:
    """One test: pp (n_prompt > 0), tg (n_gen > 0) or a chat turn, at a depth."""

    test: str
    n_prompt: int
    n_gen: int
    n_depth: int


@dataclass
class Group:
    """Tests that share one model load."""

    model: str
    type_k: str
    type_v: str
    flash_attn: bool
    threads: int
    n_ctx: int
    cases: list[Case] = field(default_factory=list)
    n_ubatch: int = DEFAULT_N_UBATCH
    threads_batch: int = 0  # prefill threads when a tuned profile picked them apart from ``threads``
    tuned: dict[str, Any] | None = None  # the tuned profile's settings this group used, if any


def plan(grid: Grid) -> tuple[list[Group], list[str]]:
    """Expand the grid into load groups; also return why any combination was skipped."""
    if not grid.models:
        raise BenchError("no model given", "Pass one or more GGUF files: edgekit bench MODEL.gguf")
    if grid.reps < 1:
        raise BenchError(f"repetitions must be at least 1 (got {grid.reps})", "Pass -r 1 or more.")
    if grid.engine not in ENGINES:
        raise BenchError(f"unknown engine {grid.engine!r}", f"Use one of: {', '.join(ENGINES)}.")
    for model in grid.models:
        _check_model(model)
    threads = grid.threads or (physical_cores(),)
    if any(t < 1 for t in threads):
        raise BenchError("thread counts must be at least 1", "Pass --threads like 1,2,4.")
    depths = sorted(set(grid.depths))
    if any(d < 0 for d in depths):
        raise BenchError("depths must be 0 or more", "Pass -d like 0,4096.")
    cases = [Case("pp", p, 0, d) for d in depths for p in grid.n_prompt if p > 0]
    cases += [Case("tg", 0, n, d) for d in depths for n in grid.n_gen if n > 0]
    cases.sort(key=lambda c: c.n_depth)
    if grid.chat and grid.chat_gen > 0:
        cases.append(Case("chat", 0, grid.chat_gen, 0))
    groups: list[Group] = []
    skipped: list[str] = []
    trained = {model: _trained_ctx(model) for model in grid.models}
    for model in grid.models:
        limit = trained[model]
        for c in cases:
            if limit and c.n_depth + c.n_prompt + c.n_gen > limit:
                skipped.append(f"{Path(model).name} {records.test_name(c.test, c.n_prompt, c.n_gen, c.n_depth)}: "
                               f"needs {c.n_depth + c.n_prompt + c.n_gen} tokens of context, the model was trained "
                               f"for {limit}")
    combos = []
    for model in grid.models:
        tuned = _tuned_settings(model) if grid.use_profile and grid.engine == "edgekit" else None
        kvs, ths, fas, ub = grid.kv_cache, threads, grid.flash_attn, grid.n_ubatch
        if tuned is not None:
            kvs = kvs if "kv_cache" in grid.explicit else (f"{tuned.type_k}/{tuned.type_v}",)
            ths = ths if "threads" in grid.explicit else (tuned.threads,)
            fas = fas if "flash_attn" in grid.explicit else (tuned.flash_attn,)
            ub = ub if "n_ubatch" in grid.explicit else tuned.n_ubatch
        combos += [(model, kv, t, fa, ub, tuned) for kv, t, fa in itertools.product(kvs, ths, fas)]
    for model, kv, t, fa, ub, tuned in combos:
        type_k, type_v = parse_kv(kv)
        limit = trained[model]
        fitting = [c for c in cases if not limit or c.n_depth + c.n_prompt + c.n_gen <= limit]
        if is_quantized(type_v) and not fa:
            skipped.append(f"{Path(model).name} KV {type_k}/{type_v} with flash attention off: llama.cpp needs "
                           "flash attention for a quantized V cache")
            continue
        # Room for the deepest test plus a chat turn (its prompt is under 128 tokens), as llama.cpp pads it.
        if not fitting:
            continue
        need = max([c.n_depth + c.n_prompt + c.n_gen for c in fitting] + [128 + grid.chat_gen])
        n_ctx = -(-need // CTX_ALIGN) * CTX_ALIGN
        if limit:
            n_ctx = min(n_ctx, max(limit, need))
        tb = tuned.threads_batch if tuned is not None and "threads" not in grid.explicit else 0
        used = None if tuned is None else {**tuned.as_dict(), "type_k": type_k, "type_v": type_v, "flash_attn": fa,
                                            "threads": t, "threads_batch": tb or t, "n_ubatch": ub}
        groups.append(Group(model, type_k, type_v, fa, t, n_ctx, fitting, n_ubatch=ub, threads_batch=tb, tuned=used))
    return groups, skipped


def _tuned_settings(model: str) -> Any:
    """The tuned profile's Settings of a GGUF file (None without a valid profile)."""
    path = Path(model).expanduser()
    if not path.is_file():
        return None
    from edgekit.profile import lookup

    try:
        profile, _ = lookup(path)
    except Exception:  # an unreadable file: llama.cpp's error at load time says more
        return None
    return profile.settings if profile is not None else None


def _trained_ctx(model: str) -> int | None:
    """The model's trained context length from its GGUF header (None if it isn't a readable GGUF file)."""
    path = Path(model).expanduser()
    if not path.is_file():
        return None
    try:
        from edgekit.gguf_meta import read_header

        value = read_header(path).arch_key("context_length")
        return int(value) if value else None
    except Exception:  # llama.cpp's own error at load time says more than a second parser would
        return None


def _looks_like_path(model: str) -> bool:
    return model.endswith(".gguf") or os.sep in model or model.startswith(".")


def _check_model(model: str) -> None:
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise BenchError(f"model not found: {model}", "Pass the path of a GGUF file (or a model name edgekit knows).")
        if path.is_file() and path.suffix.lower() != ".gguf":
            raise BenchError(f"not a GGUF file: {model}", "edgekit bench measures GGUF models; convert it first.")


def _units(group: Group, grid: Grid) -> int:
    per = grid.reps + (1 if grid.warmup else 0)
    if grid.llama_bench:  # our share of the A-B rounds; llama-bench's time is not counted
        return sum(per * (max(1, grid.vs_rounds) if c.test != "chat" else 1) for c in group.cases)
    return len(group.cases) * per


# -- the sweep ---------------------------------------------------------------------------------------------

def run(grid: Grid, *, progress: ProgressFn | None = None, device: dict[str, Any] | None = None,
        bandwidth: float | None = None) -> Iterator[dict[str, Any]]:
    """Run the grid; yield one record (dict, see :mod:`edgekit.bench.records`) per finished test.

    With ``grid.llama_bench`` set, each pp/tg test is followed by the same test in llama-bench;
    its record (engine "llama-bench") is yielded right after ours, and ours carries the ratio.
    """
    groups, _ = plan(grid)
    if device is None:
        from edgekit.device import fingerprint

        device = fingerprint()
    if bandwidth is None:
        bandwidth = roofline.bandwidth(device["device_id"])
    total = sum(_units(g, grid) for g in groups)
    done = 0
    report(progress, "bench", 0, total)

    def tick() -> None:
        nonlocal done
        done += 1
        report(progress, "bench", done, total)

    for group in groups:
        loaded = Loaded(group.model, group.type_k, group.type_v, group.flash_attn, group.threads, group.n_ctx,
                        grid.engine, grid.n_batch, group.n_ubatch, grid.gpu_layers)
        if group.threads_batch and group.threads_batch != group.threads:
            loaded.ctx.set_threads(group.threads, group.threads_batch)
        try:
            for case in group.cases:
                if case.test == "chat":
                    loaded.after_raw_tests()
                if grid.llama_bench and case.test != "chat":
                    yield from _vs_llama_bench(loaded, group, grid, case, device, bandwidth, tick)
                    continue
                if grid.warmup:
                    tick()  # the warm-up is one unit of work for the ETA
                yield _run_case(loaded, group, grid, case, device, bandwidth, tick)
        finally:
            loaded.close()


def _vs_llama_bench(loaded: Loaded, group: Group, grid: Grid, case: Case, device: dict[str, Any],
                    bandwidth: float, tick: Any) -> Iterator[dict[str, Any]]:
    """Ours, llama-bench, ours, llama-bench... (``grid.vs_rounds`` rounds); yield both merged records."""
    from .llama_bench import run_case as run_llama_bench

    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for _ in range(max(1, grid.vs_rounds)):
        if grid.warmup:
            tick()
        ours.append(_run_case(loaded, group, grid, case, device, bandwidth, tick))
        theirs.append(run_llama_bench(grid.llama_bench, group, grid, case, device, loaded.gpu_layers))
    n_tokens = case.n_prompt + case.n_gen
    mine, other = _merge(ours, n_tokens), _merge(theirs, n_tokens)
    if case.test == "tg" and mine.get("ceiling_ts"):
        mine["efficiency"] = mine["avg_ts"] / mine["ceiling_ts"]
        other["efficiency"] = other["avg_ts"] / mine["ceiling_ts"]
        other.update(mem_bw_gbs=mine["mem_bw_gbs"], bytes_per_token=mine["bytes_per_token"], ceiling_ts=mine["ceiling_ts"])
    mine["llama_bench_ts"] = other["avg_ts"]
    mine["ratio_vs_llama_bench"] = mine["avg_ts"] / other["avg_ts"] if other["avg_ts"] else None
    yield mine
    yield other


def _merge(recs: list[dict[str, Any]], n_tokens: int) -> dict[str, Any]:
    """One record from several rounds of the same test: all samples, statistics recomputed."""
    merged = dict(recs[-1])
    samples = [ns for r in recs for ns in r["samples_ns"]]
    merged.update(records.stats_from_ns(samples, n_tokens), reps=len(samples))
    return merged


def _common(loaded: Loaded, group: Group, grid: Grid, case: Case, device: dict[str, Any]) -> dict[str, Any]:
    return {
        "engine": grid.engine, "test": case.test, "n_prompt": case.n_prompt, "n_gen": case.n_gen,
        "n_depth": case.n_depth, "build_commit": None, "cpu_info": device.get("cpu_model"), "gpu_info": "",
        "backends": "CPU", "model_filename": str(group.model), "model_type": loaded.model_type,
        "model_size": loaded.model_size, "model_n_params": loaded.model_n_params, "n_batch": grid.n_batch,
        "n_ubatch": group.n_ubatch, "n_threads": group.threads, "type_k": loaded.type_k, "type_v": loaded.type_v,
        "n_gpu_layers": loaded.gpu_layers, "flash_attn": int(loaded.flash_attn), "n_ctx": loaded.n_ctx, "reps": grid.reps,
        "warmup": grid.warmup, "load_s": loaded.load_s, "rss_bytes": loaded.rss, "speculative": loaded.speculative,
        "test_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "edgekit_version": device.get("edgekit"), "llama_cpp_python": device.get("llama_cpp_python"),
        "device_id": device["device_id"], "device": device,
        "tuned": group.tuned is not None, "tuned_settings": group.tuned,
    }


def _run_case(loaded: Loaded, group: Group, grid: Grid, case: Case, device: dict[str, Any], bandwidth: float,
              tick: Any) -> dict[str, Any]:
    fields = _common(loaded, group, grid, case, device)
    if case.test == "chat":
        raw = measure.time_chat(loaded.model, n_gen=case.n_gen, reps=grid.reps, warmup=grid.warmup, on_rep=tick)
        gen = raw["gen_tokens"]
        mean_gen = sum(gen) / len(gen) if gen else case.n_gen
        # avg_ts of a chat turn = answer tokens per second of end-to-end time (what the user experiences).
        stats = records.stats_from_ns(raw["e2e_ns"], round(mean_gen))
        fields.update(stats)
        fields.update(
            ttft_p50_ms=records.percentile(raw["ttft_ns"], 50) / 1e6, ttft_p95_ms=records.percentile(raw["ttft_ns"], 95) / 1e6,
            e2e_p50_ms=records.percentile(raw["e2e_ns"], 50) / 1e6, e2e_p95_ms=records.percentile(raw["e2e_ns"], 95) / 1e6,
            samples_ttft_ns=raw["ttft_ns"], samples_e2e_ns=raw["e2e_ns"], prompt_tokens=raw["prompt_tokens"],
            gen_tokens=gen, drafted_tokens=raw["drafted_tokens"], accepted_tokens=raw["accepted_tokens"],
        )
    else:
        samples = measure.time_pp_tg(loaded.ctx, n_prompt=case.n_prompt, n_gen=case.n_gen, n_depth=case.n_depth,
                                     n_batch=grid.n_batch, reps=grid.reps, warmup=grid.warmup, on_rep=tick)
        fields.update(records.stats_from_ns(samples, case.n_prompt + case.n_gen))
        if case.test == "tg":
            kv = kv_bytes_per_token(loaded.info.kv_values_per_token(), loaded.type_k, loaded.type_v)
            # Average depth over the generated tokens: the KV read grows while generating.
            per_token, ceiling = roofline.decode_ceiling(bandwidth, loaded.model_size, kv,
                                                         case.n_depth + case.n_gen // 2)
            fields.update(mem_bw_gbs=bandwidth / 1e9, bytes_per_token=int(per_token), ceiling_ts=ceiling,
                          efficiency=fields["avg_ts"] / ceiling if ceiling else None)
    fields["peak_rss_bytes"] = measure.peak_rss_bytes()
    return records.make_record(**fields)
