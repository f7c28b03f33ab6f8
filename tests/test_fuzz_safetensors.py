"""Fuzz the safetensors reader (edgekit.convert.safetensors).

Starts from a small valid file written by write_safetensors and feeds
read_header / WeightSet / read_raw mutated copies: header entries given any
JSON value (wrong types, huge and negative numbers, deep nesting), offsets
overlapping or out of range, a wrong header length, byte flips, truncations,
and random bytes. Each must be read or refused with an EdgekitError, in
bounded time and memory; a tensor that is read lies inside the file.

A longer run (examples per test; the default is a few hundred):
    EDGEKIT_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_*.py
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzzing import (
    DEEP,
    INTERESTING_INTS,
    dump_json,
    fuzz_settings,
    json_values,
    mutations,
    only_edgekit_errors,
)
from hypothesis import example, given
from hypothesis import strategies as st

from edgekit.convert.safetensors import (
    DTYPE_SIZES,
    WeightSet,
    read_f32,
    read_header,
    read_raw,
    write_safetensors,
)


def _seed_file() -> tuple[bytes, dict, int]:
    """A small valid file (four tensors of four dtypes), its header, and the header's length."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.safetensors"
        rng = np.random.default_rng(0)
        write_safetensors(path, {
            "model.embed.weight": ("BF16", rng.integers(0, 2**16, (4, 8), dtype=np.uint16)),
            "model.norm.weight": ("F32", rng.standard_normal(8, dtype=np.float32)),
            "model.cube": ("F16", rng.standard_normal((2, 3, 4)).astype(np.float16)),
            "model.ids": ("I32", np.arange(3, dtype=np.int32)),
        }, {"format": "pt"})
        data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data, json.loads(data[8 : 8 + n]), n


SEED, SEED_HEADER, SEED_N = _seed_file()


def _with(header: dict, depth: int = 0) -> bytes:
    """The seed file with another header (its length field right)."""
    blob = dump_json(header, depth)
    return struct.pack("<Q", len(blob)) + blob + SEED[8 + SEED_N :]


def _entry(name: str, **fields) -> dict:
    return {**SEED_HEADER, name: {**SEED_HEADER[name], **fields}}


@st.composite
def edited_headers(draw):
    header = json.loads(json.dumps(SEED_HEADER))
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from([*header, "__metadata__", "extra"]))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "whole", "delete"]))
        value = draw(json_values)
        if field == "whole" or not isinstance(header.get(target), dict):
            header[target] = value
        elif field == "delete":
            header[target].pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
        else:
            header[target][field] = value
    blob = dump_json(header, draw(st.integers(1, 5000)))
    blob += b" " * draw(st.integers(0, 8))
    length = draw(st.one_of(st.just(len(blob)), st.sampled_from(INTERESTING_INTS), st.integers(0, len(blob) + 64)))
    return struct.pack("<Q", length) + blob + SEED[8 + SEED_N :]


def _assert_read_or_refused(path) -> None:
    size = path.stat().st_size
    result = only_edgekit_errors(read_header, path)
    only_edgekit_errors(WeightSet, [path])
    if result is None:
        return
    for ref in result[0].values():
        # What read_header promises: the bytes lie inside the file and match dtype and shape.
        assert 0 <= ref.offset and ref.offset + ref.nbytes <= size
        assert ref.nbytes == math.prod(ref.shape) * DTYPE_SIZES[ref.dtype]
        array = only_edgekit_errors(read_raw, ref)
        assert array is not None and array.shape == ref.shape
        if ref.dtype in ("BF16", "F16", "F32"):
            assert only_edgekit_errors(read_f32, ref).dtype == np.float32


def test_the_seed_file_reads(tmp_path):
    path = tmp_path / "seed.safetensors"
    path.write_bytes(SEED)
    tensors, metadata = read_header(path)
    assert sorted(tensors) == ["model.cube", "model.embed.weight", "model.ids", "model.norm.weight"]
    assert metadata == {"format": "pt"}
    _assert_read_or_refused(path)


@fuzz_settings(400)
@given(edited_headers())
# Found by this test: an unhashable dtype raised TypeError, a header nested thousands deep RecursionError ...
@example(_with(_entry("model.embed.weight", dtype=[])))
@example(_with({**SEED_HEADER, "__metadata__": {"format": DEEP}}, depth=5000))
# ... a __metadata__ that is not an object AttributeError, and a float dimension (1e400 is inf) OverflowError.
@pytest.mark.slow
@example(_with({**SEED_HEADER, "__metadata__": [1]}))
@example(_with(_entry("model.norm.weight", shape=[float("inf")])))
@example(_with(_entry("model.norm.weight", shape="8")))  # was read as shape [8]
def test_edited_header_is_read_or_refused(tmp_path, blob):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    _assert_read_or_refused(path)


@fuzz_settings(300)
@given(mutations(SEED, hot=8 + SEED_N))
def test_mutated_bytes_are_read_or_refused(tmp_path, blob):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    _assert_read_or_refused(path)


@fuzz_settings(200)
@given(st.one_of(st.binary(max_size=256),
                 st.binary(max_size=256).map(lambda b: struct.pack("<Q", len(b)) + b),
                 st.text(max_size=64).map(lambda t: struct.pack("<Q", len(t.encode())) + t.encode())))
def test_random_bytes_are_refused(tmp_path, blob):
    path = tmp_path / "random.safetensors"
    path.write_bytes(blob)
    _assert_read_or_refused(path)
