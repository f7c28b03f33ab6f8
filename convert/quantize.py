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
from edgekit.progress import ProgressFn, report


@dataclass(frozen=True)
class QuantType:
    """A llama.cpp file type: its ``llama_ftype`` and about how many bits each weight takes."""

    name: str
    ftype: int
    bits_per_weight: float


# llama.cpp's file types that need no importance matrix (llama_ftype values).
QUANT_TYPES: dict[str, QuantType] = {
    q.name.lower(): q
    for q in (
        QuantType("F32", 0, 32.0),
        QuantType("F16", 1, 16.0),
        QuantType("BF16", 32, 16.0),
        QuantType("Q8_0", 7, 8.5),
        QuantType("Q6_K", 18, 6.6),
        QuantType("Q5_K_M", 17, 5.7),
        QuantType("Q5_K_S", 16, 5.5),
        QuantType("Q5_1", 9, 6.0),
        QuantType("Q5_0", 8, 5.5),
        QuantType("Q4_K_M", 15, 4.9),
        QuantType("Q4_K_S", 14, 4.6),
        QuantType("Q4_1", 3, 5.0),
        QuantType("Q4_0", 2, 4.5),
        QuantType("IQ4_NL", 25, 4.5),
        QuantType("IQ4_XS", 30, 4.3),
        QuantType("Q3_K_L", 13, 4.3),
        QuantType("Q3_K_M", 12, 3.9),
        QuantType("Q3_K_S", 11, 3.5),
        QuantType("Q2_K", 10, 3.0),
    )
}
FLOAT_TYPES = ("f32", "f16", "bf16")



def ggml_type(name: str) -> int:
    """A ggml tensor type's number from its name (``q4_k``, ``Q8_0``, ...)."""
    import gguf

    try:
        return int(gguf.GGMLQuantizationType[name.upper()])
    except KeyError:
        raise QuantizeError(f"unknown tensor type {name!r}") from None


def quant_type(name: str) -> QuantType:
    """Look a type up by name (case-insensitive), or raise with the list of known types."""
    found = QUANT_TYPES.get(name.lower())
    if found is None:
        raise QuantizeError(f"unknown type {name!r}", f"Known types: {', '.join(q.name for q in QUANT_TYPES.values())}.")
    return found


def _silence_llama_logs() -> None:
    """llama.cpp logs every tensor it quantizes to stderr; keep the terminal for our progress bar."""
    import llama_cpp

    if not getattr(_silence_llama_logs, "done", False):
        @llama_cpp.llama_log_callback
        def _quiet(level, text, user_data):  # noqa: ARG001
            return None

        _silence_llama_logs.callback = _quiet  # keep a reference alive
        if os.environ.get("EDGEKIT_DEBUG") != "1":
            llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
        _silence_llama_logs.done = True


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
    import llama_cpp

    _silence_llama_logs()
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
