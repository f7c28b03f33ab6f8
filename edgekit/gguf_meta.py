"""A fast, bounded reader of GGUF headers: metadata and tensor table, validated.

gguf-py's GGUFReader builds numpy views for every field and takes ~15 s on a
151936-token vocabulary; this reader parses the same header in well under a
second and checks every count and size against the file before trusting it, so
a corrupt file gives a clear error instead of a huge allocation or a crash.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import CorruptFile, SourceError

GGUF_MAGIC = b"GGUF"
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_DIMS = 8
# GGUF value types -> struct format (scalars)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the GGUF tensor table."""

    name: str
    shape: tuple[int, ...]  # ggml order (fastest dimension first)
    type: int  # ggml_type
    offset: int  # relative to the data section
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFHeader:
    """A parsed, validated GGUF header."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_key(self, key: str, default: Any = None) -> Any:
        """``<arch>.<key>``, e.g. ``arch_key("block_count")``."""
        return self.metadata.get(f"{self.arch}.{key}", default)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _type_size(ggml_type: int) -> tuple[int, int]:
    """(block size, bytes per block) of a ggml type, from gguf-py's table."""
    import gguf

    try:
        return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as exc:
        raise CorruptFile(f"unknown tensor type {ggml_type}") from exc


class _Cursor:
    def __init__(self, buf, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.path = path

    def fail(self, what: str) -> CorruptFile:
        return CorruptFile(f"{self.path.name} is not a valid GGUF file: {what}",
                           "The file is truncated or corrupt; convert or download it again.")

    def take(self, fmt: str):
        n = struct.calcsize("<" + fmt)
        if self.pos + n > self.size:
            raise self.fail(f"it ends inside the header (at byte {self.pos})")
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def string(self) -> str:
        n = self.take("Q")
        if n > self.size - self.pos:
            raise self.fail(f"a string of {n} bytes at byte {self.pos} runs past the end")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(raw).decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.take("I")
            count = self.take("Q")
            if count > self.size - self.pos:
                raise self.fail(f"array {key!r} claims {count} items, more than the file holds")
            if item_type in _SCALARS:
                fmt = _SCALARS[item_type]
                width = struct.calcsize(fmt)
                if self.pos + count * width > self.size:
                    raise self.fail(f"array {key!r} runs past the end")
                values = list(struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos)) if count else []
                self.pos += count * width
                return values
            if item_type == _STRING:
                return [self.string() for _ in range(count)]
            raise self.fail(f"array {key!r} has unsupported item type {item_type}")
        raise self.fail(f"key {key!r} has unknown value type {vtype}")


def read_header(path: str | Path) -> GGUFHeader:
    """Parse and validate a GGUF file's header; raise :class:`CorruptFile` on anything wrong."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path} does not exist", "Check the path, or run `edgekit models` to list stored models.")
    if path.is_dir():
        raise SourceError(f"{path} is a directory, not a GGUF file")
    size = path.stat().st_size
    if size < 24:
        raise CorruptFile(f"{path.name} is not a GGUF file ({size} bytes)", "Pass a .gguf model file.")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != GGUF_MAGIC:
            raise CorruptFile(f"{path.name} is not a GGUF file (it starts with {bytes(buf[:4])!r})",
                              "Pass a .gguf model file; convert a Hugging Face checkpoint with `edgekit convert`.")
        cur = _Cursor(buf, path)
        cur.pos = 4
        version = cur.take("I")
        if version not in (2, 3):
            raise cur.fail(f"unsupported version {version}")
        n_tensors = cur.take("Q")
        n_kv = cur.take("Q")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise cur.fail(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.take("I"), key)
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.take("I")
            if n_dims > MAX_DIMS:
                raise cur.fail(f"tensor {name!r} has {n_dims} dimensions")
            shape = tuple(cur.take("Q") for _ in range(n_dims))
            ggml_type = cur.take("I")
            offset = cur.take("Q")
            infos.append((name, shape, ggml_type, offset))
        alignment = metadata.get("general.alignment", 32)
        if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise cur.fail(f"general.alignment is {alignment!r}, not a power of two")
        data_offset = cur.pos + (-cur.pos % alignment)
    tensors = []
    for name, shape, ggml_type, offset in infos:
        block, block_bytes = _type_size(ggml_type)
        n = math.prod(shape)
        if shape and shape[0] % block:
            raise CorruptFile(f"{path.name}: tensor {name!r} row of {shape[0]} doesn't fit type {ggml_type}'s blocks")
        nbytes = n // block * block_bytes
        if data_offset + offset + nbytes > size:
            raise CorruptFile(
                f"{path.name}: tensor {name!r} lies outside the file (needs byte {data_offset + offset + nbytes}, "
                f"file has {size})",
                "The file is truncated; convert or download it again.",
            )
        tensors.append(TensorInfo(name, shape, ggml_type, offset, nbytes))
    return GGUFHeader(path, version, metadata, tensors, data_offset, size)
