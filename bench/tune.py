"""``edgekit tune``: measure which runtime settings run a model fastest on this device.

What is searched, one coordinate at a time within a time budget (docs/tune.md):

1. threads: physical cores, logical cores and, on big.LITTLE CPUs, the performance cores
   only. Prefill and decode are timed separately, so the prefill thread count
   (``n_threads_batch``) and the decode one (``n_threads``) are each picked for their phase;
2. flash attention on or off (off only with an f16 V cache, which llama.cpp requires);
3. the K/V cache types that fit the memory plan at ``n_ctx`` (f16/f16, q8_0/f16, q8_0/q8_0, q4_0/q4_0);
4. n_ubatch (128, 256, 512).

Each configuration is loaded the way the benchmark loads one (:class:`edgekit.bench.backends.Loaded`)
and timed with the benchmark's own code (:func:`edgekit.bench.measure.time_pp_tg`): prefill of
:data:`PP_TOKENS` tokens and decode of :data:`TG_TOKENS` tokens at a few depths. Per phase, the
cost of one token at depth d is fitted as ``a + b*d`` (least squares; for decode, b is at least
what reading the K and V of one more cell costs, see :func:`decode_fit`), and configurations are
ranked by the predicted time of a representative job over the whole context: a prompt that fills
the context up to ``n_ctx - G`` followed by ``G = n_ctx/8`` generated tokens, each token costed at
its own depth (the integral of ``a + b*d`` over the depths it covers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.profile import Profile, Settings, current_key, profile_path, read, write
from edgekit.progress import ProgressFn, report
from edgekit.runtime.load import DEFAULT_N_BATCH as N_BATCH
from edgekit.runtime.load import DEFAULT_N_UBATCH as N_UBATCH
from edgekit.runtime.load import static_settings as static_settings_of

__all__ = ["tune", "TuneInterrupted", "thread_candidates", "performance_cores", "Fit", "decode_fit", "job_seconds",
           "predict_ts", "KV_CANDIDATES", "UBATCH_CANDIDATES", "DEFAULT_BUDGET_S"]

DEFAULT_BUDGET_S = 120.0
KV_CANDIDATES = ("f16/f16", "q8_0/f16", "q8_0/q8_0", "q4_0/q4_0")
UBATCH_CANDIDATES = (512, 256, 128)
PP_TOKENS = 512  # as llama-bench's pp512; a full ubatch for every candidate
TG_TOKENS = 32
MIN_DEPTH = 256


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during tuning; what was measured is saved as a partial profile (``profile``, at ``path``)."""

    def __init__(self, profile: Profile, path: Path) -> None:
        super().__init__()
        self.profile, self.path = profile, path


@dataclass(frozen=True)
class Fit:
    """Seconds per token at depth d: ``a + b*d``."""

    a: float
    b: float

    def at(self, depth: float) -> float:
        return self.a + self.b * depth

    def as_dict(self) -> dict[str, float]:
        return {"a_s": self.a, "b_s": self.b}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fit:
        return cls(float(d["a_s"]), float(d["b_s"]))


def fit_line(points: list[tuple[float, float]], min_slope: float = 0.0) -> Fit:
    """Least-squares ``a + b*depth`` through (depth, seconds per token). b is kept >= ``min_slope``
    (noise can tilt it): below it, the line of that slope through the points' mean."""
    import numpy as np

    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    if len(points) >= 2 and np.ptp(x) > 0:
        (a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(x), x], axis=1), y, rcond=None)
        if b >= min_slope:
            return Fit(float(a), float(b))
    return Fit(float((y - min_slope * x).mean()), float(min_slope))


def decode_fit(points: list[tuple[float, float]], kv_cell_bytes: float, weights_bytes: float) -> Fit:
    """The decode line through ``points``, with a slope of at least what reading one more cell of
    K and V (``kv_cell_bytes``) costs at the rate a step at depth 0 reads the weights.

    Why a floor: every decode step reads the whole KV cache, but at the depths a tuning budget
    affords the cache still sits in the CPU's caches and the slope drowns in noise. On our 2-core
    Xeon, decode at depth 1024 measured no slower than at depth 0, while at 32k it ran 3x slower.
    """
    floor = kv_cell_bytes * fit_line(points).a / weights_bytes if weights_bytes > 0 else 0.0
    return fit_line(points, min_slope=floor)


