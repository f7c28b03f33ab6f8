"""Speed per architecture: edgekit against llama-cpp-python, like for like, on bench-size models.

For each architecture a bench-size checkpoint
(:func:`edgekit.samples.checkpoints.cached_bench_checkpoint`: the smallest real model's widths,
heads, head_dim, intermediate size and vocabulary rows with fewer layers, random weights; for
Gemma 3 the real 270M weights, :func:`edgekit.samples.gemma3.cached_gemma3_270m_checkpoint`) is converted once per machine with edgekit's converter (Q4_0 by
default), then :mod:`edgekit.bench.studies.runtime_perf` ``--throughput-only`` compares the two
runtimes on it (pp512 and tg128, interleaved), in two processes per architecture: one loads edgekit's
model first, the other llama-cpp-python's (the model loaded first runs a few percent slower, whichever
runtime it is). Run::

    python -m edgekit.bench.studies.arch_speed [--arch all] [--rounds 5] [--quant q4_0] [--prepare-only]

Prints one JSON line per process (runtime_perf's, with the file's size), then a summary line of the
ratios edgekit ÷ llama-cpp-python: the median of the per-round ratios of both processes (the goal:
tg_ratio ≥ 0.97 on each). ``--prepare-only``
builds and converts without measuring.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from edgekit.bench.studies.runtime_perf import paired_ratio

ARCHS = ("qwen3", "llama3", "smollm3", "gemma3", "phi3")


def bench_gguf(arch: str, quant: str = "q4_0") -> Path:
    """The bench-size GGUF of ``arch`` as ``quant``, converted by edgekit once per machine (asset cache)."""
    from edgekit.convert import convert
    from edgekit.samples.checkpoints import cached_bench_checkpoint, cached_checkpoint
    from edgekit.samples.gemma3 import cached_gemma3_270m_checkpoint

    ckpt = cached_gemma3_270m_checkpoint() if arch == "gemma3" else cached_bench_checkpoint(arch)
    name = f"{ckpt.name}-{quant}"

    def build(d: Path) -> Path:
        convert(ckpt, d / f"{name}.gguf", quant)
        return d

    return cached_checkpoint(name, build) / f"{name}.gguf"


def measure(gguf: Path, rounds: int, pp: int, tg: int, threads: int | None, llama_cpp_python_first: bool) -> dict:
    """runtime_perf's throughput comparison on ``gguf``, in a fresh process; its JSON result."""
    cmd = [sys.executable, "-m", "edgekit.bench.studies.runtime_perf", str(gguf), "--throughput-only",
           "--rounds", str(rounds), "--pp", str(pp), "--tg", str(tg)]
    if threads:
        cmd += ["--threads", str(threads)]
    if llama_cpp_python_first:
        cmd.append("--llama-cpp-python-first")
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def pooled(runs: list[dict]) -> dict:
    """The ratios over every round of ``runs`` (runtime_perf results, one per load order): the median of
    the rounds' own ratios (each round measures both runtimes side by side, while the two processes may
    run at different speeds), and each process's own."""
    def paired(test: str) -> float:
        return paired_ratio([x for r in runs for x in r["all"][f"ek_{test}"]],
                            [x for r in runs for x in r["all"][f"ll_{test}"]])

    return {"tg_ratio": paired("tg"), "pp_ratio": paired("pp"),
            "tg_ratio_by_order": {r["loaded_first"]: r["tg_ratio"] for r in runs},
            "pp_ratio_by_order": {r["loaded_first"]: r["pp_ratio"] for r in runs},
            **{k: round(statistics.median(x for r in runs for x in r["all"][k]), 1) for k in ("ek_tg", "ll_tg")},
            "ek_tg_outside_ms": [r["ek_tg_outside_ms"] for r in runs], "ll_tg_outside_ms": [r["ll_tg_outside_ms"] for r in runs]}


def main(argv: list[str] | None = None) -> None:
    """Parse the flags; prepare each architecture's GGUF, compare the runtimes on it and print JSON lines."""
    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.studies.arch_speed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=[*ARCHS, "all"], default="all", help="one architecture, or all (default)")
    ap.add_argument("--quant", default="q4_0", help="type to convert to (default: q4_0)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per load order (default: 5)")
    ap.add_argument("--pp", type=int, default=512, help="prompt tokens of the prefill test (default: 512)")
    ap.add_argument("--tg", type=int, default=128, help="tokens of the decode test (default: 128)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for both runtimes (default: edgekit's)")
    ap.add_argument("--prepare-only", action="store_true", help="build and convert, don't measure")
    a = ap.parse_args(argv)

    summary: dict[str, dict] = {}
    for arch in ARCHS if a.arch == "all" else (a.arch,):
        gguf = bench_gguf(arch, a.quant)
        size_mb = round(gguf.stat().st_size / 1e6, 1)
        if a.prepare_only:
            print(json.dumps({"arch": arch, "gguf": str(gguf), "size_mb": size_mb}), flush=True)
            continue
        runs = []
        # The model loaded first runs a few percent slower, whichever runtime it is: measure both orders.
        for llama_cpp_python_first in (False, True):
            res = measure(gguf, a.rounds, a.pp, a.tg, a.threads, llama_cpp_python_first)
            print(json.dumps({"arch": arch, "size_mb": size_mb, **res}), flush=True)
            runs.append(res)
        summary[arch] = pooled(runs)
    if summary:
        print(json.dumps({"test": "arch_speed", "quant": a.quant, "rounds": a.rounds, "pp": a.pp, "tg": a.tg,
                          "ratios": summary}))


if __name__ == "__main__":
    main()
