"""Facts about llama.cpp that edgekit depends on, each written once.

Type ids and block sizes come from gguf-py (``gguf.GGMLQuantizationType``,
``gguf.GGML_QUANT_SIZES``, ``gguf.LlamaFileType``), which llama.cpp keeps in step
with ggml; the rest say which part of llama.cpp they mirror. The planner, the
runtime, the converter and the benchmark all import from here.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

__all__ = ["KV_CACHE_TYPES", "CTX_ALIGN", "ggml_type_id", "ggml_type_name", "block_size", "bits_per_weight", "kv_bytes_per_value",
           "is_quantized", "llama_ftypes", "kv_bytes_per_token", "physical_cores", "resolve_gpu_layers"]

# gguf-py (and numpy with it) is imported on first use, so importing edgekit, its planner
# or edgekit.bench stays light.


def _gguf() -> Any:
    import gguf

    return gguf


def ggml_type_id(name: str) -> int:
    """The ggml type number of ``name`` (``"q8_0"``, ``"F16"``, ...); KeyError if ggml has no such type."""
    return int(_gguf().GGMLQuantizationType[name.upper()])


def ggml_type_name(type_id: int) -> str:
    """The ggml type name of a tensor type number (``2`` -> ``"Q4_0"``); ValueError if ggml has no such type."""
    return _gguf().GGMLQuantizationType(type_id).name


@cache
def _block(name: str) -> tuple[int, int]:
    gguf = _gguf()
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]


def block_size(name: str) -> int:
    """Values per block of a ggml type (1 for float types, 32 for Q8_0, 256 for the K-quants)."""
    return _block(name)[0]


def bits_per_weight(name: str) -> float:
    """Bits each value takes in a ggml type: block bytes x 8 / block size (Q8_0: 34 x 8 / 32 = 8.5)."""
    block, nbytes = _block(name)
    return nbytes * 8 / block


def is_quantized(name: str) -> bool:
    """Whether a ggml type packs values in blocks (q8_0, q4_0, ...) rather than one float each."""
    return block_size(name) > 1


# The KV cache types llama.cpp accepts for type_k / type_v (the list its common
# arguments parser offers for --cache-type-k/-v).
KV_CACHE_TYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


def kv_bytes_per_value(name: str) -> float:
    """Bytes one cached K or V value takes in a KV cache type (q8_0: 34 / 32)."""
    return bits_per_weight(name) / 8


# llama.cpp rounds every context up to a multiple of 256 cells (llama-context.cpp pads
# n_ctx with GGML_PAD(n_ctx, 256)), so contexts edgekit picks itself are multiples of it.
CTX_ALIGN = 256


@cache
def llama_ftypes() -> dict[str, int]:
    """llama_ftype values by type name ("Q4_K_M", "F16", ...), from gguf-py's ``LlamaFileType``.

    MOSTLY_Q4_K_M -> "Q4_K_M", ALL_F32 -> "F32"; GUESSED is not a file type one can ask for.
    """
    return {ft.name.removeprefix("MOSTLY_").removeprefix("ALL_"): int(ft)
            for ft in _gguf().LlamaFileType if ft.name != "GUESSED"}


def kv_bytes_per_token(values_per_token: tuple[int, int], type_k: str, type_v: str) -> float:
    """KV cache bytes per token of context, for (K values, V values) per token over all layers.

    llama.cpp stores n_layer x n_head_kv x head_dim values each for K and V per cell; a
    quantized type packs them in blocks (q8_0: 32 values in 34 bytes).
    """
    k_values, v_values = values_per_token
    return k_values * kv_bytes_per_value(type_k) + v_values * kv_bytes_per_value(type_v)


def physical_cores() -> int:
    """Physical CPU cores, edgekit's default thread count (logical ones where psutil can't tell)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def resolve_gpu_layers(value: int | str, n_layer: int) -> int:
    """llama.cpp's ``n_gpu_layers`` for a ``gpu_layers`` setting, as an explicit count.

    llama.cpp counts ``n_layer`` repeating blocks plus the output layer, so every layer is
    ``n_layer + 1``. ``"auto"`` is every layer where the build offloads (Metal, CUDA) and 0
    elsewhere; a negative number is every layer, as in llama.cpp. The count (not llama.cpp's
    "-1 = all") is what edgekit passes and reports, so ``Model.gpu_layers``, bench records and
    llama-bench's ``-ngl`` all say how many layers really went to the GPU.
    """
    from edgekit.errors import EdgekitError

    every = n_layer + 1
    if value == "auto":
        from edgekit import _llama

        return every if _llama.supports_gpu_offload() else 0
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise EdgekitError(f"gpu_layers must be 'auto' or a number, got {value!r}") from None
    return every if n < 0 else min(n, every)
