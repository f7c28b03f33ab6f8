"""Conversion benchmark: edgekit convert against llama.cpp's convert_hf_to_gguf.py and llama-quantize.

Both run on the same checkpoint on the same machine, interleaved, each as a
separate process so wall time and peak RSS (``wait4``'s ``ru_maxrss``) are
measured the same way. Run::

    python -m edgekit.bench.studies.convert_bench --llama-cpp DIR --quantize-bin PATH --python PY

where DIR is the llama.cpp source (with convert_hf_to_gguf.py and gguf-py, which the script
puts on its own path), PATH a built ``llama-quantize`` and PY a Python that has torch,
transformers and sentencepiece (what convert_hf_to_gguf.py needs). ``--f16-only`` measures the
checkpoint → F16 step alone and needs no llama-quantize. The checkpoint defaults to the
full-size Qwen2.5-0.5B architecture with the real vocabulary and random weights;
``--sample gemma3-270m`` is the real Gemma 3 270M in bf16. Both F16 outputs are read back
with :func:`edgekit.gguf_check.check` so a conversion that wrote a broken file fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Run ``cmd``; return (wall seconds, peak RSS bytes) of the child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return wall, usage.ru_maxrss * 1024


SAMPLES = {"qwen2.5-0.5b": "full-size random Qwen2.5-0.5B architecture, bf16 (the default)",
           "gemma3-270m": "the real Gemma 3 270M weights, bf16"}


def sample_checkpoint(name: str) -> Path:
    """The cached checkpoint a name of :data:`SAMPLES` stands for (built once per machine, in a subprocess:
    Linux carries a process's peak RSS into the children it starts, so building the 4 GB Gemma sample in
    this process made every measured step report 4128 MiB)."""
    code = f"from edgekit.bench.studies.convert_bench import _build; print(_build({name!r}))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def _build(name: str) -> Path:
    if name == "gemma3-270m":
        from edgekit.samples.gemma3 import cached_gemma3_270m_checkpoint

        return cached_gemma3_270m_checkpoint("bf16")
    from edgekit.samples.checkpoints import cached_full_size_qwen2_checkpoint

    return cached_full_size_qwen2_checkpoint()


def _describe(gguf: Path) -> dict:
    """What the F16 GGUF holds, read back with edgekit's checker (which raises on a broken file)."""
    from edgekit.gguf_check import check

    info = check(gguf)
    return {"arch": info.arch, "n_tensors": info.n_tensors, "n_layer": info.n_layer, "n_vocab": info.n_vocab,
            "types": sorted(info.tensor_types)}


def run(checkpoint: Path, llama_cpp: Path, quantize_bin: Path | None, ref_python: str, reps: int = 3) -> dict:
    """Interleave the steps ``reps`` times; return medians and ratios.

    Without ``quantize_bin`` only the two F16 conversions run (no Q4_K_M steps, no end-to-end ratio).
    """
    steps = ("edgekit_f16", "llama_f16") + (("edgekit_q4_k_m", "llama_quantize_q4_k_m") if quantize_bin else ())
    samples: dict[str, list[tuple[float, int]]] = {k: [] for k in steps}
    with tempfile.TemporaryDirectory(dir=checkpoint.parent) as tmp:
        work = Path(tmp)
        ref_f16 = work / "ref-f16.gguf"
        for _ in range(reps):
            samples["edgekit_f16"].append(measure(
                [sys.executable, "-m", "edgekit", "convert", str(checkpoint), "-q", "f16", "-o", str(work / "ek-f16.gguf"),
                 "--quiet", "--force"]))
            samples["llama_f16"].append(measure(
                [ref_python, str(llama_cpp / "convert_hf_to_gguf.py"), str(checkpoint), "--outtype", "f16",
                 "--outfile", str(ref_f16)]))
            if quantize_bin is None:
                continue
            samples["edgekit_q4_k_m"].append(measure(
                [sys.executable, "-m", "edgekit", "convert", str(checkpoint), "-q", "q4_k_m", "-o",
                 str(work / "ek-q4km.gguf"), "--quiet", "--force"]))
            samples["llama_quantize_q4_k_m"].append(measure(
                # all logical cores: what edgekit convert's quantizer uses by default
                [str(quantize_bin), str(ref_f16), str(work / "ref-q4km.gguf"), "Q4_K_M", str(os.cpu_count())]))
        sizes = {p.name: p.stat().st_size for p in work.glob("*.gguf")}
        outputs = {"edgekit_f16": _describe(work / "ek-f16.gguf"), "llama_f16": _describe(ref_f16)}
    medians = {k: {"wall_s": statistics.median(w for w, _ in v), "peak_rss_mb": statistics.median(r for _, r in v) / 2**20,
                   "samples_s": [round(w, 3) for w, _ in v]} for k, v in samples.items()}
    ratios = {
        "f16_wall_edgekit_over_llama": medians["edgekit_f16"]["wall_s"] / medians["llama_f16"]["wall_s"],
        "f16_rss_edgekit_over_llama": medians["edgekit_f16"]["peak_rss_mb"] / medians["llama_f16"]["peak_rss_mb"],
    }
    if quantize_bin:
        ratios["q4_k_m_wall_edgekit_end_to_end_over_llama_two_steps"] = medians["edgekit_q4_k_m"]["wall_s"] / (
            medians["llama_f16"]["wall_s"] + medians["llama_quantize_q4_k_m"]["wall_s"])
    return {"checkpoint": str(checkpoint), "reps": reps, "medians": medians, "ratios": ratios, "sizes": sizes,
            "outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, run the interleaved comparison and print it as JSON."""
    parser = argparse.ArgumentParser(prog="python -m edgekit.bench.studies.convert_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=Path, help="HF checkpoint directory")
    which.add_argument("--sample", choices=sorted(SAMPLES), default="qwen2.5-0.5b",
                       help="a cached checkpoint: " + "; ".join(f"{k}: {v}" for k, v in SAMPLES.items()))
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source dir (has convert_hf_to_gguf.py)")
    parser.add_argument("--quantize-bin", type=Path, help="a built llama-quantize (needed unless --f16-only)")
    parser.add_argument("--f16-only", action="store_true", help="measure checkpoint -> F16 alone (no llama-quantize)")
    parser.add_argument("--python", default=sys.executable, help="Python with torch+transformers for convert_hf_to_gguf.py")
    parser.add_argument("-r", "--reps", type=int, default=3, help="interleaved rounds (default: 3)")
    args = parser.parse_args(argv)
    if not args.f16_only and args.quantize_bin is None:
        parser.error("--quantize-bin is required unless --f16-only")
    checkpoint = args.checkpoint or sample_checkpoint(args.sample)
    quantize_bin = None if args.f16_only else args.quantize_bin
    print(json.dumps(run(checkpoint, args.llama_cpp, quantize_bin, args.python, args.reps), indent=2))


if __name__ == "__main__":
    main()
