"""Side-by-side: edgekit vs llama-cpp-python's Llama on the same GGUF, threads and KV settings.

Run: python -m edgekit.bench.studies.runtime_perf [GGUF] [--rounds 3] [--threads N] [--gpu-layers auto]
                                                  [--throughput-only] [--pp 512] [--tg 128] [--llama-cpp-python-first]
Prints JSON lines; interleaves the two so machine noise hits both alike. Then, unless
--throughput-only, times a follow-up chat turn against a cold prefill, and a saved-state
reload against re-prefilling about 8k tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

N_CTX = 8192  # room for the ~8k-token saved-state test


def _load_llama_cpp_python(gguf: str, threads: int, gpu_layers: int) -> Any:
    """llama-cpp-python's Llama with edgekit's settings and the weight buffers edgekit would use on this CPU."""
    import llama_cpp

    from edgekit import _llama
    from edgekit.gguf_check import check

    info = check(gguf)
    with _llama.same_weight_buffers(Path(gguf), info.tensor_types, info.matrices):
        return llama_cpp.Llama(gguf, n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, flash_attn=True,
                               n_gpu_layers=gpu_layers, verbose=False, n_batch=512, n_ubatch=512)


def throughput(m: Any, ll: Any, text: str, rounds: int, pp: int = 512, tg: int = 128) -> dict[str, Any]:
    """pp512 and tg128 (or ``pp``, ``tg`` tokens) of edgekit (``m``) and llama-cpp-python (``ll``), interleaved ``rounds`` times."""
    pp_tokens = m.tokenize(text, add_special=False)[:pp]
    tg_prompt = m.tokenize("Once upon a time", add_special=False)

    def ek_pp() -> float:
        m.reset()
        return m.generate(pp_tokens, max_tokens=1, temperature=0, speculative="off").stats.prefill_tps

    def ll_pp() -> float:
        ll.reset()
        t = time.perf_counter()
        ll.eval(pp_tokens)
        return len(pp_tokens) / (time.perf_counter() - t)

    # Each decode test also times every llama_decode call (one C function for both runtimes), so what each
    # runtime spends per token outside it (sampling, bookkeeping, thread handoffs) is measured apart from
    # llama.cpp's own time, which drifts by several percent between rounds on a busy machine.
    from edgekit import _llama

    L, in_decode = _llama.lib(), []
    real_decode = L.llama_decode

    def clocked(ctx: Any, batch: Any) -> int:
        t = time.perf_counter()
        rc = real_decode(ctx, batch)
        in_decode.append(time.perf_counter() - t)
        return rc

    # per round: each side's time per token outside llama_decode, and its median llama_decode time per token
    outside: dict[str, list[float]] = {"ek_tg": [], "ll_tg": []}
    inside: dict[str, list[float]] = {"ek_tg": [], "ll_tg": []}

    def split(name: str, per_token_s: float, steps: list[float]) -> None:
        outside[name].append(per_token_s - sum(steps) / len(steps))
        inside[name].append(statistics.median(steps))

    def ek_tg(n: int = tg) -> float:
        m.reset()
        in_decode.clear()
        # greedy, at most n tokens; ek_tg_gen_tokens (in the result) shows an early stop at an end-of-generation token
        # no speculation: llama-cpp-python decodes one token at a time (prompt lookup would change the work)
        st = m.generate(tg_prompt, max_tokens=n, temperature=0, speculative="off").stats
        steps = in_decode[1:]  # the first call is the prompt's
        if steps and st.gen_tokens > 1:
            split("ek_tg", st.decode_s / (st.gen_tokens - 1), steps)
        return st.decode_tps

    def ll_tg(n: int = tg) -> float:
        ll.reset()
        t0 = None
        k = 0
        for _tok in ll.generate(tg_prompt, temp=0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
            k += 1
            if t0 is None:
                t0 = time.perf_counter()
                in_decode.clear()
            if k == n:
                break
        wall = time.perf_counter() - t0
        if in_decode and k > 1:
            split("ll_tg", wall / (k - 1), in_decode)
        return (k - 1) / wall

    from edgekit import _compute

    # llama-cpp-python decodes on the calling thread: run its side on edgekit's compute thread, so the
    # process keeps one OpenMP team (a second one would slow both sides, docs/architecture.md).
    def on_compute(fn: Any) -> Any:
        return lambda: _compute.run(fn)

    res: dict[str, list[float]] = {"ek_pp": [], "ll_pp": [], "ek_tg": [], "ll_tg": []}
    pairs = [(("ek_pp", ek_pp), ("ll_pp", on_compute(ll_pp))), (("ek_tg", ek_tg), ("ll_tg", on_compute(ll_tg)))]
    L.llama_decode = clocked
    try:
        for r in range(rounds):
            for pair in pairs:
                # alternate who goes first, so a drift within a round (or a cost of following the other) falls on both
                for name, fn in pair if r % 2 == 0 else pair[::-1]:
                    res[name].append(fn())
    finally:
        L.llama_decode = real_decode
    med = {k: statistics.median(v) for k, v in res.items()}
    best = {k: max(v) for k, v in res.items()}  # best-of: least disturbed by other processes
    return {"test": "throughput", "model": Path(m.path).name, "threads": m.threads, "pp": len(pp_tokens), "tg": tg,
            **{k: round(v, 1) for k, v in med.items()},
            "pp_ratio": round(med["ek_pp"] / med["ll_pp"], 3), "tg_ratio": round(med["ek_tg"] / med["ll_tg"], 3),
            "best_pp_ratio": round(best["ek_pp"] / best["ll_pp"], 3),
            "best_tg_ratio": round(best["ek_tg"] / best["ll_tg"], 3),
            "paired_tg_ratio": paired_ratio(res["ek_tg"], res["ll_tg"]),
            "all": {k: [round(x, 1) for x in v] for k, v in res.items()},
            # per token, in ms (medians over the rounds): outside llama_decode, and inside it (the same C
            # function on both sides)
            **{f"{k}_outside_ms": ms(v) for k, v in outside.items()},
            **{f"{k}_decode_ms": ms(v) for k, v in inside.items()},
            "ek_tg_gen_tokens": m.generate(tg_prompt, max_tokens=tg, temperature=0, speculative="off").stats.gen_tokens}


def paired_ratio(ek: list[float], ll: list[float]) -> float:
    """The median of each round's own ratio ``ek / ll``: rounds are paired, so drift between rounds cancels."""
    return round(statistics.median([e / x for e, x in zip(ek, ll, strict=True)]), 3)


