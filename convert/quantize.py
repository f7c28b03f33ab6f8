"""Quantize a float GGUF with llama.cpp's own quantizer (``llama_model_quantize``).

Files produced here are byte-for-byte what ``llama-quantize`` makes from the
same F16/BF16 GGUF. Per-tensor overrides (regex -> type) go through llama.cpp's
``tt_overrides``, the mechanism behind ``llama-quantize --tensor-type``.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import QuantizeError
from edgekit.llama_facts import bits_per_weight, ggml_type_id, llama_ftypes
from edgekit.progress import ProgressFn, report


@dataclass(frozen=True)
class QuantType:
    """A llama.cpp file type: its ``llama_ftype`` and about how many bits each weight takes."""

    name: str
    ftype: int
    bits_per_weight: float


# llama.cpp's file types that need no importance matrix, with bits per weight. For a
# single-type file that is the type's own size (gguf-py's block table: Q8_0 = 8.5); a
# K-quant mix keeps some tensors in a larger type (llama.cpp's per-tensor rules in
# llama-quant.cpp), so its figure is an estimate at or a little above its main type's. The
# figures only estimate output sizes: the progress bar's end and the free-space check
# (which keeps a 64 MiB margin besides).
_MIX_BITS = {"Q5_K_M": 5.7, "Q5_K_S": 5.5, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q3_K_L": 4.3, "Q3_K_M": 3.9,
             "Q3_K_S": 3.5, "Q2_K": 3.0}
QUANT_TYPES: dict[str, QuantType] = {
    name.lower(): QuantType(name, llama_ftypes()[name], _MIX_BITS.get(name) or bits_per_weight(name))
    for name in ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
                 "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")
}
FLOAT_TYPES = ("f32", "f16", "bf16")


def ggml_type(name: str) -> int:
    """A ggml tensor type's number from its name (``q4_k``, ``Q8_0``, ...)."""
    try:
        return ggml_type_id(name)
    except KeyError:
        raise QuantizeError(f"unknown tensor type {name!r}") from None


def quant_type(name: str) -> QuantType:
    """Look a type up by name (case-insensitive), or raise with the list of known types."""
    found = QUANT_TYPES.get(name.lower())
    if found is None:
        raise QuantizeError(f"unknown type {name!r}", f"Known types: {', '.join(q.name for q in QUANT_TYPES.values())}.")
    return found


def quantize(
    src: Path,
    dst: Path,
    qtype: str,
    *,
    overrides: list[tuple[str, str]] | None = None,
    pure: bool = False,
    token_embedding_type: str | None = None,
    output_tensor_type: str | None = None,
    threads: int | None = None,
    expected_bytes: int = 0,
    progress: ProgressFn | None = None,
    stage: str | None = None,
) -> None:
    """Quantize ``src`` (an F32/F16/BF16 GGUF) to ``dst`` as ``qtype``.

    ``overrides`` are (regex on tensor name, ggml type) pairs applied on top of
    the file type, as ``llama-quantize --tensor-type`` does; ``pure`` stops
    llama.cpp's own per-tensor mixture rules (``--pure``), and the embedding and
    output types can be set apart (``--token-embedding-type``,
    ``--output-tensor-type``). The call runs on a
    worker thread so Ctrl-C stays responsive; progress is the output's growth
    towards ``expected_bytes``.
    """
    from edgekit import _llama

    llama_cpp = _llama.lib()  # its log callback keeps llama.cpp's per-tensor log off the terminal
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant_type(qtype).ftype
    params.nthread = threads or os.cpu_count() or 1
    params.pure = pure
    if token_embedding_type:
        params.token_embedding_type = ggml_type(token_embedding_type)
    if output_tensor_type:
        params.output_tensor_type = ggml_type(output_tensor_type)
    keep: list[object] = []  # C strings and the table must outlive the call
    if overrides:
        table = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, type_name) in enumerate(overrides):
            encoded = pattern.encode()
            keep.append(encoded)
            table[i].pattern = encoded
            table[i].type = ggml_type(type_name)
        table[len(overrides)].pattern = None
        params.tt_overrides = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(table)

    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        ),
        daemon=True,
    )
    label = stage or qtype.upper()
    report(progress, label, 0, expected_bytes)
    worker.start()
    while worker.is_alive():
        worker.join(0.05)
        if expected_bytes and dst.exists():
            report(progress, label, min(dst.stat().st_size, expected_bytes), expected_bytes)
    if not result or result[0] != 0:
        raise QuantizeError(
            f"llama.cpp could not quantize {src.name} to {qtype.upper()}",
            "Run with EDGEKIT_DEBUG=1 to see llama.cpp's log.",
        )
    report(progress, label, expected_bytes, expected_bytes)
    time.sleep(0)  # let the progress bar draw its last state
