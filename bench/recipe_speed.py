"""How fast each quantization recipe runs on this device: the table ``convert -q auto`` ranks by.

llama.cpp's CPU kernels differ per type and per device: it repacks Q4_0 and IQ4_NL weights
for AVX2 and NEON (interleaved rows, faster matmuls) but not Q5_0, and where the repacked
(extra) buffers are off (on this project's Xeon the AMX probe turns them off) that advantage
is gone. So a recipe's speed measured on one machine doesn't carry over to another.

:func:`tune_recipes` quantizes the candidates from one F16 conversion, times each briefly with
the benchmark's own code (:func:`edgekit.bench.measure.time_pp_tg`, loaded like
:class:`edgekit.bench.backends.Loaded`) and stores decode and prefill tokens/s per recipe in
``data_dir()/profiles/recipe-speed-<device>.json`` (:func:`edgekit.profile.write_recipe_speeds`), keyed by
the device and the llama.cpp build; the converter reads it back with :func:`edgekit.profile.read_recipe_speeds`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgekit.profile import write_recipe_speeds
from edgekit.progress import ProgressFn, report

__all__ = ["tune_recipes"]

PP_TOKENS = 128
TG_TOKENS = 32


def _time_file(path: Path, threads: int) -> dict[str, float]:
    """Brief pp and tg tokens/s of one GGUF (one load, a warm-up, one repetition each)."""
    from edgekit.bench import measure
    from edgekit.bench.backends import Loaded

    loaded = Loaded(str(path), "f16", "f16", True, threads, 512, "edgekit", 512, 512, "auto")
    try:
        loaded.ctx.clear()
        loaded.ctx.prompt(32, 512)
        loaded.ctx.gen(1)
        pp = measure.time_pp_tg(loaded.ctx, n_prompt=PP_TOKENS, n_gen=0, n_depth=0, n_batch=512, reps=1, warmup=False)
        tg = measure.time_pp_tg(loaded.ctx, n_prompt=0, n_gen=TG_TOKENS, n_depth=0, n_batch=512, reps=1, warmup=False)
        return {"pp_ts": PP_TOKENS * 1e9 / pp[0], "tg_ts": TG_TOKENS * 1e9 / tg[0],
                "size_bytes": path.stat().st_size}
    finally:
        loaded.close()


def tune_recipes(src: str | Path, recipes: list[str] | None = None, *, threads: int | None = None,
                 progress: ProgressFn | None = None) -> Path:
    """Convert ``src`` to F16 once, quantize it with each recipe, time each, and store the table.

    ``recipes`` defaults to every measured recipe in :data:`~edgekit.convert.recipes.RECIPES`.
    Returns the table's path. The quantized files are scratch files, removed afterwards.
    """
    from edgekit import _llama
    from edgekit.convert.pipeline import convert
    from edgekit.convert.recipes import RECIPES
    from edgekit.convert.tensor_quant import quantize_with_recipe
    from edgekit.gguf_check import check
    from edgekit.llama_facts import physical_cores

    names = recipes or [r.name for r in RECIPES.values() if r.measured is not None]
    n_threads = threads or physical_cores()
    rows: dict[str, dict[str, Any]] = {}
    repacked = None
    with tempfile.TemporaryDirectory(prefix="edgekit-recipe-speed-") as tmp:
        base = convert(src, out=Path(tmp), quant="f16", progress=progress)[0].path
        for i, name in enumerate(names):
            report(progress, "recipe speed", i, len(names))
            out = Path(tmp) / f"{name}.gguf"
            quantize_with_recipe(base, out, name, threads=threads)
            info = check(out)
            repacked = _llama.weight_buffers(out, info.tensor_types, info.matrices).repacked
            rows[name] = _time_file(out, n_threads)
            out.unlink()
        report(progress, "recipe speed", len(names), len(names))
        model = base.name
    return write_recipe_speeds(rows, model, repacked)
