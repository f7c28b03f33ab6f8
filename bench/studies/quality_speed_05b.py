"""Decode speed and size of plain types against recipes on the full-size Qwen2.5-0.5B architecture.

The weights are random (speed does not depend on them), so this measures speed
and size only. Run: ``python -m edgekit.bench.studies.quality_speed_05b [--tokens 64] [--rounds 3] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, convert and quantize once (cached), time decode of each type; print JSON."""
    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.studies.quality_speed_05b",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per timed round (default: 64)")
    ap.add_argument("--rounds", type=int, default=3, help="timed decode rounds after one warm-up (default: 3)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: edgekit's, the physical cores)")
    a = ap.parse_args(argv)

    from edgekit.bench.studies.quality import decode_speed
    from edgekit.convert import convert
    from edgekit.convert.recipes import RECIPES
    from edgekit.convert.tensor_quant import quantize_plain, quantize_with_recipe
    from edgekit.samples.assets import CACHE
    from edgekit.samples.checkpoints import cached_full_size_qwen2_checkpoint

    work = CACHE / "quality-qwen05"
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / "qwen05.F16.gguf"
    if not f16.exists():
        convert(cached_full_size_qwen2_checkpoint(), out=f16, quant="f16")
    paths = {"F16": f16}
    for name in ["Q8_0", "Q4_K_M", "Q4_0", *RECIPES]:
        path = work / f"{name}.gguf"
        if not path.exists():
            (quantize_with_recipe if name in RECIPES else quantize_plain)(f16, path, name)
        paths[name] = path
    speed = decode_speed(paths, a.tokens, a.rounds, a.threads)
    rows = {n: {"size": p.stat().st_size, "tg": speed[n], "tg_ratio": speed[n] / speed["F16"]} for n, p in paths.items()}
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
