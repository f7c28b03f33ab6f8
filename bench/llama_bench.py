"""Run llama.cpp's own ``llama-bench`` with the same settings as one of our tests.

The runner calls :func:`run_case` right after measuring the same test itself, so
the two measurements are interleaved (they see the same machine state) and the
ratio is fair. llama-bench's JSONL fields are kept under our schema's names,
which are the same names.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgekit.errors import BenchError

from . import records

__all__ = ["command", "run", "run_case", "find_binary", "parse_output"]


def find_binary(path: str) -> str:
    """Resolve the llama-bench path (a file, or a name on PATH); raise BenchError if it isn't runnable."""
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (p / "llama-bench", p / "bin" / "llama-bench"):
            if candidate.is_file():
                return str(candidate)
    if p.is_file():
        return str(p)
    found = shutil.which(path)
    if found:
        return found
    raise BenchError(f"llama-bench not found at {path}",
                     "Build it from llama.cpp (cmake --build BUILD --target llama-bench) and pass BUILD/bin/llama-bench.")


def command(binary: str, group: Any, grid: Any, case: Any, gpu_layers: int) -> list[str]:
    """The llama-bench argv measuring ``case`` with the group's load settings.

    ``gpu_layers`` is the explicit layer count edgekit's loader resolved (``Model.gpu_layers``), for ``-ngl``.
    """
    return [
        binary, "-m", str(group.model), "-p", str(case.n_prompt), "-n", str(case.n_gen), "-d", str(case.n_depth),
        "-t", str(group.threads), "-ctk", group.type_k, "-ctv", group.type_v,
        "-fa", "on" if group.flash_attn else "off", "-b", str(grid.n_batch), "-ub", str(group.n_ubatch),
        "-ngl", str(gpu_layers), "-r", str(grid.reps), "-o", "jsonl",
        *([] if grid.warmup else ["--no-warmup"]),
    ]


def parse_output(stdout: str) -> list[dict[str, Any]]:
    """llama-bench's JSONL lines as dicts (other lines ignored)."""
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def run(argv: list[str], *, timeout: float | None = None) -> list[dict[str, Any]]:
    """Run llama-bench (``argv[0]``) with ``-o jsonl``; its result rows, or one clear BenchError."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except OSError as exc:
        raise BenchError(f"could not run llama-bench: {exc.strerror or exc}", "Check the llama-bench path.") from None
    rows = parse_output(proc.stdout)
    if proc.returncode != 0 or not rows:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"llama-bench failed (exit {proc.returncode}): {last}",
                         "Run the same command by hand to see why: " + " ".join(argv))
    return rows


def run_case(binary: str, group: Any, grid: Any, case: Any, device: dict[str, Any], gpu_layers: int) -> dict[str, Any]:
    """Run llama-bench for one pp/tg test; return its result as an edgekit record with engine "llama-bench"."""
    rows = run(command(find_binary(binary), group, grid, case, gpu_layers), timeout=3600)
    theirs = rows[-1]
    known = {k: theirs[k] for k in records.FIELDS if k in theirs}
    known.update(
        engine="llama-bench", test=case.test, name=None, model_filename=str(group.model),
        flash_attn=int(group.flash_attn) if int(theirs.get("flash_attn", -1)) < 0 else int(theirs["flash_attn"]),
        reps=len(theirs.get("samples_ns") or []) or grid.reps, warmup=grid.warmup, edgekit_version=device.get("edgekit"),
        llama_cpp_python=device.get("llama_cpp_python"), device_id=device["device_id"], device=device,
        cpu_info=theirs.get("cpu_info") or device.get("cpu_model"),
    )
    return records.make_record(**known)