def ms(seconds: list[float]) -> float | None:
    """The median of ``seconds`` in ms, or None if there are none."""
    return round(statistics.median(seconds) * 1e3, 3) if seconds else None


def follow_up_turn(m: Any, text: str) -> dict[str, Any]:
    """Time to first token of a follow-up turn (cache reused) against a cold prefill of the same conversation."""
    import edgekit

    chat = edgekit.Chat(m, system="You are a helpful assistant.", temperature=0, max_tokens=64)
    m.reset()
    for i in range(12):
        chat.send(f"Tell me fact number {i} about the history of Paris, in detail. "
                  + "Context: " + text[i * 400:(i + 1) * 400])
    msgs = chat.messages + [{"role": "user", "content": "Summarize what you said."}]
    follow = m.chat(msgs, temperature=0, max_tokens=1).stats
    m.reset()
    cold = m.chat(msgs, temperature=0, max_tokens=1).stats
    return {"test": "follow_up_turn", "prompt_tokens": cold.prompt_tokens, "cached": follow.cached_tokens,
            "follow_ttft_s": round(follow.ttft_s, 4), "cold_ttft_s": round(cold.ttft_s, 3),
            "ratio": round(follow.ttft_s / cold.ttft_s, 4)}


def saved_state(m: Any, text: str) -> dict[str, Any]:
    """Reloading a saved state of ~8k tokens against prefilling them again."""
    long = m.tokenize(text * 3, add_special=False)[:8000]
    m.reset()
    t = time.perf_counter()
    m.generate(long, max_tokens=1, temperature=0)
    prefill_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.state"
        t = time.perf_counter()
        m.save_state(path)
        save_s = time.perf_counter() - t
        m.reset()
        t = time.perf_counter()
        m.load_state(path)
        c = m.generate(long, max_tokens=1, temperature=0)
        reload_s = time.perf_counter() - t
        size = path.stat().st_size
    return {"test": "saved_state", "tokens": len(long), "prefill_s": round(prefill_s, 3),
            "save_s": round(save_s, 3), "reload_plus_first_token_s": round(reload_s, 3),
            "cached": c.stats.cached_tokens, "state_mib": round(size / 2**20, 1),
            "speedup": round(prefill_s / reload_s, 1)}


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, load the model in both runtimes and print one JSON line per test."""
    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.studies.runtime_perf",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("gguf", nargs="?", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for both runtimes (default: edgekit's, the physical cores)")
    ap.add_argument("--gpu-layers", default="auto",
                    help="layers to offload, as edgekit.load's gpu_layers (llama.cpp's n_gpu_layers, -ngl): "
                         "auto = all where the build can offload (Metal/GPU), else 0; both runtimes get the same")
    ap.add_argument("--throughput-only", action="store_true", help="skip the follow-up turn and saved-state tests")
    ap.add_argument("--pp", type=int, default=512, help="prompt tokens of the prefill test (default: 512)")
    ap.add_argument("--tg", type=int, default=128, help="tokens of the decode test (default: 128)")
    ap.add_argument("--llama-cpp-python-first", action="store_true",
                    help="load llama-cpp-python's model before edgekit's (default: edgekit's first)")
    a = ap.parse_args(argv)

    import edgekit

    gguf = a.gguf
    if gguf is None:
        from edgekit.samples.assets import smollm2_gguf

        gguf = str(smollm2_gguf())
    text = Path(edgekit.__file__).parent.joinpath("runtime", "model.py").read_text() * 4  # moved from edgekit/model.py
    from edgekit.gguf_check import check
    from edgekit.llama_facts import physical_cores, resolve_gpu_layers

    # both sides get the same explicit threads and layers
    threads = a.threads or physical_cores()
    layers = a.gpu_layers if a.gpu_layers == "auto" else int(a.gpu_layers)
    gpu_layers = resolve_gpu_layers(layers, check(gguf).n_layer)
    # The model loaded second in a process often prefills and decodes a few percent faster, whichever runtime
    # it is (where its buffers land): a fair comparison runs both orders (arch_speed does).
    if a.llama_cpp_python_first:
        ll = _load_llama_cpp_python(gguf, threads, gpu_layers)
    # no disk prompt cache: the prefill test must prefill its 512 tokens every round, not restore them
    m = edgekit.load(gguf, n_ctx=N_CTX, kv_cache="f16", flash_attn=True, threads=threads, gpu_layers=gpu_layers,
                     prompt_cache="off")
    if not a.llama_cpp_python_first:
        ll = _load_llama_cpp_python(gguf, threads, gpu_layers)
    with m:
        try:
            print(json.dumps({**throughput(m, ll, text, a.rounds, a.pp, a.tg),
                              "loaded_first": "llama-cpp-python" if a.llama_cpp_python_first else "edgekit"}))
        finally:
            ll.close()
        if a.throughput_only:
            return
        print(json.dumps(follow_up_turn(m, text)))
        print(json.dumps(saved_state(m, text)))


if __name__ == "__main__":
    main()