def job_shape(n_ctx: int) -> tuple[int, int]:
    """(prompt tokens, generated tokens) of the representative job for ``n_ctx``."""
    gen = max(16, n_ctx // 8)
    return n_ctx - gen, gen


def job_seconds(pp: Fit, tg: Fit, n_ctx: int) -> tuple[float, float]:
    """Predicted (prefill, decode) seconds of the representative job: integrals of the fits over depth."""
    prompt, gen = job_shape(n_ctx)
    prefill = pp.a * prompt + pp.b * prompt**2 / 2
    decode = tg.a * gen + tg.b * (prompt * gen + gen**2 / 2)
    return prefill, decode


def predict_ts(fit: Fit, depth: int) -> float:
    """Predicted tokens per second at ``depth``."""
    return 1.0 / fit.at(depth) if fit.at(depth) > 0 else 0.0


# -- the search space ----------------------------------------------------------------------------------------

def performance_cores(max_freqs: list[int]) -> int | None:
    """How many cores belong to the fastest cluster, when cpufreq shows more than one cluster."""
    if len(set(max_freqs)) < 2:
        return None
    top = max(max_freqs)
    return sum(1 for f in max_freqs if f == top)


def _cpufreq_max() -> list[int]:
    """Each logical CPU's highest frequency (kHz) from Linux cpufreq; empty where unavailable."""
    freqs = []
    for d in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*")):
        try:
            freqs.append(int((d / "cpufreq" / "cpuinfo_max_freq").read_text()))
        except (OSError, ValueError):
            return []
    return freqs


def thread_candidates() -> list[int]:
    """Physical cores, logical cores and the performance cores of a big.LITTLE CPU, without repeats."""
    import os

    import psutil

    from edgekit.llama_facts import physical_cores

    found = [physical_cores(), psutil.cpu_count(logical=True) or os.cpu_count() or 1]
    perf = performance_cores(_cpufreq_max())
    if perf:
        found.append(perf)
    return sorted(set(found), reverse=True)


# -- measuring -----------------------------------------------------------------------------------------------

class _Tuner:
    def __init__(self, path: Path, info: Any, n_ctx: int, budget_s: float, progress: ProgressFn | None,
                 previous: Profile | None, key: dict[str, Any]) -> None:
        self.path, self.info, self.n_ctx, self.budget_s, self.progress = path, info, n_ctx, budget_s, progress
        self.t0 = time.monotonic()
        self.key = key
        self.entries: list[dict[str, Any]] = []
        self.reused = {self._key_of(e): e for e in (previous.measured if previous else [])}
        self.depths: list[int] = list(previous.depths) if previous else []
        self.not_measured: list[str] = []
        self.cost_s = 0.0  # seconds the last configuration took, to plan the next
        self.states: dict[tuple[str, str, bool], Any] = {}  # filled depths, shared by configs that can take them
        self.best: Settings | None = None
        self.best_entry: dict[str, Any] | None = None
        self.planned = int(budget_s)  # the progress bar's total: planned seconds, refined as timings come in
        self.planned_configs = self.core_configs = self.core_fills = 1

    @staticmethod
    def _key_of(e: dict[str, Any]) -> tuple:
        return (e["threads"], e["threads_batch"], e["flash_attn"], e["type_k"], e["type_v"], e["n_ubatch"])

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def tick(self) -> None:
        total = max(self.planned, int(self.elapsed()) + 1)
        report(self.progress, "tune", min(int(self.elapsed()), total), total)

    def fits(self, kv: str, flash_attn: bool, n_ubatch: int) -> Any:
        from edgekit.errors import EdgekitError
        from edgekit.planner import plan_info

        try:
            p = plan_info(self.info, self.n_ctx, kv, flash_attn, n_ubatch)
        except EdgekitError:  # e.g. a quantized cache on heads that aren't whole blocks
            return None
        return p if p.fits else None

    def _load(self, cfg: Settings, n_ctx: int) -> Any:
        from edgekit.bench.backends import Loaded

        loaded = Loaded(str(self.path), cfg.type_k, cfg.type_v, cfg.flash_attn, cfg.threads, n_ctx, "edgekit",
                        N_BATCH, cfg.n_ubatch, "auto")
        # A short warm-up (pages of the weights, llama.cpp's threads): not a full test, to save the budget.
        loaded.ctx.clear()
        loaded.ctx.prompt(32, N_BATCH)
        loaded.ctx.gen(1)
        return loaded

    def measure(self, cfg: Settings, threads_list: list[int] | None = None) -> list[dict[str, Any]]:
        """Time ``cfg`` (for each of ``threads_list`` if given, all on one load); one entry per thread count."""
        from edgekit.bench import measure

        variants = [replace(cfg, threads=t, threads_batch=t) for t in threads_list] if threads_list else [cfg]
        out: list[dict[str, Any]] = []
        todo: list[Settings] = []
        for v in variants:
            old = self.reused.get(self._key_of(v.__dict__))
            if old is None:
                todo.append(v)
            else:
                out.append(old)
                if old not in self.entries:
                    self.entries.append(old)
        if not todo:
            return out
        started = self.elapsed()
        loaded = self._load(cfg, -(-(max(self.depths) + PP_TOKENS + TG_TOKENS + 64) // 256) * 256)
        try:
            share = (loaded.type_k, loaded.type_v, loaded.flash_attn)
            loaded.ctx.depth_state = self.states.get(share)
            for v in todo:
                loaded.ctx.set_threads(v.threads, v.threads_batch)
                v = replace(v, type_k=loaded.type_k, type_v=loaded.type_v, flash_attn=loaded.flash_attn)
                pp_pts: list[tuple[float, float]] = []
                tg_pts: list[tuple[float, float]] = []
                for d in self.depths:
                    ns = measure.time_pp_tg(loaded.ctx, n_prompt=PP_TOKENS, n_gen=0, n_depth=d, n_batch=N_BATCH,
                                            reps=1, warmup=False)
                    pp_pts.append((d + PP_TOKENS / 2, ns[0] / 1e9 / PP_TOKENS))
                    self.tick()
                    ns = measure.time_pp_tg(loaded.ctx, n_prompt=0, n_gen=TG_TOKENS, n_depth=d, n_batch=N_BATCH,
                                            reps=1, warmup=False)
                    tg_pts.append((d + TG_TOKENS / 2, ns[0] / 1e9 / TG_TOKENS))
                    self.tick()
                entry = self._entry(v, pp_pts, tg_pts)
                self.entries.append(entry)
                out.append(entry)
            self.states[share] = loaded.ctx.depth_state
        finally:
            loaded.close()
        self.cost_s = (self.elapsed() - started) / len(todo)
        left = max(0, self.planned_configs - len(self.entries))
        self.planned = int(min(self.budget_s, self.elapsed() + self.cost_s * left))
        return out

    def _entry(self, cfg: Settings, pp_pts: list[tuple[float, float]], tg_pts: list[tuple[float, float]]
               ) -> dict[str, Any]:
        from edgekit.planner import kv_bytes

        pp = fit_line(pp_pts)
        tg = decode_fit(tg_pts, kv_bytes(self.info, 1, cfg.type_k, cfg.type_v), self.info.weights_bytes)
        prefill, decode = job_seconds(pp, tg, self.n_ctx)
        return {**cfg.__dict__, "pp": {**pp.as_dict(), "points": pp_pts}, "tg": {**tg.as_dict(), "points": tg_pts},
                "job_prefill_s": prefill, "job_decode_s": decode, "job_s": prefill + decode}

    def choose_depths(self, base: Settings) -> None:
        """Pick the depths from a short timing at depth 0, so the configurations of the first three
        stages (threads, flash attention, KV types: each fills its own cache) fit the budget."""
        from edgekit.bench import measure

        if self.depths:
            return
        started = self.elapsed()
        loaded = self._load(base, 256)
        try:
            pp = measure.time_pp_tg(loaded.ctx, n_prompt=128, n_gen=0, n_depth=0, n_batch=N_BATCH, reps=1,
                                    warmup=False)[0] / 1e9 / 128
            tg = measure.time_pp_tg(loaded.ctx, n_prompt=0, n_gen=8, n_depth=0, n_batch=N_BATCH, reps=1,
                                    warmup=False)[0] / 1e9 / 8
        finally:
            loaded.close()
        load_s = self.elapsed() - started - 128 * pp - 8 * tg
        unit = PP_TOKENS * pp + TG_TOKENS * tg  # one depth's two tests at depth 0
        left = max(0.0, 0.85 * self.budget_s - self.elapsed())
        # Deeper tests cost more than at depth 0: the 1.5 below is that margin, for the tests and the fills.
        fixed = self.core_configs * (load_s + 2 * 1.5 * unit)
        depth = int((left - fixed) / (self.core_fills * 1.5 * pp)) if left > fixed else 0
        limit = max(0, self.n_ctx - PP_TOKENS - TG_TOKENS)
        depth = min(limit, self.n_ctx // 4, max(MIN_DEPTH, depth // 256 * 256))
        three = depth >= 2048 and left > fixed + self.core_configs * 1.5 * unit + self.core_fills * 1.5 * pp * depth
        self.depths = [0, depth // 2 // 256 * 256, depth] if three else [0, depth] if depth > 0 else [0]
        self.planned = int(min(self.budget_s, self.elapsed() + self.planned_configs * (load_s + 3 * unit)
                               + self.core_fills * 1.5 * pp * depth))

    def affordable(self) -> bool:
        return self.elapsed() + self.cost_s <= self.budget_s

    def keep_state_of(self, cfg: Settings) -> None:
        """Drop the filled caches no later configuration can take over (they hold the whole KV cache)."""
        self.states = {k: v for k, v in self.states.items() if k == (cfg.type_k, cfg.type_v, cfg.flash_attn)}




def tune(model: str | Path, *, n_ctx: int | None = None, budget_s: float = DEFAULT_BUDGET_S,
         threads: Sequence[int] | None = None, progress: ProgressFn | None = None) -> Profile:
    """Measure the fastest runtime settings for ``model`` on this device and save them as its profile.

    Args:
        model: a GGUF path or anything :func:`edgekit.load` accepts.
        n_ctx: the context the settings are for (KV types must fit it; depths are chosen from it);
            None = the model's trained context.
        budget_s: time budget in seconds; tuning stops when it is spent and lists what it didn't measure.
        threads: the thread counts to try; None = :func:`thread_candidates`.
        progress: ``progress("tune", done_s, planned_s)``.

    Returns the saved :class:`~edgekit.profile.Profile`. A partial profile left by an interrupted
    run with the same key is continued (its measurements are kept).

    Raises:
        TuneInterrupted: Ctrl-C; what was measured is saved, marked partial.
        OutOfMemory: not even the static rule's settings fit ``n_ctx``.
    """
    from edgekit.errors import EdgekitError
    from edgekit.gguf_check import check
    from edgekit.llama_facts import physical_cores
    from edgekit.planner import plan_info, require_fit
    from edgekit.store import resolve

    path = resolve(model)
    info = check(path)
    n_ctx = int(n_ctx or info.n_ctx_train)
    require_fit(plan_info(info, n_ctx, "auto", "auto", N_UBATCH))
    key = current_key(path)
    where = profile_path(path)
    old = read(where)
    previous = old if old and old.partial and old.key == key and old.n_ctx == n_ctx else None
    tuner = _Tuner(path, info, n_ctx, float(budget_s), progress, previous, key)
    threads = sorted({int(t) for t in threads}, reverse=True) if threads else thread_candidates()
    if threads[-1] < 1:
        raise EdgekitError("thread counts must be at least 1")
    base = static_settings_of(info, n_ctx, physical_cores() if physical_cores() in threads else threads[0])
    tuner.planned_configs, tuner.core_configs, tuner.core_fills = _count_configs(tuner, base, threads)
    try:
        _search(tuner, base, threads)
    except KeyboardInterrupt:
        profile = _profile(tuner, path, partial=True)
        raise TuneInterrupted(profile, write(profile, where)) from None
    profile = _profile(tuner, path, partial=False)
    write(profile, where)
    done = max(tuner.planned, int(tuner.elapsed()))
    report(progress, "tune", done, done)
    return profile


def _count_configs(tuner: _Tuner, base: Settings, threads: list[int]) -> tuple[int, int, int]:
    """(all configurations, those of the first three stages, the cache fills those need)."""
    fa = 1 if tuner.fits(base.kv, not base.flash_attn, base.n_ubatch) and not _quantized_v(base.kv) else 0
    kv = sum(1 for c in KV_CANDIDATES if c != base.kv and tuner.fits(c, "auto", base.n_ubatch))
    ub = sum(1 for u in UBATCH_CANDIDATES if u != base.n_ubatch)
    core = len(threads) + fa + kv
    return core + ub, core, 1 + fa + kv


def _quantized_v(kv: str) -> bool:
    from edgekit.llama_facts import is_quantized

    return is_quantized(kv.split("/")[1])


def _search(tuner: _Tuner, base: Settings, threads: list[int]) -> None:
    """Coordinate search: threads, then flash attention, then the KV types, then n_ubatch."""
    tuner.choose_depths(base)
    by_job: Callable[[dict[str, Any]], float] = lambda e: e["job_s"]  # noqa: E731

    # 1. threads: each count times both phases; each phase keeps its own best.
    entries = tuner.measure(base, threads)
    pp_best = min(entries, key=lambda e: e["job_prefill_s"])
    tg_best = min(entries, key=lambda e: e["job_decode_s"])
    best = replace(base, threads=tg_best["threads"], threads_batch=pp_best["threads_batch"])
    combined = tuner._entry(best, [tuple(p) for p in pp_best["pp"]["points"]], [tuple(p) for p in tg_best["tg"]["points"]])
    tuner.best, tuner.best_entry, best_entry = best, combined, combined

    def stage(name: str, candidates: list[Settings]) -> None:
        nonlocal best, best_entry
        for cfg in candidates:
            if not tuner.affordable():
                tuner.not_measured.append(f"{name}: {cfg.describe()}")
                continue
            entry = tuner.measure(cfg)[0]
            if by_job(entry) < by_job(best_entry):
                best, best_entry = Settings(**{k: entry[k] for k in Settings.__dataclass_fields__}), entry
                tuner.best, tuner.best_entry = best, entry
            tuner.keep_state_of(best)

    # 2. flash attention (off needs an f16 V cache; it also has to fit: the score buffer grows with n_ctx)
    if not _quantized_v(best.kv) and tuner.fits(best.kv, not best.flash_attn, best.n_ubatch):
        stage("flash attention", [replace(best, flash_attn=not best.flash_attn)])
    # 3. KV cache types that fit n_ctx (a quantized V cache turns flash attention on)
    kvs = [kv for kv in KV_CANDIDATES if kv != best.kv and tuner.fits(kv, best.flash_attn or _quantized_v(kv), best.n_ubatch)]
    stage("KV cache", [replace(best, type_k=kv.split("/")[0], type_v=kv.split("/")[1],
                               flash_attn=best.flash_attn or _quantized_v(kv)) for kv in kvs])
    # 4. n_ubatch
    ubs = [ub for ub in UBATCH_CANDIDATES if ub != best.n_ubatch and tuner.fits(best.kv, best.flash_attn, ub)]
    stage("n_ubatch", [replace(best, n_ubatch=ub) for ub in ubs])


def _profile(tuner: _Tuner, path: Path, partial: bool) -> Profile:
    best = tuner.best
    prompt, gen = job_shape(tuner.n_ctx)
    measured = list(tuner.entries)
    best_entry = tuner.best_entry
    return Profile(
        key=tuner.key, model=str(path), n_ctx=tuner.n_ctx,
        settings=best,
        partial=partial, job={"prompt_tokens": prompt, "gen_tokens": gen, "best": best_entry},
        depths=list(tuner.depths), measured=measured, not_measured=list(tuner.not_measured),
        budget_s=tuner.budget_s, elapsed_s=round(tuner.elapsed(), 2),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


# -- reading a profile back ----------------------------------------------------------------------------------

def static_settings(model: str | Path, n_ctx: int) -> Settings:
    """What :func:`edgekit.load` uses without a profile (the static rule) at ``n_ctx``."""
    from edgekit.gguf_check import check
    from edgekit.store import resolve

    return static_settings_of(check(resolve(model)), n_ctx)


def _entry_for(profile: Profile, s: Settings) -> dict[str, Any] | None:
    if profile.settings == s and profile.job.get("best"):
        return profile.job["best"]
    want = s.as_dict()
    return next((e for e in profile.measured if all(e.get(k) == v for k, v in want.items())), None)


def compare(profile: Profile, static: Settings, depths: list[int] | None = None) -> dict[str, Any]:
    """The profile against the static rule: settings side by side and predicted tok/s at a few depths.

    Returns ``{"settings": [{"setting", "static", "tuned"}], "predicted": [{"depth", "pp_static",
    "pp_tuned", "tg_static", "tg_tuned"}], "job_s": {"static", "tuned"}}``; a prediction is None
    where that configuration wasn't measured.
    """
    tuned = profile.settings
    rows = [{"setting": k, "static": v, "tuned": getattr(tuned, k) if tuned else None}
            for k, v in static.as_dict().items()]
    fits = {}
    for name, s in (("static", static), ("tuned", tuned)):
        e = _entry_for(profile, s) if s else None
        fits[name] = (Fit.from_dict(e["pp"]), Fit.from_dict(e["tg"]), e["job_s"]) if e else None
    prompt, _ = job_shape(profile.n_ctx)
    depths = depths or sorted({0, min(4096, prompt), profile.n_ctx // 2, prompt})
    predicted = []
    for d in depths:
        row: dict[str, Any] = {"depth": d}
        for name in ("static", "tuned"):
            f = fits[name]
            row[f"pp_{name}"] = predict_ts(f[0], d) if f else None
            row[f"tg_{name}"] = predict_ts(f[1], d) if f else None
        predicted.append(row)
    job = {name: (f[2] if f else None) for name, f in fits.items()}
    return {"settings": rows, "predicted": predicted, "job_s": job}
