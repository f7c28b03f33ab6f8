"""Stream a checkpoint's tensors into a GGUF file with bounded memory.

gguf-py's GGUFWriter is used as the state machine it is (header, KV data, tensor
info, tensor data). Tensor data is streamed: each tensor is read, converted and
written in row chunks, so a conversion holds a few MiB of weights at a time and
never the whole checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edgekit.convert.archs import permute_rows
from edgekit.convert.safetensors import TensorRef, bf16_to_f32, f32_to_bf16, read_raw
from edgekit.progress import ProgressFn, report

# The float types the converter writes itself; quantized types come from llama.cpp.
FLOAT_OUT = {
    "F32": (np.float32, gguf.GGMLQuantizationType.F32, 4),
    "F16": (np.float16, gguf.GGMLQuantizationType.F16, 2),
    "BF16": (np.uint16, gguf.GGMLQuantizationType.BF16, 2),
}
CHUNK_ELEMENTS = 8 << 20


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: its GGUF name, where it comes from and how it is stored."""

    name: str
    ref: TensorRef
    out: str  # a key of FLOAT_OUT
    permute_heads: int = 0  # > 0: reorder rows for llama.cpp's rope with this many heads

    @property
    def nbytes(self) -> int:
        return self.ref.n_elements * FLOAT_OUT[self.out][2]


def _convert(raw: np.ndarray, src: str, out: str) -> np.ndarray:
    """Convert raw stored values (uint16 words for BF16) to the output storage type."""
    if src == out:
        return raw
    if out == "BF16":
        values = raw if src == "F32" else raw.astype(np.float32)
        return f32_to_bf16(values)
    values = bf16_to_f32(raw) if src == "BF16" else raw
    return values.astype(FLOAT_OUT[out][0])


def _chunks(plan: TensorPlan) -> Iterator[np.ndarray]:
    """Yield the converted tensor in row chunks (whole when rows must be permuted)."""
    ref = plan.ref
    if plan.permute_heads:
        raw = read_raw(ref)
        values = bf16_to_f32(raw) if ref.dtype == "BF16" else raw
        permuted = np.ascontiguousarray(permute_rows(values, plan.permute_heads))
        yield _convert(permuted, "F32" if ref.dtype == "BF16" else ref.dtype, plan.out)
        return
    n_rows = ref.shape[0] if ref.shape else 1
    row_elems = max(1, ref.n_elements // max(n_rows, 1))
    step = max(1, CHUNK_ELEMENTS // row_elems)
    if len(ref.shape) < 2:
        yield _convert(read_raw(ref), ref.dtype, plan.out)
        return
    for start in range(0, n_rows, step):
        yield _convert(read_raw(ref, (start, min(n_rows, start + step))), ref.dtype, plan.out)


class _StreamedTensor:
    """Quacks like the ndarray GGUFWriter.write_tensor_data expects (``nbytes``, ``tofile``).

    This lets gguf-py handle alignment and bookkeeping while the data arrives in
    chunks; the next chunk is read and converted on a second thread while the
    current one is written.
    """

    def __init__(self, plan: TensorPlan, pool: ThreadPoolExecutor, on_bytes) -> None:
        self.plan = plan
        self.nbytes = plan.nbytes
        self._pool = pool
        self._on_bytes = on_bytes

    def tofile(self, fout) -> None:
        chunks = _chunks(self.plan)
        pending = self._pool.submit(next, chunks, None)
        written = 0
        while True:
            chunk = pending.result()
            if chunk is None:
                break
            pending = self._pool.submit(next, chunks, None)
            fout.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
            written += chunk.nbytes
            self._on_bytes(chunk.nbytes)
        if written != self.nbytes:
            raise AssertionError(f"{self.plan.name}: wrote {written} bytes, expected {self.nbytes}")


def write_gguf(path: Path, writer_setup, plans: list[TensorPlan], arch: str, progress: ProgressFn | None = None) -> None:
    """Write a GGUF file: ``writer_setup(writer)`` adds the KV metadata, ``plans`` the tensors."""
    writer = gguf.GGUFWriter(path, arch)
    try:
        writer_setup(writer)
        for plan in plans:
            np_dtype, ggml_type, _ = FLOAT_OUT[plan.out]
            writer.add_tensor_info(plan.name, plan.ref.shape, np.dtype(np_dtype), plan.nbytes, raw_dtype=ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(p.nbytes for p in plans)
        done = 0

        def on_bytes(n: int) -> None:
            nonlocal done
            done += n
            report(progress, "convert", done, total)

        report(progress, "convert", 0, total)
        with ThreadPoolExecutor(max_workers=1) as pool:
            for plan in plans:
                writer.write_tensor_data(_StreamedTensor(plan, pool, on_bytes))  # type: ignore[arg-type]
    finally:
        writer.close()
