"""Side-by-side: edgekit vs llama-cpp-python's Llama on the same GGUF, threads and KV settings.

Run: python -m edgekit.bench.studies.runtime_perf [GGUF] [--rounds 3] [--throughput-only]
Prints JSON lines; interleaves the two so machine noise hits both alike.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import edgekit

args = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and sys.argv[i - 1] != "--rounds"]
if args:
    GGUF = args[0]
else:
    from edgekit.samples.assets import smollm2_gguf

    GGUF = str(smollm2_gguf())
ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
THREADS = 2
N_CTX = 8192

m = edgekit.load(GGUF, n_ctx=N_CTX, kv_cache="f16", flash_attn=True, threads=THREADS)

from llama_cpp import Llama  # noqa: E402

ll = Llama(GGUF, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS, flash_attn=True, verbose=False,
           n_batch=512, n_ubatch=512)

text = Path(edgekit.__file__).parent.joinpath("model.py").read_text() * 4
pp_tokens = m.tokenize(text, add_special=False)[:512]
tg_prompt = m.tokenize("Once upon a time", add_special=False)


def ek_pp() -> float:
    m.reset()
    return m.generate(pp_tokens, max_tokens=1, temperature=0).stats.prefill_tps


def ll_pp() -> float:
    ll.reset()
    t = time.perf_counter()
    ll.eval(pp_tokens)
    return len(pp_tokens) / (time.perf_counter() - t)


def ek_tg(n: int = 128) -> float:
    m.reset()
    # greedy, at most n tokens; ek_tg_gen_tokens (printed below) shows an early stop at an end-of-generation token
    c = m.generate(tg_prompt, max_tokens=n, temperature=0)
    return c.stats.decode_tps


def ll_tg(n: int = 128) -> float:
    ll.reset()
    t0 = None
    k = 0
    for _tok in ll.generate(tg_prompt, temp=0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
        k += 1
        if t0 is None:
            t0 = time.perf_counter()
        if k == n:
            break
    return (k - 1) / (time.perf_counter() - t0)


res: dict[str, list[float]] = {"ek_pp": [], "ll_pp": [], "ek_tg": [], "ll_tg": []}
for _ in range(ROUNDS):
    for name, fn in (("ek_pp", ek_pp), ("ll_pp", ll_pp), ("ek_tg", ek_tg), ("ll_tg", ll_tg)):
        res[name].append(fn())
med = {k: statistics.median(v) for k, v in res.items()}
best = {k: max(v) for k, v in res.items()}  # best-of: least disturbed by other processes
print(json.dumps({"test": "throughput", "model": Path(GGUF).name, "threads": THREADS, **{k: round(v, 1) for k, v in med.items()},
                  "pp_ratio": round(med["ek_pp"] / med["ll_pp"], 3), "tg_ratio": round(med["ek_tg"] / med["ll_tg"], 3),
                  "best_pp_ratio": round(best["ek_pp"] / best["ll_pp"], 3),
                  "best_tg_ratio": round(best["ek_tg"] / best["ll_tg"], 3),
                  "all": {k: [round(x, 1) for x in v] for k, v in res.items()},
                  "ek_tg_gen_tokens": m.generate(tg_prompt, max_tokens=128, temperature=0).stats.gen_tokens}))
ll.close()
if "--throughput-only" in sys.argv:
    sys.exit(0)

# Follow-up turn vs a cold prefill of the same conversation.
chat = edgekit.Chat(m, system="You are a helpful assistant.", temperature=0, max_tokens=64)
m.reset()
for i in range(12):
    chat.send(f"Tell me fact number {i} about the history of Paris, in detail. " + "Context: " + text[i * 400:(i + 1) * 400])
msgs = chat.messages + [{"role": "user", "content": "Summarize what you said."}]
follow = m.chat(msgs, temperature=0, max_tokens=1).stats
m.reset()
cold = m.chat(msgs, temperature=0, max_tokens=1).stats
print(json.dumps({"test": "follow_up_turn", "prompt_tokens": cold.prompt_tokens, "cached": follow.cached_tokens,
                  "follow_ttft_s": round(follow.ttft_s, 4), "cold_ttft_s": round(cold.ttft_s, 3),
                  "ratio": round(follow.ttft_s / cold.ttft_s, 4)}))

# Saved state reload vs re-prefill of ~8k tokens.
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
print(json.dumps({"test": "saved_state", "tokens": len(long), "prefill_s": round(prefill_s, 3),
                  "save_s": round(save_s, 3), "reload_plus_first_token_s": round(reload_s, 3),
                  "cached": c.stats.cached_tokens, "state_mib": round(size / 2**20, 1),
                  "speedup": round(prefill_s / reload_s, 1)}))
