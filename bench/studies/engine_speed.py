"""The multi-sequence engine's speed: single stream against a baseline tree, and aggregate decode with
1/2/4/8 concurrent threads on one Model.

Run: python -m edgekit.bench.studies.engine_speed [GGUF] [--baseline /work/main] [--rounds 3]
                                                  [--threads N] [--clients 1,2,4,8] [--max-tokens 128]

Each measurement runs in a fresh worker process (this file run as a script); with --baseline
the same worker runs with that source tree first on PYTHONPATH (e.g. a worktree of main, whose
Model had no engine), interleaved round by round with the current tree so machine noise hits
both alike. Every worker reports which edgekit it imported. Prints JSON lines: one per worker
run, then a summary with medians and current/baseline ratios.

Single stream: prefill tokens/s (a 512-token prompt, cache reset) and decode tokens/s (greedy,
end-of-generation banned so every run decodes --max-tokens tokens). Aggregate: k threads each
stream their own prompt at once; tokens/s = all tokens / wall time, plus the slowest client's
rate over the mean (fairness). A tree without slots (the baseline) serializes the threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TEXT = ("The river ran past the mill and the old stone bridge, where the children of the village used to fish "
        "for trout in the summer evenings while their parents talked about the harvest. ")
CLIENT_PROMPTS = ["Once upon a time", "The history of the printing press", "A recipe for bread:",
                  "Dear diary, today", "The rules of chess are", "In the year 2050,", "def quicksort(items):",
                  "The ocean is"]


def _worker(a: argparse.Namespace) -> dict[str, Any]:
    import inspect

    import edgekit

    gguf = a.gguf
    if gguf is None:
        from edgekit.samples.assets import smollm2_gguf

        gguf = str(smollm2_gguf())
    clients = [int(c) for c in a.clients.split(",") if c]
    has_slots = "slots" in inspect.signature(edgekit.load).parameters
    # Speculation off by default: both trees then decode one token per step, so the ratio is the engine's.
    kw: dict[str, Any] = {"n_ctx": 2048, "threads": a.threads, "seed": 1, "speculative": a.speculative}
    if has_slots:
        kw["slots"] = max(clients)
    out: dict[str, Any] = {"edgekit": str(Path(edgekit.__file__).parent), "slots": has_slots, "model": Path(gguf).name}
    with edgekit.load(gguf, **kw) as m:
        ban = {t: -100.0 for t in range(m.n_vocab) if m.is_eog(t)}
        pp = m.tokenize(TEXT * 20, add_special=False)[:512]
        m.generate(pp[:32], max_tokens=4, temperature=0)  # warm-up
        m.reset()
        out["prefill_tps"] = m.generate(pp, max_tokens=1, temperature=0).stats.prefill_tps
        m.reset()
        c = m.generate("Once upon a time", max_tokens=a.max_tokens, temperature=0, logit_bias=ban)
        out["decode_tps"], out["decode_tokens"] = c.stats.decode_tps, c.stats.gen_tokens
        import threading

        for k in clients:
            m.reset()
            rates: list[float] = [0.0] * k
            go = threading.Barrier(k + 1)

            def client(i: int, go: threading.Barrier, rates: list[float]) -> None:
                go.wait()
                stats = None
                for item in m.stream(CLIENT_PROMPTS[i % len(CLIENT_PROMPTS)], max_tokens=a.max_tokens,
                                     temperature=0, logit_bias=ban):
                    stats = item
                rates[i] = stats.decode_tps  # type: ignore[union-attr]

            threads = [threading.Thread(target=client, args=(i, go, rates)) for i in range(k)]
            for t in threads:
                t.start()
            go.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            out[f"aggregate_tps_{k}"] = k * a.max_tokens / wall
            out[f"fairness_{k}"] = min(rates) / statistics.mean(rates) if all(rates) else 0.0
    return out


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, run the workers (interleaved with the baseline) and print JSON lines."""
    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.studies.engine_speed",
                                 description="Engine speed: single stream vs a baseline tree, aggregate decode.")
    ap.add_argument("gguf", nargs="?", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--baseline", default=None, help="a source tree (e.g. a worktree of main) to compare with")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    ap.add_argument("--clients", default="1,2,4,8", help="concurrent threads to measure (default: 1,2,4,8)")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens per stream (default: 128)")
    ap.add_argument("--speculative", default="off", help="speculative mode for both trees (default: off)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(a)))
        return
    flags = [f"--clients={a.clients}", f"--max-tokens={a.max_tokens}", f"--speculative={a.speculative}"]
    flags += [f"--threads={a.threads}"] if a.threads else []
    flags += [a.gguf] if a.gguf else []
    trees = ([("baseline", a.baseline)] if a.baseline else []) + [("current", None)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for r in range(a.rounds):
        for name, tree in trees:
            env = dict(os.environ)
            if tree:
                env["PYTHONPATH"] = os.pathsep.join([str(Path(tree).resolve()), env.get("PYTHONPATH", "")])
            proc = subprocess.run([sys.executable, __file__, "--worker", *flags], env=env, capture_output=True,
                                  text=True, check=True)
            rec = {"tree": name, "round": r, **json.loads(proc.stdout.strip().splitlines()[-1])}
            runs[name].append(rec)
            print(json.dumps(rec), flush=True)
    summary: dict[str, Any] = {"summary": True}
    for name, recs in runs.items():
        keys = [k for k in recs[0] if isinstance(recs[0][k], float)]
        summary[name] = {k: statistics.median(r[k] for r in recs) for k in keys}
    if a.baseline:
        cur, base = summary["current"], summary["baseline"]
        summary["ratio"] = {k: cur[k] / base[k] for k in cur if k in base and base[k]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
