"""Benchmark ``edgekit serve`` against llama.cpp's ``llama-server`` (issue 12, section 4).

Sections (``--only`` picks some):

- ``scaling``: aggregate decode speed with 1/2/4/8 concurrent streaming clients (openai client,
  ``--max-tokens`` each, end-of-generation tokens banned so every answer has the same length),
  edgekit and llama-server in interleaved rounds on the same GGUF, threads and context per slot.
  Also the fairness of each run: the slowest client's rate over the mean rate.
- ``single``: one streaming client against ``Model.stream`` in-process (the HTTP/SSE overhead).
- ``long_prompt``: 4 running streams, then a ``--long-prompt``-token prompt arrives: the p95 gap
  between tokens of the running streams before it arrived and while it was prefilled.
- ``soak``: ``--soak`` requests, a random quarter disconnected mid-stream; every other request must
  complete, and the server's RSS at the end is compared with its RSS after warm-up.
- ``footprint``: the server's RSS minus a bare ``edgekit.load`` + generate in its own process.

Run it alone on the machine (speed collapses under contention). ``EDGEKIT_REPACK=0`` in the
environment gives edgekit the same weight buffers as ``llama-server --no-repack``. llama-server is
the one on ``PATH`` unless ``--llama-server`` names it (``none``: edgekit alone). Example:

    python -m edgekit.bench.studies.serve_bench --model qwen2.5-0.5B-Q4_0.gguf --threads 2 --out serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import BenchError, EdgekitError

READY = re.compile(r"ready at (http://\S+)/v1 ")
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 600
SECTIONS = ("scaling", "single", "long_prompt", "soak", "footprint")


# -- servers ----------------------------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    url: str
    model_id: str = "model"
    log: list[str] = field(default_factory=list)

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def _drain(pipe: Any, log: list[str], ready: threading.Event, found: list[str]) -> None:
    for line in pipe:
        log.append(line)
        m = READY.search(line)
        if m and not found:
            found.append(m.group(1))
            ready.set()
    ready.set()


def start_edgekit(model: str, *, slots: int, ctx: int, threads: int, speculative: str, queue: int = 64) -> Server:
    cmd = [sys.executable, "-m", "edgekit", "serve", model, "--port", "0", "--slots", str(slots), "--queue",
           str(queue), "--ctx", str(ctx), "--threads", str(threads), "--speculative", speculative]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    ready, found = threading.Event(), []
    threading.Thread(target=_drain, args=(proc.stdout, log, ready, found), daemon=True).start()
    if not ready.wait(START_TIMEOUT_S) or not found:
        proc.kill()
        raise BenchError("edgekit serve did not start:\n" + "".join(log))
    import httpx

    model_id = httpx.get(found[0] + "/v1/models", timeout=60).json()["data"][0]["id"]
    return Server("edgekit", proc, found[0], model_id, log)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(binary: Path, model: str, *, slots: int, ctx: int, threads: int) -> Server:
    """llama-server with the settings edgekit uses: flash attention on, f16 KV, ``ctx`` per slot,
    no weight repacking (its AMX buffers crash batched decodes on some Xeons)."""
    import httpx

    port = _free_port()
    cmd = [str(binary), "-m", model, "-np", str(slots), "-c", str(ctx * slots), "-t", str(threads), "-tb",
           str(threads), "-fa", "on", "--no-repack", "--no-webui", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log: list[str] = []
    threading.Thread(target=_drain, args=(proc.stdout, log, threading.Event(), []), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < end and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return Server("llama-server", proc, url, "model", log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise BenchError("llama-server did not start:\n" + "".join(log[-30:]))


# -- clients ----------------------------------------------------------------------------------------------------

def eog_bias(model: str) -> dict[str, int]:
    """logit_bias banning the model's end-of-generation tokens (llama.cpp's own list), so every answer
    runs to max_tokens."""
    from edgekit import _llama

    return {str(t): -100 for t in _llama.eog_tokens(Path(model))}


def find_llama_server(option: str | None) -> Path | None:
    """The llama-server binary: ``option`` if given (``"none"``: no comparison), else the one on PATH."""
    if option == "none":
        return None
    found = shutil.which(option or "llama-server")
    if found is None:
        raise BenchError(f"llama-server not found ({option or 'not on PATH'})",
                         "Name the binary with --llama-server PATH, or pass --llama-server none to measure "
                         "edgekit alone.")
    return Path(found)


@dataclass
class Run:
    start: float = 0.0
    stamps: list[float] = field(default_factory=list)  # arrival time of each content chunk
    tokens: int = 0
    finished: bool = False

    @property
    def end(self) -> float:
        return self.stamps[-1] if self.stamps else self.start

    def rate(self) -> float:
        return self.tokens / (self.end - self.start) if self.end > self.start else 0.0


def stream_once(server: Server, prompt: str, max_tokens: int, bias: dict[str, int], *,
                disconnect_after: int | None = None, run: Run | None = None) -> Run:
    """One streaming chat request; ``disconnect_after`` chunks closes it early."""
    import openai

    run = run or Run()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=REQUEST_TIMEOUT_S, max_retries=0)
    run.start = time.perf_counter()
    stream = client.chat.completions.create(
        model=server.model_id, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0, logit_bias=bias, stream=True, stream_options={"include_usage": True})
    with stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                run.stamps.append(time.perf_counter())
                if disconnect_after is not None and len(run.stamps) >= disconnect_after:
                    return run
            if chunk.choices and chunk.choices[0].finish_reason:
                run.finished = True
            if chunk.usage is not None:
                run.tokens = chunk.usage.completion_tokens
    return run


def concurrent(server: Server, clients: int, max_tokens: int, bias: dict[str, int]) -> dict[str, float]:
    runs = [Run() for _ in range(clients)]
    threads = [threading.Thread(target=stream_once, args=(server, f"Client {i}: tell a long story about the "
                                                          f"number {i}.", max_tokens, bias), kwargs={"run": runs[i]})
               for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r.end for r in runs) - t0
    rates = [r.rate() for r in runs]
    return {"clients": clients, "aggregate_tps": sum(r.tokens for r in runs) / wall,
            "fairness": min(rates) / statistics.mean(rates) if statistics.mean(rates) else 0.0,
            "complete": all(r.finished and r.tokens == max_tokens for r in runs)}


def p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.95 * len(values)))] if values else 0.0


def long_prompt_gaps(server: Server, max_tokens: int, bias: dict[str, int], prompt_tokens: int) -> dict[str, float]:
    """p95 token gap of 4 running streams before and while a long prompt is prefilled.

    A gap counts as "during" when it overlaps the long request (from sending it to its answer),
    so a server that freezes the streams for the whole prefill shows that one long gap.
    """
    import openai

    runs = [Run() for _ in range(4)]
    threads = [threading.Thread(target=stream_once, args=(server, f"Stream {i}: count slowly.", max_tokens, bias),
                                kwargs={"run": runs[i]}) for i in range(4)]
    for t in threads:
        t.start()
    warm = min(20, max_tokens // 4)  # gaps before the long prompt: after each stream's first few tokens
    while min(len(r.stamps) for r in runs) < warm and all(t.is_alive() for t in threads):
        time.sleep(0.01)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=REQUEST_TIMEOUT_S, max_retries=0)
    t_arrive = time.perf_counter()
    client.chat.completions.create(model=server.model_id, max_tokens=1,
                                   messages=[{"role": "user", "content": " hello" * prompt_tokens}])
    t_done = time.perf_counter()
    for t in threads:
        t.join()
    before, during = [], []
    for r in runs:
        gaps = list(zip(r.stamps[1:], [b - a for a, b in zip(r.stamps, r.stamps[1:], strict=False)], strict=False))
        before += [g for t, g in gaps if t < t_arrive]
        during += [g for t, g in gaps if t > t_arrive and t - g < t_done]
    return {"p95_gap_before_s": p95(before), "p95_gap_during_s": p95(during), "max_gap_during_s": max(during, default=0),
            "ratio": p95(during) / p95(before) if p95(before) else 0.0, "long_prompt_s": t_done - t_arrive}


def soak(server: Server, requests: int, concurrency: int, bias: dict[str, int], seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    plan = [(rng.randint(16, 64), rng.randint(1, 8) if rng.random() < 0.25 else None) for _ in range(requests)]
    results: list[tuple[int, int | None, Run | BaseException]] = []
    lock = threading.Lock()
    next_i = [0]
    warm = [0.0]
    warm_at = min(20, requests // 4)

    def worker() -> None:
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= requests:
                return
            max_tokens, cut = plan[i]
            try:
                out: Run | BaseException = stream_once(server, f"Request {i}.", max_tokens, bias, disconnect_after=cut)
            except Exception as exc:
                out = exc
            with lock:
                results.append((max_tokens, cut, out))
                if len(results) == warm_at:
                    warm[0] = server.rss_mb()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = [(m, r) for m, cut, r in results if cut is None]
    ok = [1 for m, r in kept if isinstance(r, Run) and r.finished and r.tokens == m]
    end = server.rss_mb()
    return {"requests": requests, "disconnected": requests - len(kept), "kept": len(kept), "kept_completed": len(ok),
            "rss_warm_mb": warm[0], "rss_end_mb": end, "rss_growth": end / warm[0] - 1 if warm[0] else 0.0}


def in_process_rate(model: str, ctx: int, threads: int, max_tokens: int, bias: dict[str, int],
                    speculative: str) -> float:
    import edgekit

    with edgekit.load(model, n_ctx=ctx, threads=threads, speculative=speculative) as m:
        messages = [{"role": "user", "content": "Client 0: tell a long story about the number 0."}]
        t0 = time.perf_counter()
        stats = None
        for item in m.stream_chat(messages, temperature=0, max_tokens=max_tokens,
                                  logit_bias={int(k): v for k, v in bias.items()}):
            if not isinstance(item, str):
                stats = item
        return stats.gen_tokens / (time.perf_counter() - t0)  # type: ignore[union-attr]


def bare_model_rss_mb(model: str, ctx: int, threads: int, slots: int) -> float:
    code = ("import psutil, edgekit\n"
            f"m = edgekit.load({model!r}, n_ctx={ctx}, threads={threads}, slots={slots})\n"
            "m.generate('Hello', max_tokens=16)\n"
            "print(psutil.Process().memory_info().rss)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 2**20


# -- main ----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.studies.serve_bench",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="GGUF file both servers load")
    ap.add_argument("--llama-server", help="llama-server binary (default: the one on PATH; 'none' to skip it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speculative", default="auto", choices=("auto", "ngram", "off"),
                    help="edgekit's speculative decoding (llama-server drafts nothing by default)")
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--clients", default="1,2,4,8", help="concurrent clients to measure (servers get max slots)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the scaling section")
    ap.add_argument("--long-prompt", type=int, default=1000, help="tokens of the prompt that arrives mid-stream")
    ap.add_argument("--soak", type=int, default=200, help="requests in the soak section")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run: {','.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except EdgekitError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    llama_server = find_llama_server(args.llama_server)
    sections = set(args.only.split(","))
    clients = [int(c) for c in args.clients.split(",")]
    slots = max(clients)
    bias = eog_bias(args.model)
    results: dict[str, Any] = {"model": args.model, "threads": args.threads, "ctx_per_slot": args.ctx,
                               "max_tokens": args.max_tokens, "slots": slots, "speculative": args.speculative,
                               "repack": os.environ.get("EDGEKIT_REPACK", "auto")}
    kinds = ["edgekit"] + (["llama-server"] if llama_server is not None else [])

    def start(kind: str) -> Server:
        """One server at a time, so an idle one never competes for the cores."""
        if kind == "edgekit":
            server = start_edgekit(args.model, slots=slots, ctx=args.ctx, threads=args.threads,
                                   speculative=args.speculative)
        else:
            assert llama_server is not None
            server = start_llama_server(llama_server, args.model, slots=slots, ctx=args.ctx, threads=args.threads)
        stream_once(server, "Warm up.", 8, bias)  # first touch of the weights and buffers
        return server

    if "scaling" in sections:
        rows = []
        for r in range(args.rounds):
            for kind in kinds:
                server = start(kind)
                try:
                    for c in clients:
                        row = {"round": r, "server": kind, **concurrent(server, c, args.max_tokens, bias)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                finally:
                    server.stop()
        results["scaling"] = rows
    if "long_prompt" in sections:
        results["long_prompt"] = {}
        for kind in kinds:
            server = start(kind)
            try:  # the streams must outlast the long prompt's prefill: 4x the usual answer length
                results["long_prompt"][kind] = long_prompt_gaps(server, args.max_tokens * 4, bias, args.long_prompt)
            finally:
                server.stop()
        print(json.dumps(results["long_prompt"]), flush=True)
    if sections & {"single", "soak", "footprint"}:
        server = start("edgekit")
        try:
            if "single" in sections:
                served = max(concurrent(server, 1, args.max_tokens, bias)["aggregate_tps"] for _ in range(2))
                local = max(in_process_rate(args.model, args.ctx, args.threads, args.max_tokens, bias,
                                            args.speculative) for _ in range(2))
                results["single"] = {"served_tps": served, "in_process_tps": local, "ratio": served / local}
                print(json.dumps(results["single"]), flush=True)
            if "footprint" in sections:  # before the soak: the server as a client sees it after warm-up
                server_rss = server.rss_mb()
                bare = bare_model_rss_mb(args.model, args.ctx, args.threads, slots)
                results["footprint"] = {"server_rss_mb": server_rss, "bare_model_rss_mb": bare,
                                        "added_mb": server_rss - bare}
                print(json.dumps(results["footprint"]), flush=True)
            if "soak" in sections:
                results["soak"] = soak(server, args.soak, min(4, slots), bias)
                print(json.dumps(results["soak"]), flush=True)
        finally:
            server.stop()
    print(summary(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


def summary(results: dict[str, Any]) -> str:
    lines = []
    rows = results.get("scaling", [])
    for name in dict.fromkeys(r["server"] for r in rows):
        by_clients: dict[int, list[float]] = {}
        for r in rows:
            if r["server"] == name:
                by_clients.setdefault(r["clients"], []).append(r["aggregate_tps"])
        best = {c: max(v) for c, v in by_clients.items()}
        single = best.get(1) or 0.0
        cells = ", ".join(f"{c} clients {tps:.1f} tok/s ({tps / single:.2f}x)" if single else f"{c}: {tps:.1f}"
                          for c, tps in sorted(best.items()))
        lines.append(f"{name}: {cells}")
    for key in ("single", "long_prompt", "soak", "footprint"):
        if key in results:
            lines.append(f"{key}: {json.dumps(results[key])}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
