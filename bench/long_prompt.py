"""One prompt that fills the context: time to first token, decode speed at that depth, peak RSS vs the plan.

The job behind ``edgekit bench long-prompt MODEL [--ctx 32768] [--kv-cache auto] [--gen 64]
[--llama-bench PATH]``. The prompt is edgekit's evaluation text, repeated to
``ctx - gen - 16`` tokens. With a llama-bench path, llama.cpp's llama-bench then runs the
same job (``-pg PROMPT,GEN`` with the same threads, batch sizes, KV types, flash attention
and offloaded layers) and the ratio of the two wall times is reported. At 32k on 2 CPU
cores each side takes about 50 minutes; run it on an otherwise idle machine.
"""

from __future__ import annotations

import time
from typing import Any

from edgekit.errors import BenchError

from . import llama_bench

__all__ = ["PROMPT_MARGIN", "long_prompt", "run_edgekit", "run_llama_bench"]

MiB = 2**20
#: Tokens kept free besides the generated ones, so prompt and answer never fill the context exactly.
PROMPT_MARGIN = 16


def _n_prompt(n_ctx: int, n_gen: int) -> int:
    n_prompt = n_ctx - n_gen - PROMPT_MARGIN
    if n_gen < 1 or n_prompt < 1:
        raise BenchError(f"a {n_ctx}-token context leaves no room for a prompt and {n_gen} generated tokens",
                         f"Use a context of at least {n_gen + PROMPT_MARGIN + 1} tokens and at least one to generate.")
    return n_prompt


def run_edgekit(model: str, n_ctx: int, kv_cache: str, n_gen: int, threads: int | None) -> dict[str, Any]:
    """Load ``model``, prefill a context-filling prompt and generate ``n_gen`` tokens; return the numbers."""
    import edgekit
    from edgekit.evaluate import default_text

    n_prompt = _n_prompt(n_ctx, n_gen)
    # speculative="off": the prompt repeats one text, which prompt lookup would copy from, not decode
    # The prompt cache is off: a second run would restore the prompt from disk instead of prefilling it.
    with edgekit.load(model, n_ctx=n_ctx, kv_cache=kv_cache, threads=threads, speculative="off",
                      prompt_cache="off") as m:
        ids = m.tokenize(default_text(), add_special=False)
        prompt = (ids * (n_prompt // len(ids) + 1))[:n_prompt]
        t0 = time.perf_counter()
        # n_gen is what was generated: a model may reach an end-of-generation token sooner
        c = m.generate(prompt, max_tokens=n_gen, temperature=0)
        wall = time.perf_counter() - t0
        s = c.stats
        return {
            "model": str(m.path), "n_ctx": m.n_ctx, "type_k": m.type_k, "type_v": m.type_v,
            "flash_attn": m.flash_attn, "threads": m.threads, "n_batch": m.n_batch, "gpu_layers": m.gpu_layers,
            "n_prompt": s.prompt_tokens, "n_gen": s.gen_tokens, "ttft_s": s.ttft_s, "prefill_tps": s.prefill_tps,
            "decode_tps": s.decode_tps, "wall_s": wall, "peak_rss_mib": s.peak_rss / MiB,
            "plan_mib": m.plan.total_bytes / MiB, "peak_over_plan": s.peak_rss / m.plan.total_bytes,
        }


def run_llama_bench(binary: str, ours: dict[str, Any]) -> dict[str, Any]:
    """llama-bench's ``-pg`` test with the settings edgekit used; its wall time and the ratio to ours."""
    argv = [llama_bench.find_binary(binary), "-m", ours["model"], "-p", "0", "-n", "0",
            "-pg", f"{ours['n_prompt']},{ours['n_gen']}", "-t", str(ours["threads"]),
            "-b", str(ours["n_batch"]), "-ub", str(ours["n_batch"]), "-ctk", ours["type_k"], "-ctv", ours["type_v"],
            "-fa", "on" if ours["flash_attn"] else "off", "-ngl", str(ours["gpu_layers"]), "-r", "1", "-o", "jsonl"]
    rows = llama_bench.run(argv)
    wall = rows[-1]["avg_ns"] / 1e9
    return {"argv": argv, "wall_s": wall, "edgekit_speed_ratio": wall / ours["wall_s"]}


def long_prompt(model: str, *, n_ctx: int = 32768, kv_cache: str = "auto", n_gen: int = 64,
                threads: int | None = None, llama_bench_path: str | None = None) -> dict[str, Any]:
    """Run the job with edgekit, then (given ``llama_bench_path``) with llama-bench.

    Returns ``{"edgekit": {...}}`` plus ``"llama_bench"`` when it ran. The settings and the
    llama-bench path are checked before the model loads.
    """
    _n_prompt(n_ctx, n_gen)
    binary = llama_bench.find_binary(llama_bench_path) if llama_bench_path else None
    result = {"edgekit": run_edgekit(model, n_ctx, kv_cache, n_gen, threads)}
    if binary is not None:
        result["llama_bench"] = run_llama_bench(binary, result["edgekit"])
    return result
