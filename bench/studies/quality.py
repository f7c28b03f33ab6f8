"""Measure types and recipes on SmolLM2-135M (perturbed weights): size, bpw, decode tok/s ratio, KLD, top-1.

Run: python -m edgekit.bench.studies.quality [--only NAME,...] [--rounds 5] [--tokens 128] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0", "IQ4_NL"]


def n_params(path: Path) -> int:
    """Weights in a GGUF (all tensors' elements)."""
    from gguf import GGUFReader

    return sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors)


def decode_speed(paths: dict[str, Path], tokens: int, rounds: int, threads: int | None = None) -> dict[str, float]:
    """Median decode tok/s of each file: all loaded at once, timed in turn each round (round 0 warms up).

    ``threads`` None is edgekit.load's default (the physical cores).
    """
    import edgekit
    from edgekit.bench.measure import Context

    models = {n: edgekit.load(p, n_ctx=256, kv_cache="f16", threads=threads, n_batch=256) for n, p in paths.items()}
    res: dict[str, list[float]] = {n: [] for n in paths}
    try:
        ctxs = {n: Context(m.llama_context, m.llama_model, threads=m.threads) for n, m in models.items()}
        for r in range(rounds + 1):
            for name, ctx in ctxs.items():
                ctx.clear()
                ctx.prompt(8, 256)
                t0 = time.perf_counter()
                ctx.gen(tokens)
                if r:
                    res[name].append(tokens / (time.perf_counter() - t0))
    finally:
        for m in models.values():
            m.close()
    return {n: statistics.median(v) for n, v in res.items()}


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, quantize, score and time each type and recipe; print a table and merge into --out."""
    from edgekit.convert.recipes import RECIPES

    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.studies.quality", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated types/recipes to measure (default: all)")
    ap.add_argument("--rounds", type=int, default=5, help="timed decode rounds after one warm-up (default: 5)")
    ap.add_argument("--tokens", type=int, default=128, help="tokens generated per timed round (default: 128)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: edgekit's, the physical cores)")
    ap.add_argument("--out", default="quality_results.json", help="JSON file the rows are merged into")
    a = ap.parse_args(argv)

    from edgekit.convert.tensor_quant import quantize_plain, quantize_with_recipe
    from edgekit.evaluate import evaluate, save_reference_logits
    from edgekit.samples.assets import CACHE, smollm2_gguf
    from edgekit.samples.perturb import perturbed_f16

    d = CACHE / "smollm2-perturbed"
    f16 = d / "SmolLM2-135M-perturbed5.F16.gguf"
    if not f16.exists():
        perturbed_f16(smollm2_gguf(), f16, noise=0.05, seed=0)
    logits = d / "f16.logits"
    if not logits.exists():
        save_reference_logits(f16, logits, n_ctx=512)
    names = TYPES + list(RECIPES)
    if a.only:
        names = [n for n in names if n in a.only.split(",")]
    paths = {"F16": f16}
    for n in names:
        p = d / f"{n}.gguf"
        if n in RECIPES:
            quantize_with_recipe(f16, p, n)
        elif not p.exists():
            quantize_plain(f16, p, n)
        paths[n] = p
    npar = n_params(f16)
    rows = {}
    for n, p in paths.items():
        r = evaluate(p, reference_logits=logits)
        rows[n] = {"size": p.stat().st_size, "bpw": p.stat().st_size * 8 / npar, "ppl": r.perplexity,
                   "kld": r.kld_mean, "kld_err": r.kld_err, "kld_p99": r.kld_p99, "top1": r.same_top_p,
                   "rms_dp": r.rms_dp, "n_tokens": r.n_tokens}
    speed = decode_speed(paths, a.tokens, a.rounds, a.threads)
    for n in rows:
        rows[n]["tg"] = speed[n]
        rows[n]["tg_ratio"] = speed[n] / speed["F16"]
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update(rows)
    out.write_text(json.dumps(old, indent=1))
    print(f"{'name':10} {'MiB':>7} {'bpw':>5} {'tg':>6} {'xF16':>5} {'KLD':>8} {'top1':>6} {'ppl':>7}")
    for n, r in rows.items():
        print(f"{n:10} {r['size']/2**20:7.1f} {r['bpw']:5.2f} {r['tg']:6.1f} {r['tg_ratio']:5.2f} "
              f"{r['kld']:8.5f} {100*r['top1']:6.2f} {r['ppl']:7.3f}")


if __name__ == "__main__":
    main()
