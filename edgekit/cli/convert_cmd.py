"""``edgekit convert``: a Hugging Face checkpoint to GGUF files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def convert(
    src: Annotated[str, typer.Argument(help="Checkpoint directory or Hub repo id owner/name[@revision].")],
    quant: Annotated[str, typer.Option("-q", "--quant", help="Output types or recipes, comma-separated: f16, bf16, q8_0, q4_k_m, q4-best, auto, ...")] = "q4_k_m",
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output directory, or a .gguf path for one type.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", "-t", help="Quantizer threads (default: all cores).")] = None,
    max_kld: Annotated[float | None, typer.Option("--max-kld", help="KLD budget for -q auto (default 0.05).")] = None,
    tune: Annotated[bool, typer.Option("--tune", help="Before converting, time the recipes on this device and store "
                                       "the table -q auto ranks by (a minute or two for a 0.5B model).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary: path, type, size, sha256.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Convert a Hugging Face checkpoint to GGUF, quantized with llama.cpp's quantizer."""
    from edgekit.convert import convert as run_convert
    from edgekit.progress import rich_progress

    if tune:
        from edgekit.bench.recipe_speed import tune_recipes

        with rich_progress(enabled=not quiet and not as_json) as progress:
            table = tune_recipes(src, threads=threads, progress=progress)
        if not as_json:
            typer.echo(f"recipe speeds on this device: {table}", err=True)
    with rich_progress(enabled=not quiet and not as_json, unit_bytes=True) as progress:
        files = run_convert(src, out=out, quant=quant, force=force, threads=threads, max_kld=max_kld, progress=progress)
    if as_json:
        print(json.dumps({"outputs": [f.as_dict() for f in files]}, indent=2))
        return
    for f in files:
        typer.echo(f"wrote {f.path}  {f.type}  {f.size / 2**20:.1f} MiB")
