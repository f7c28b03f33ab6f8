"""Read and write safetensors files, validating everything before trusting it.

Written by hand rather than with the ``safetensors`` package for two reasons:
numpy has no bfloat16, so bf16 tensors must be handled as raw 16-bit words, and
a corrupt file must produce an error naming the file and the tensor (bad header
length, offsets out of range, dtype or shape not matching the byte count)
instead of a Rust panic. Tensors are read with ``pread`` in bounded chunks, not
memory-mapped, so converting a model never holds the whole checkpoint in RSS.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import CorruptFile, UnsupportedModel

# Bytes per element of the dtypes a checkpoint may hold.
DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live: file, absolute byte offset, dtype and shape."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def _integers(value: object, what: str) -> tuple[int, ...]:
    """A JSON list of integers, or TypeError (a string, float or bool is not one)."""
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{what} {json.dumps(value)[:60]} is not a list of integers")
    return tuple(value)


def read_header(path: Path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Parse and validate one safetensors file's header; return its tensors and metadata."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CorruptFile(f"{path.name} is too short to be a safetensors file ({size} bytes)", "Download it again.")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER or 8 + n > size:
                raise CorruptFile(
                    f"{path.name}: bad safetensors header length {n} for a file of {size} bytes",
                    "The file is truncated or not safetensors; download it again.",
                )
            raw = f.read(n)
    except OSError as exc:
        raise CorruptFile(f"can't read {path}: {exc.strerror}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
        raise CorruptFile(f"{path.name}: the safetensors header is not valid JSON ({exc})", "Download it again.") from exc

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CorruptFile(f"{path.name}: the safetensors __metadata__ is not an object", "Download it again.")
    data_start = 8 + n
    data_size = size - data_start
    tensors: dict[str, TensorRef] = {}
    for name, entry in header.items():
        where = f"{path.name}, tensor {name!r}"
        try:
            dtype = entry["dtype"]
            shape = _integers(entry["shape"], "shape")
            begin, end = _integers(entry["data_offsets"], "data_offsets")
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFile(f"{where}: malformed header entry ({exc})", "Download it again.") from exc
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise UnsupportedModel(f"{where}: dtype {dtype} is not supported", "Use a bf16, f16 or f32 checkpoint.")
        if any(d < 0 for d in shape):
            raise CorruptFile(f"{where}: negative dimension in shape {list(shape)}")
        if not 0 <= begin <= end <= data_size:
            raise CorruptFile(
                f"{where}: data offsets [{begin}, {end}) lie outside the {data_size} data bytes",
                "The file is truncated or corrupt; download it again.",
            )
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise CorruptFile(
                f"{where}: {end - begin} bytes do not match dtype {dtype} with shape {list(shape)} ({expected} bytes)",
                "The file is corrupt; download it again.",
            )
        tensors[name] = TensorRef(name, path, dtype, shape, data_start + begin, end - begin)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


class WeightSet:
    """All tensors of a checkpoint, across one or many safetensors shards."""

    def __init__(self, files: Iterable[Path]) -> None:
        self.files = [Path(f) for f in files]
        self.tensors: dict[str, TensorRef] = {}
        for file in self.files:
            refs, _ = read_header(file)
            for name, ref in refs.items():
                if name in self.tensors:
                    raise CorruptFile(f"tensor {name!r} appears in both {self.tensors[name].file.name} and {file.name}")
                self.tensors[name] = ref

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorRef:
        return self.tensors[name]

    def names(self) -> list[str]:
        return list(self.tensors)

    @property
    def dtype(self) -> str:
        """The dominant floating dtype of the checkpoint (by bytes)."""
        totals: dict[str, int] = {}
        for ref in self.tensors.values():
            totals[ref.dtype] = totals.get(ref.dtype, 0) + ref.nbytes
        return max(totals, key=totals.__getitem__) if totals else "F32"

    @property
    def nbytes(self) -> int:
        return sum(ref.nbytes for ref in self.tensors.values())


_NP_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_raw(ref: TensorRef, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Read a tensor's bytes as stored (uint16 words for BF16), optionally only rows [start, stop)."""
    shape = ref.shape
    offset, nbytes = ref.offset, ref.nbytes
    if rows is not None and shape:
        start, stop = rows
        row_bytes = ref.nbytes // shape[0] if shape[0] else 0
        offset += start * row_bytes
        nbytes = (stop - start) * row_bytes
        shape = (stop - start, *shape[1:])
    out = np.empty(nbytes // DTYPE_SIZES[ref.dtype], dtype=_NP_DTYPES[ref.dtype])
    buf = memoryview(out.view(np.uint8))
    fd = os.open(ref.file, os.O_RDONLY)
    try:
        done = 0
        while done < nbytes:
            n = os.preadv(fd, [buf[done : done + (64 << 20)]], offset + done)
            if n <= 0:
                raise CorruptFile(f"{ref.file.name}, tensor {ref.name!r}: the file ends before the tensor's data",
                                  "The file is truncated; download it again.")
            done += n
    finally:
        os.close(fd)
    return out.reshape(shape)


def bf16_to_f32(words: np.ndarray) -> np.ndarray:
    """Widen bf16 words (uint16) to float32 exactly."""
    wide = np.empty(words.shape, dtype=np.uint32)
    np.left_shift(words, 16, out=wide, dtype=np.uint32)
    return wide.view(np.float32)


def bf16_to_f16(words: np.ndarray) -> np.ndarray:
    """Convert bf16 words to float16 exactly as ``bf16_to_f32(words).astype(float16)`` does, faster.

    Written by hand because numpy's float32->float16 cast is scalar on many builds and
    dominated conversion time. In f16's normal range a bf16 value maps exactly by
    re-biasing the exponent (7 mantissa bits fit in 10), which is a few integer vector
    ops; the rest (zero, tiny, huge, inf, NaN; a few percent of a real checkpoint, almost
    all zeros) goes through numpy's cast, found as indices in one pass.
    """
    flat = words.reshape(-1)
    out = flat & np.uint16(0x7FFF)
    out -= np.uint16(113 << 7)  # exponent 113 (f16's smallest normal) is now 0; zero and below wrap to the top
    rest = np.flatnonzero(out >= np.uint16(30 << 7))  # outside f16's 30 normal exponents
    out += np.uint16(1 << 7)
    out <<= np.uint16(3)
    out |= flat & np.uint16(0x8000)
    if rest.size:
        with np.errstate(over="ignore"):  # beyond f16's range becomes inf, as in llama.cpp
            out[rest] = bf16_to_f32(flat[rest]).astype(np.float16).view(np.uint16)
    return out.view(np.float16).reshape(words.shape)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 words (uint16), nearest-even, keeping NaN a NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def read_f32(ref: TensorRef) -> np.ndarray:
    """Read a floating tensor as float32."""
    raw = read_raw(ref)
    if ref.dtype == "BF16":
        return bf16_to_f32(raw)
    return raw.astype(np.float32, copy=False)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str] | None = None) -> None:
    """Write ``{name: (dtype, array)}`` as safetensors; BF16 arrays are uint16 words."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    arrays: list[np.ndarray] = []
    for name, (dtype, array) in tensors.items():
        array = np.ascontiguousarray(array)
        nbytes = array.nbytes
        if nbytes != math.prod(array.shape) * DTYPE_SIZES[dtype]:
            raise ValueError(f"{name}: array itemsize does not match dtype {dtype}")
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        arrays.append(array)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for array in arrays:
            f.write(array.tobytes())
