"""Many models in one process (issue 21's goal table): do they slow each other, and does a draft that doesn't pay cost?

Run: python -m edgekit.bench.studies.many_models [--model GGUF] [--draft GGUF] [--tokens 96] [--rounds 3]
                                                [--threads N] [--skip-draft] [--handoff-only]
     python bench/studies/many_models.py --single-stream   # with PYTHONPATH=an older checkout, too

Measures, in interleaved rounds (each figure the best and the median over rounds; ratios of best-of):

- ``alone``: greedy decode tokens/s of model A (``speculative="off"``) with no other model loaded;
- ``plus1_used`` / ``plus2_used``: the same with 1 and 2 other models loaded that have each answered a
  prompt and sit idle (the case libgomp's spin throttle hit, docs/architecture.md);
- ``two_threads``: A and a second model decoding at once from two threads, aggregate tokens/s;
- ``draft_auto`` / ``draft_plain``: ``draft=`` with a pair (default: SmolLM2 Q4_0 drafting for its
  Q8_0, a pair whose drafts don't pay on a CPU) against plain decoding of the same target, end to end
  (prefill included: the draft's own prefill is part of its cost), on 2 grounded and 2 open prompts;
- ``handoff``: the cost of handing a call to the compute thread (many no-op calls), in microseconds;
- ``--single-stream``: only model A alone, best of 3 greedy decodes, using nothing newer than
  ``edgekit.load`` and ``Model.chat``, so the same file run with ``PYTHONPATH`` set to a checkout of an
  older tree compares single-stream speed before and after a change (alternate the two, several times).

Besides speed, each decode scenario reports voluntary context switches per token summed over the
process's threads (Linux): spinning OpenMP barriers switch a few times per token, throttled ones
hundreds of times, whatever else the machine is doing. The default model is SmolLM2-135M-Instruct
Q8_0 built from its real weights (``python -m edgekit.bench.studies.speculation build``). Run it on
a quiet machine, under ``flock /tmp/bench.lock`` where others share it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def switches() -> int | None:
    """Voluntary context switches of every thread of this process so far (None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except OSError:  # the thread ended meanwhile
            pass
    return total


def _load(path: str, threads: int | None, **kw: Any) -> Any:
    import edgekit

    if "prompt_cache" not in edgekit.load.__code__.co_varnames:  # a tree from before the prompt cache
        return edgekit.load(path, n_ctx=1024, threads=threads, seed=1, **kw)
    # no disk prompt cache: a snapshot one model writes would be restored by the next, or its write
    # would land in the next scenario's timing; this study measures decoding, not the cache
    return edgekit.load(path, n_ctx=1024, threads=threads, seed=1, prompt_cache="off", **kw)


def _decode(m: Any, tokens: int) -> dict[str, Any]:
    """Greedy plain decode of ``tokens`` tokens on ``m``: decode tokens/s and switches per token."""
    m.reset()
    s0 = switches()
    c = m.chat([{"role": "user", "content": PROMPT}], temperature=0, max_tokens=tokens, speculative="off")
    s1 = switches()
    n = max(1, c.stats.gen_tokens)
    return {"tps": c.stats.decode_tps, "tokens": c.stats.gen_tokens,
            "switches_per_token": None if s0 is None or s1 is None else round((s1 - s0) / n, 1)}


def single_stream(path: str, threads: int | None, tokens: int) -> dict[str, Any]:
    """Model A alone: the best of 3 greedy decodes of ``tokens`` tokens, after a warm-up."""
    import edgekit

    with _load(path, threads) as a:
        _decode(a, 8)
        best = max((_decode(a, tokens) for _ in range(3)), key=lambda r: r["tps"])
    return {"test": "single_stream", "edgekit": str(Path(edgekit.__file__).parent), **best}


def _used_idle(path: str, threads: int | None) -> Any:
    m = _load(path, threads)
    m.generate("Hello", temperature=0, max_tokens=2, speculative="off")  # it has decoded, then sits idle
    return m


def decode_round(path: str, threads: int | None, tokens: int) -> dict[str, dict[str, Any]]:
    """One round of: A alone, A beside 1 and 2 used idle models, A and B decoding at once from two threads."""
    out: dict[str, dict[str, Any]] = {}
    with _load(path, threads) as a:
        _decode(a, 8)  # warm
        out["alone"] = _decode(a, tokens)
        others = [_used_idle(path, threads)]
        out["plus1_used"] = _decode(a, tokens)
        others.append(_used_idle(path, threads))
        out["plus2_used"] = _decode(a, tokens)
        b = others[0]
        results: list[dict[str, Any]] = [{}, {}]
        start = threading.Barrier(2)

        def work(i: int, m: Any) -> None:
            start.wait()
            m.reset()
            c = m.chat([{"role": "user", "content": PROMPT}], temperature=0, max_tokens=tokens, speculative="off")
            results[i] = {"tokens": c.stats.gen_tokens, "end": time.perf_counter()}

        threads_ = [threading.Thread(target=work, args=(i, m)) for i, m in enumerate((a, b))]
        s0, t0 = switches(), time.perf_counter()
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        wall = max(r["end"] for r in results) - t0  # both prefills included: compare with alone's e2e below
        n = sum(r["tokens"] for r in results)
        s1 = switches()
        a.reset()
        t1 = time.perf_counter()
        alone = a.chat([{"role": "user", "content": PROMPT}], temperature=0, max_tokens=tokens, speculative="off")
        alone_e2e = alone.stats.gen_tokens / (time.perf_counter() - t1)
        out["two_threads"] = {"tps": n / wall, "tokens": n, "alone_e2e_tps": alone_e2e,
                              "switches_per_token": None if s0 is None or s1 is None else round((s1 - s0) / n, 1)}
        for m in others:
            m.close()
    return out


def draft_round(target: str, draft: str, threads: int | None, tokens: int) -> dict[str, dict[str, Any]]:
    """Plain and ``draft=`` end-to-end tokens/s over 2 grounded and 2 open prompts, interleaved per prompt."""
    from edgekit.bench.studies.speculation import prompts

    system, items = prompts(limit=2)
    totals = {"draft_plain": [0, 0.0], "draft_auto": [0, 0.0]}
    drafted = accepted = 0
    with _load(target, threads) as plain, _load(target, threads, draft=draft) as spec:
        for item in items:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": item["prompt"]}]
            texts = []
            for name, m, mode in (("draft_plain", plain, "off"), ("draft_auto", spec, "auto")):
                m.reset()
                t0 = time.perf_counter()
                c = m.chat(messages, temperature=0, max_tokens=tokens, speculative=mode)
                totals[name][0] += c.stats.gen_tokens
                totals[name][1] += time.perf_counter() - t0
                texts.append(c.text)
                if mode == "auto":
                    drafted += c.stats.drafted_tokens
                    accepted += c.stats.accepted_tokens
            if texts[0] != texts[1]:
                raise SystemExit(f"the draft changed the greedy output on {item['name']}")
        draft_decodes = spec.draft.decode_calls if spec.draft is not None else 0
    return {name: {"tps": n / s, "tokens": n} for name, (n, s) in totals.items()} | {
        "draft_counts": {"drafted": drafted, "accepted": accepted, "draft_decode_calls": draft_decodes}}


def handoff(n: int = 20000) -> dict[str, float]:
    """Microseconds per no-op call handed to the compute thread (wall and CPU), and per inline call."""
    from edgekit import _compute

    def noop() -> None:
        return None

    _compute.run(noop)
    c0, t0 = os.times(), time.perf_counter()
    for _ in range(n):
        _compute.run(noop)
    wall, c1 = time.perf_counter() - t0, os.times()
    t1 = time.perf_counter()
    for _ in range(n):
        noop()
    inline = time.perf_counter() - t1
    return {"handoff_us": round(1e6 * wall / n, 1),
            "handoff_cpu_us": round(1e6 * ((c1.user + c1.system) - (c0.user + c0.system)) / n, 1),
            "inline_us": round(1e6 * inline / n, 2)}


def summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Best and median tokens/s per scenario, and the goal table's ratios (best of rounds)."""
    names = [k for k in rounds[0] if "tps" in rounds[0][k]]
    best = {k: max(r[k]["tps"] for r in rounds) for k in names}
    med = {k: statistics.median(r[k]["tps"] for r in rounds) for k in names}
    ratios: dict[str, float] = {}
    if "alone" in best:
        for k in ("plus1_used", "plus2_used"):
            ratios[f"{k}_vs_alone"] = round(best[k] / best["alone"], 3)
        alone_e2e = max(r["two_threads"]["alone_e2e_tps"] for r in rounds)
        ratios["two_threads_aggregate_vs_alone"] = round(best["two_threads"] / alone_e2e, 3)
    if "draft_auto" in best:
        ratios["draft_auto_vs_plain"] = round(best["draft_auto"] / best["draft_plain"], 3)
    return {"best_tps": {k: round(v, 1) for k, v in best.items()}, "median_tps": {k: round(v, 1) for k, v in med.items()},
            "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.studies.many_models", description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="the model A (default: SmolLM2-135M-Instruct Q8_0, built once per machine)")
    ap.add_argument("--draft", help="the draft for the draft pair (default: SmolLM2-135M-Instruct Q4_0)")
    ap.add_argument("--tokens", type=int, default=96, help="tokens per decode (default 96)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="threads per model (default: as edgekit.load)")
    ap.add_argument("--skip-draft", action="store_true", help="leave out the draft pair")
    ap.add_argument("--handoff-only", action="store_true", help="only the compute-thread handoff cost")
    ap.add_argument("--single-stream", action="store_true", help="only model A alone (best of 3)")
    a = ap.parse_args(argv)
    model, draft = a.model, a.draft
    if a.single_stream:
        if model is None:
            from edgekit.samples.smollm2 import cached_smollm2_ggufs

            model = str(cached_smollm2_ggufs()["q8_0"])
        print(json.dumps(single_stream(model, a.threads, a.tokens)), flush=True)
        return
    print(json.dumps({"test": "handoff", **handoff()}), flush=True)
    if a.handoff_only:
        return
    if model is None or (draft is None and not a.skip_draft):
        from edgekit.samples.smollm2 import cached_smollm2_ggufs

        files = cached_smollm2_ggufs()
        model = model or str(files["q8_0"])
        draft = draft or str(files["q4_0"])
    rounds = []
    for i in range(a.rounds):
        r = decode_round(model, a.threads, a.tokens)
        if not a.skip_draft:
            r |= draft_round(model, draft, a.threads, a.tokens)
        print(json.dumps({"test": "round", "round": i, "model": Path(model).name, **r}), flush=True)
        rounds.append(r)
    print(json.dumps({"test": "summary", "model": Path(model).name, "draft": None if a.skip_draft else Path(draft).name,
                      "tokens": a.tokens, "rounds": a.rounds, **summary(rounds)}), flush=True)


if __name__ == "__main__":
    main()
