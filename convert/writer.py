"""Stream a checkpoint's tensors into a GGUF file with bounded memory.

gguf-py's GGUFWriter is used as the state machine it is (header, KV data, tensor
info, tensor data). Tensor data is streamed: each tensor is read, converted and
written in row chunks, so a conversion holds a few MiB of weights at a time and
never the whole checkpoint.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edgekit.convert.archs import permute_rows
from edgekit.convert.safetensors import TensorRef, bf16_to_f16, bf16_to_f32, f32_to_bf16, read_raw
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
    shift: float = 0.0  # added to every value (Gemma's (1 + w) norms); 1-D tensors only
    values: np.ndarray | None = field(default=None, compare=False)  # generated, not read from ``ref`` (rope factors)

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
    if src == "BF16" and out == "F16":
        return bf16_to_f16(raw)
    values = bf16_to_f32(raw) if src == "BF16" else raw
    return values.astype(FLOAT_OUT[out][0])


def _chunk_tasks(plan: TensorPlan) -> list[tuple[int, int] | None]:
    """Row ranges to convert independently; [None] means the whole tensor at once."""
    ref = plan.ref
    if plan.permute_heads or plan.values is not None or len(ref.shape) < 2:
        return [None]
    n_rows = ref.shape[0]
    step = max(1, CHUNK_ELEMENTS // max(1, ref.n_elements // max(n_rows, 1)))
    return [(start, min(n_rows, start + step)) for start in range(0, n_rows, step)]


def _convert_chunk(plan: TensorPlan, rows: tuple[int, int] | None) -> np.ndarray:
    """Read and convert one row range (or the whole tensor, permuting Q/K rows if needed)."""
    ref = plan.ref
    raw = plan.values if plan.values is not None else read_raw(ref, rows)
    if plan.shift:
        values = bf16_to_f32(raw) if ref.dtype == "BF16" else raw.astype(np.float32)
        return _convert(values + np.float32(plan.shift), "F32", plan.out)
    if not plan.permute_heads:
        return _convert(raw, ref.dtype, plan.out)
    values = bf16_to_f32(raw) if ref.dtype == "BF16" else raw
    permuted = np.ascontiguousarray(permute_rows(values, plan.permute_heads))
    return _convert(permuted, "F32" if ref.dtype == "BF16" else ref.dtype, plan.out)


class _StreamedTensor:
    """Quacks like the ndarray GGUFWriter.write_tensor_data expects (``nbytes``, ``tofile``).

    gguf-py then handles alignment and bookkeeping while the data arrives in
    chunks. Chunks are read and converted on worker threads (numpy and pread
    release the GIL) a few ahead of the one being written.
    """

    def __init__(self, plan: TensorPlan, pool: ThreadPoolExecutor, on_bytes, ahead: int = 3) -> None:
        self.plan = plan
        self.nbytes = plan.nbytes
        self._pool = pool
        self._on_bytes = on_bytes
        self._ahead = ahead

    def tofile(self, fout) -> None:
        tasks = iter(_chunk_tasks(self.plan))
        pending: deque[Future] = deque()
        for rows in itertools.islice(tasks, self._ahead):
            pending.append(self._pool.submit(_convert_chunk, self.plan, rows))
        written = 0
        while pending:
            chunk = pending.popleft().result()
            for rows in itertools.islice(tasks, 1):
                pending.append(self._pool.submit(_convert_chunk, self.plan, rows))
            fout.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
            written += chunk.nbytes
            self._on_bytes(chunk.nbytes)
        if written != self.nbytes:
            raise AssertionError(f"{self.plan.name}: wrote {written} bytes, expected {self.nbytes}")


# Big metadata arrays already packed, by the id of their list (held, so no other list gets that id); see write_gguf.
PackedArrays = dict[int, tuple[list, bytes]]


class _BulkKVWriter(gguf.GGUFWriter):
    """gguf-py packs metadata arrays one item at a time in Python, ~1.5 s for a 150k-token
    vocabulary. Pack large string, int and float arrays in bulk, byte-identical; all else as gguf-py does.
    With ``packed``, an array packed before (the same list object) is not packed again."""

    def __init__(self, path: Path, arch: str, packed: PackedArrays | None = None) -> None:
        super().__init__(path, arch)
        self._packed = packed

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool, sub_type: Any = None) -> bytes:
        big = vtype == gguf.GGUFValueType.ARRAY and isinstance(val, list) and len(val) > 4096 and sub_type is None
        if big and self.endianess == gguf.GGUFEndian.LITTLE:
            head = struct.pack("<I", vtype) if add_vtype else b""
            if self._packed is None:
                return head + self._pack_array(val)
            hit = self._packed.get(id(val))  # a held list keeps its id: a hit is this very list
            if hit is None:
                hit = self._packed[id(val)] = (val, self._pack_array(val))
            return head + hit[1]
        return super()._pack_val(val, vtype, add_vtype, sub_type)

    def _pack_array(self, val: list) -> bytes:
        """A big array's element type, count and elements."""
        if all(type(v) is str for v in val):
            encoded = [v.encode("utf-8") for v in val]
            sizes = [struct.pack("<Q", len(e)) for e in encoded]
            body = b"".join(itertools.chain.from_iterable(zip(sizes, encoded, strict=True)))
            return struct.pack("<IQ", gguf.GGUFValueType.STRING, len(val)) + body
        if all(type(v) is int for v in val):
            body = np.asarray(val, dtype="<i4").tobytes()
            return struct.pack("<IQ", gguf.GGUFValueType.INT32, len(val)) + body
        if all(type(v) is float for v in val):  # SentencePiece scores
            body = np.asarray(val, dtype="<f4").tobytes()
            return struct.pack("<IQ", gguf.GGUFValueType.FLOAT32, len(val)) + body
        # anything else: gguf-py's packing without the value type
        return super()._pack_val(val, gguf.GGUFValueType.ARRAY, False)


def generated(name: str, values: np.ndarray) -> TensorPlan:
    """A plan for a tensor the converter computes (float32 ``values``), stored as F32."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    ref = TensorRef(name, Path("<generated>"), "F32", tuple(values.shape), 0, values.nbytes)
    return TensorPlan(name, ref, "F32", values=values)


def write_gguf(path: Path, writer_setup, plans: list[TensorPlan], arch: str, progress: ProgressFn | None = None,
               packed: PackedArrays | None = None) -> None:
    """Write a GGUF file: ``writer_setup(writer)`` adds the KV metadata, ``plans`` the tensors.

    Files written with the same ``packed`` dict pack each big array (a vocabulary's tokens, types, scores,
    merges: ~0.1 s for a 262k-token vocabulary) once; its lists must not change in between."""
    writer = _BulkKVWriter(path, arch, packed)
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
        with ThreadPoolExecutor(max_workers=2) as pool:
            for plan in plans:
                writer.write_tensor_data(_StreamedTensor(plan, pool, on_bytes))  # type: ignore[arg-type]
    finally:
        writer.close()
