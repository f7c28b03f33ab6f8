"""One prompt that fills the context: time to first token, decode speed at that depth, peak RSS vs the plan.

Run::

    python -m edgekit.bench.long_prompt MODEL.gguf [--ctx 32768] [--kv-cache q8_0] [--gen 64]
                                        [--llama-bench PATH/TO/llama-bench]

The prompt is edgekit's evaluation text, repeated to ``ctx - gen - 16`` tokens. With
``--llama-bench``, llama.cpp's llama-bench then runs the same job (``-pg PROMPT,GEN`` with
the same threads, batch sizes, KV types and flash attention) and the ratio of the two wall
times is reported. It prints one JSON object. At 32k on 2 CPU cores each side takes about
50 minutes; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import edgekit
from edgekit.evaluate import default_text

from . import llama_bench

MiB = 2**20


def run_edgekit(model: str, n_ctx: int, kv_cache: str, n_gen: int, threads: int | None) -> dict[str, Any]:
    """Load ``model``, prefill a context-filling prompt and generate ``n_gen`` tokens; return the numbers."""
    m = edgekit.load(model, n_ctx=n_ctx, kv_cache=kv_cache, threads=threads)
    with m:
        ids = m.tokenize(default_text(), add_special=False)
        n_prompt = n_ctx - n_gen - 16
        prompt = (ids * (n_prompt // len(ids) + 1))[:n_prompt]
        t0 = time.perf_counter()
        # n_gen is what was generated: a model may reach an end-of-generation token sooner
        c = m.generate(prompt, max_tokens=n_gen, temperature=0)
        wall = time.perf_counter() - t0
        s = c.stats
        return {
            "model": str(m.path), "n_ctx": m.n_ctx, "type_k": m.type_k, "type_v": m.type_v,
            "flash_attn": m.flash_attn, "threads": m.threads, "n_batch": m.n_batch, "n_prompt": s.prompt_tokens,
            "n_gen": s.gen_tokens, "ttft_s": s.ttft_s, "prefill_tps": s.prefill_tps, "decode_tps": s.decode_tps,
            "wall_s": wall, "peak_rss_mib": s.peak_rss / MiB, "plan_mib": m.plan.total_bytes / MiB,
            "peak_over_plan": s.peak_rss / m.plan.total_bytes,
        }


def run_llama_bench(binary: str, ours: dict[str, Any]) -> dict[str, Any]:
    """llama-bench's ``-pg`` test with the settings edgekit used; its wall time and the ratio to ours."""
    argv = [llama_bench.find_binary(binary), "-m", ours["model"], "-p", "0", "-n", "0",
            "-pg", f"{ours['n_prompt']},{ours['n_gen']}", "-t", str(ours["threads"]),
            "-b", str(ours["n_batch"]), "-ub", str(ours["n_batch"]), "-ctk", ours["type_k"], "-ctv", ours["type_v"],
            "-fa", "on" if ours["flash_attn"] else "off", "-r", "1", "-o", "jsonl"]
    rows = llama_bench.run(argv)
    wall = rows[-1]["avg_ns"] / 1e9
    return {"argv": argv, "wall_s": wall, "edgekit_speed_ratio": wall / ours["wall_s"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.long_prompt", description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--kv-cache", default="q8_0")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--llama-bench", default=None, help="path of llama-bench, to run the same job side by side")
    args = ap.parse_args(argv)
    result = {"edgekit": run_edgekit(args.model, args.ctx, args.kv_cache, args.gen, args.threads)}
    if args.llama_bench:
        result["llama_bench"] = run_llama_bench(args.llama_bench, result["edgekit"])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
