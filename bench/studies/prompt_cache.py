"""The persistent prompt cache's goals (docs/prompt-cache.md): time to first token in a new process that
has seen a long prompt before, against a cold one; disk per kept prefix against its KV bytes; the cost of
writing the snapshot; a short prompt with and without the cache; ``edgekit serve`` after a restart; and
llama-cpp-python's ``LlamaDiskCache`` wired in by hand, as the anchor.

Every measurement runs in a fresh process (that is the point), and the cold/warm/off runs of a round are
interleaved, so a machine that others load shifts them together: compare ratios within a round.

    python -m edgekit.bench.studies.prompt_cache MODEL.gguf --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

N_CTX = 4096
QUESTIONS = ("Which rule covers the third colour?", "What should happen to a late parcel?")
SHORT = "Name three rivers."


def long_text(model: str, tokens: int) -> str:
    """About ``tokens`` tokens of varied rule text, counted with the model's own tokenizer."""
    import edgekit

    words = ("amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor", "indigo", "juniper")
    with edgekit.load(model, n_ctx=512, prompt_cache="off", speculative="off") as m:
        lines: list[str] = []
        i = 0
        while True:
            a, b, c = words[i % 10], words[(i * 3 + 1) % 10], words[(i * 7 + 2) % 10]
            lines.append(f"Rule {i}: when the {a} parcel reaches the {b} depot after {i % 24}:00, "
                         f"send it on by the {c} route and log it under code {1000 + 37 * i}.")
            i += 1
            if i % 10 == 0 and m.count_tokens("\n".join(lines)) >= tokens:
                return "\n".join(lines)


def child(a: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process; printed as one JSON line."""
    text = Path(a.text).read_text()
    prompt = f"{text}\n\nQuestion: {a.question}\nAnswer:" if a.question != SHORT else f"Question: {SHORT}\nAnswer:"
    t0 = time.perf_counter()
    if a.mode == "anchor":
        from llama_cpp import Llama, LlamaDiskCache

        llm = Llama(a.model, n_ctx=N_CTX, n_threads=a.threads, n_threads_batch=a.threads, flash_attn=True,
                    n_batch=512, seed=1, verbose=False)
        llm.set_cache(LlamaDiskCache(cache_dir=a.dir))
        t_load = time.perf_counter() - t0
        t1 = time.perf_counter()
        ttft = None
        for _ in llm.create_completion(prompt, max_tokens=8, temperature=0, stream=True):
            ttft = ttft or time.perf_counter() - t1
        del llm
        return {"ttft_s": ttft, "load_s": t_load, "wall_s": time.perf_counter() - t0}
    import edgekit

    m = edgekit.load(a.model, n_ctx=N_CTX, threads=a.threads, kv_cache="f16", speculative="off", seed=1,
                     prompt_cache=a.dir if a.mode == "on" else "off")
    c = m.generate(prompt, max_tokens=8, temperature=0)
    t_close = time.perf_counter()
    cache = m.prompt_cache
    m.close()  # waits for the snapshot's file
    out = {"ttft_s": c.stats.ttft_s, "load_s": m.load_s, "prompt_tokens": c.stats.prompt_tokens,
           "disk_tokens": c.stats.disk_tokens, "restore_s": c.stats.disk_restore_s,
           "close_s": time.perf_counter() - t_close, "wall_s": time.perf_counter() - t0,
           "kv_bytes_per_token": 2 * sum(m.info.kv_values_per_token())}  # f16: 2 bytes a value
    if cache is not None:
        out["counters"] = cache.counters.__dict__
    return out


def run_child(a: argparse.Namespace, mode: str, directory: Path, question: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edgekit.bench.studies.prompt_cache", a.model, "--child", mode, "--dir",
           str(directory), "--question", question, "--text", str(a.text), "--threads", str(a.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def serve_ttft(a: argparse.Namespace, directory: Path, question: str) -> tuple[float, float]:
    """(time to first streamed token of one request, server start to ready) on a freshly started server."""
    import httpx

    text = Path(a.text).read_text()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", a.model, "--port", "0", "--ctx", str(N_CTX),
                             "--threads", str(a.threads), "--kv-cache", "f16", "--speculative", "off",
                             "--prompt-cache", str(directory)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            if "ready at " in line:
                url = line.split("ready at ")[1].split()[0]
                break
        if url is None:
            raise SystemExit("the server did not start")
        ready = time.perf_counter() - t0
        body = {"model": Path(a.model).stem, "prompt": f"{text}\n\nQuestion: {question}\nAnswer:", "max_tokens": 8,
                "temperature": 0, "stream": True}
        t1 = time.perf_counter()
        first = None
        with httpx.stream("POST", f"{url}/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():  # read to the end: a client that leaves early cancels the sequence
                if first is None and line.startswith("data: ") and '"text"' in line:
                    first = time.perf_counter() - t1
        if first is None:
            raise SystemExit("no token came back")
        return first, ready
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m edgekit.bench.studies.prompt_cache", description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=3000, help="length of the long prompt")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-anchor", action="store_true", help="skip llama-cpp-python's LlamaDiskCache")
    p.add_argument("--no-serve", action="store_true", help="skip edgekit serve")
    p.add_argument("--child", choices=("on", "off", "anchor"), dest="mode")
    p.add_argument("--dir", default="")
    p.add_argument("--question", default=QUESTIONS[0])
    p.add_argument("--text", default="")
    a = p.parse_args(argv)
    if a.mode:
        print(json.dumps(child(a)))
        return
    work = Path(tempfile.mkdtemp(prefix="edgekit-pc-study-"))
    a.text = work / "prompt.txt"
    a.text.write_text(long_text(a.model, a.tokens))
    rows: list[dict[str, Any]] = []
    for r in range(a.rounds):
        d, anchor_dir, serve_dir = work / f"pc{r}", work / f"anchor{r}", work / f"serve{r}"
        row: dict[str, Any] = {"round": r}
        row["off"] = run_child(a, "off", d, QUESTIONS[0])
        row["cold"] = run_child(a, "on", d, QUESTIONS[0])
        row["file_bytes"] = dir_bytes(d)
        row["warm"] = run_child(a, "on", d, QUESTIONS[1])  # another question: the snapshot is cut back
        row["short_off"] = run_child(a, "off", d, SHORT)
        row["short_on"] = run_child(a, "on", d, SHORT)
        if not a.no_anchor:
            row["anchor_cold"] = run_child(a, "anchor", anchor_dir, QUESTIONS[0])
            row["anchor_warm"] = run_child(a, "anchor", anchor_dir, QUESTIONS[1])
            row["anchor_bytes"] = dir_bytes(anchor_dir)
        if not a.no_serve:
            row["serve_cold"], _ = serve_ttft(a, serve_dir, QUESTIONS[0])
            row["serve_warm"], _ = serve_ttft(a, serve_dir, QUESTIONS[1])
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        for x in (d, anchor_dir, serve_dir):
            shutil.rmtree(x, ignore_errors=True)
    report(rows, a)
    shutil.rmtree(work, ignore_errors=True)


def report(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    def med(f) -> float:
        return statistics.median(f(r) for r in rows)

    cold = rows[0]["cold"]
    tokens = cold["counters"]["restored_tokens"] or rows[0]["warm"]["disk_tokens"]
    snap_tokens = cold["prompt_tokens"] + 7  # the prompt and the evaluated answer (8 tokens, the last not evaluated)
    kv = snap_tokens * cold["kv_bytes_per_token"]
    print(f"model {Path(a.model).name}, {a.threads} threads, f16 KV, prompt {cold['prompt_tokens']} tokens, "
          f"{len(rows)} rounds (medians; ratios per round)")
    print("| measure | edgekit | goal |")
    print("|---|---|---|")
    print(f"| cold time to first token (new process, empty cache) | {med(lambda r: r['cold']['ttft_s']):.2f} s | |")
    print(f"| time to first token, new process, cache warm (another question: {tokens} tokens restored) | "
          f"{med(lambda r: r['warm']['ttft_s']):.3f} s (restore {med(lambda r: r['warm']['restore_s']):.3f} s), "
          f"1/{med(lambda r: r['cold']['ttft_s'] / r['warm']['ttft_s']):.0f} of cold | <= 1/30 |")
    print(f"| disk per kept prefix | {med(lambda r: r['file_bytes']) / 2**20:.1f} MiB for {snap_tokens} tokens, "
          f"{med(lambda r: r['file_bytes']) / kv:.3f}x their KV bytes ({kv / 2**20:.1f} MiB) | <= 1.5x |")
    if "serve_cold" in rows[0]:
        print(f"| edgekit serve, first request after a restart | {med(lambda r: r['serve_warm']):.3f} s vs cold "
              f"{med(lambda r: r['serve_cold']):.2f} s, 1/{med(lambda r: r['serve_cold'] / r['serve_warm']):.0f} | "
              "<= 1/10 |")
    print(f"| snapshot write on the cold run (copy on the engine thread + file write) | "
          f"{med(lambda r: r['cold']['counters']['copy_s']):.3f} s + {med(lambda r: r['cold']['counters']['write_s']):.3f} s"
          f" = {100 * med(lambda r: (r['cold']['counters']['copy_s'] + r['cold']['counters']['write_s']) / r['cold']['wall_s']):.1f}%"
          f" of the run's {med(lambda r: r['cold']['wall_s']):.1f} s wall (cache off: "
          f"{med(lambda r: r['off']['wall_s']):.1f} s) | <= 3% |")
    print(f"| short prompt ({rows[0]['short_on']['prompt_tokens']} tokens), time to first token | on "
          f"{1000 * med(lambda r: r['short_on']['ttft_s']):.1f} ms, off {1000 * med(lambda r: r['short_off']['ttft_s']):.1f} ms"
          " | none measurable |")
    if "anchor_cold" in rows[0]:
        print(f"| anchor: llama-cpp-python + LlamaDiskCache | cold {med(lambda r: r['anchor_cold']['ttft_s']):.2f} s, "
              f"new process {med(lambda r: r['anchor_warm']['ttft_s']):.3f} s "
              f"(1/{med(lambda r: r['anchor_cold']['ttft_s'] / r['anchor_warm']['ttft_s']):.0f}), "
              f"{med(lambda r: r['anchor_bytes']) / 2**20:.0f} MiB on disk | |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
