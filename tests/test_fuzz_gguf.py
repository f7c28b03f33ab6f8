"""Fuzz the GGUF header reader (edgekit.gguf_meta.read_header, edgekit.gguf_check.check).

Starts from a small valid GGUF written with gguf-py's GGUFWriter and feeds the
readers mutated copies (byte flips, truncations, splices, and every count,
length, type and offset of the header overwritten with edge values) and random
bytes. Each must be read or refused with an EdgekitError, in bounded time and memory.

A longer run (examples per test; the default is a few hundred):
    EDGEKIT_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_*.py
"""

from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
from fuzzing import INTERESTING_INTS, fuzz_settings, mutations, only_edgekit_errors
from hypothesis import example, given
from hypothesis import strategies as st

from edgekit.gguf_check import check
from edgekit.gguf_meta import read_header

# The keys edgekit reads, with their values in the seed file.
SEED_KEYS: dict[str, tuple[gguf.GGUFValueType, object]] = {
    "general.architecture": (gguf.GGUFValueType.STRING, "qwen2"),
    "general.name": (gguf.GGUFValueType.STRING, "fuzz seed"),
    "general.alignment": (gguf.GGUFValueType.UINT32, 32),
    "qwen2.block_count": (gguf.GGUFValueType.UINT32, 1),
    "qwen2.embedding_length": (gguf.GGUFValueType.UINT32, 32),
    "qwen2.feed_forward_length": (gguf.GGUFValueType.UINT32, 64),
    "qwen2.attention.head_count": (gguf.GGUFValueType.UINT32, 4),
    "qwen2.attention.head_count_kv": (gguf.GGUFValueType.UINT32, 2),
    "qwen2.attention.key_length": (gguf.GGUFValueType.UINT32, 8),
    "qwen2.context_length": (gguf.GGUFValueType.UINT32, 256),
    "qwen2.vocab_size": (gguf.GGUFValueType.UINT32, 4),
    "qwen2.attention.layer_norm_rms_epsilon": (gguf.GGUFValueType.FLOAT32, 1e-6),
    "tokenizer.ggml.model": (gguf.GGUFValueType.STRING, "gpt2"),
    "tokenizer.ggml.tokens": (gguf.GGUFValueType.ARRAY, ["a", "b", "<|im_end|>", "\u00e9"]),
    "tokenizer.ggml.token_type": (gguf.GGUFValueType.ARRAY, [1, 1, 3, 1]),
    "tokenizer.ggml.eos_token_id": (gguf.GGUFValueType.UINT32, 2),
    "tokenizer.chat_template": (gguf.GGUFValueType.STRING, "{% for m in messages %}{{ m['content'] }}{% endfor %}"),
    "fuzz.floats": (gguf.GGUFValueType.ARRAY, [0.5, 1.5]),
    "fuzz.u64": (gguf.GGUFValueType.UINT64, 7),
}


def _tiny_gguf(path, overrides: dict | None = None) -> bytes:
    """A small qwen2 GGUF with every kind of key (scalars, strings, arrays) and three tensor types."""
    w = gguf.GGUFWriter(str(path), "qwen2", use_temp_file=False)
    w.kv_data[0].clear()  # GGUFWriter adds general.architecture itself; SEED_KEYS sets it
    for key, (vtype, value) in {**SEED_KEYS, **(overrides or {})}.items():
        sub = None
        if vtype == gguf.GGUFValueType.ARRAY and value and isinstance(value[0], (int, float)):
            sub = gguf.GGUFValueType.INT32 if isinstance(value[0], int) else gguf.GGUFValueType.FLOAT32
        w.add_key_value(key, value, vtype, sub_type=sub)
    w.add_tensor("token_embd.weight", np.arange(4 * 32, dtype=np.float32).reshape(4, 32))
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float16))
    q8 = np.zeros((2, 34), dtype=np.uint8)  # two Q8_0 blocks of 32 values
    w.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _int_fields(data: bytes) -> list[tuple[int, str, str]]:
    """(offset, struct format, what) of every count, length, type and offset in the header (an independent walk)."""
    fields: list[tuple[int, str, str]] = [(4, "I", "version"), (8, "Q", "n_tensors"), (16, "Q", "n_kv")]
    pos = 24
    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(what):
        nonlocal pos
        fields.append((pos, "Q", f"{what} length"))
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n

    def value(vtype, what):
        nonlocal pos
        if vtype in scalar:
            if vtype in (4, 5, 10, 11):
                fields.append((pos, "Q" if scalar[vtype] == 8 else "I", f"{what} value"))
            pos += scalar[vtype]
        elif vtype == 8:
            string(what)
        else:
            fields.append((pos, "I", f"{what} item type"))
            (item,) = struct.unpack_from("<I", data, pos)
            fields.append((pos + 4, "Q", f"{what} count"))
            (count,) = struct.unpack_from("<Q", data, pos + 4)
            pos += 12
            for _ in range(count):
                value(item, what)

    for k in range(struct.unpack_from("<Q", data, 16)[0]):
        string(f"key {k}")
        fields.append((pos, "I", f"key {k} type"))
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        value(vtype, f"key {k}")
    for t in range(struct.unpack_from("<Q", data, 8)[0]):
        string(f"tensor {t} name")
        fields.append((pos, "I", f"tensor {t} n_dims"))
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        for d in range(n_dims):
            fields.append((pos, "Q", f"tensor {t} dim {d}"))
            pos += 8
        fields.append((pos, "I", f"tensor {t} type"))
        fields.append((pos + 4, "Q", f"tensor {t} offset"))
        pos += 12
    return fields


@pytest.fixture(scope="module")
def seed_gguf(tmp_path_factory):
    data = _tiny_gguf(tmp_path_factory.mktemp("fuzz-gguf") / "seed.gguf")
    return data, _int_fields(data)


def test_the_seed_file_reads_and_the_walk_covers_its_header(seed_gguf, tmp_path):
    data, fields = seed_gguf
    path = tmp_path / "seed.gguf"
    path.write_bytes(data)
    info = check(path)
    assert (info.arch, info.n_layer, info.n_embd, info.n_tensors, info.n_vocab) == ("qwen2", 1, 32, 3, 4)
    assert {f[2] for f in fields} >= {"n_kv", "tensor 2 offset", "tensor 0 dim 1", "key 13 count"}


def _overwrite(data: bytes, field: tuple[int, str, str], value: int) -> bytes:
    offset, fmt, _ = field
    value &= (1 << (8 * struct.calcsize(fmt))) - 1
    return data[:offset] + struct.pack("<" + fmt, value) + data[offset + struct.calcsize(fmt):]


def _field_edits(data: bytes, fields) -> st.SearchStrategy[bytes]:
    one = st.tuples(st.sampled_from(fields),
                    st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(0, 2**64 - 1), st.integers(0, 40)))
    return st.lists(one, min_size=1, max_size=3).map(
        lambda edits: _apply(data, edits))


def _apply(data: bytes, edits) -> bytes:
    for field, value in edits:
        data = _overwrite(data, field, value)
    return data


def _assert_read_or_refused(path) -> None:
    header = only_edgekit_errors(read_header, path)
    if header is not None:
        # What read_header promises: every tensor's bytes lie inside the file.
        for t in header.tensors:
            assert 0 <= header.data_offset + t.offset + t.nbytes <= header.file_size
    only_edgekit_errors(check, path)


@st.composite
def mutated(draw, seed):
    data, fields = seed
    header_end = max(offset for offset, _, _ in fields) + 16
    return draw(st.one_of(_field_edits(data, fields), mutations(data, hot=header_end),
                          st.lists(st.one_of(_field_edits(data, fields), mutations(data, hot=header_end)),
                                   min_size=2, max_size=2).map(lambda pair: pair[0][: len(pair[0]) // 2]
                                                                + pair[1][len(pair[1]) // 2:])))


@pytest.mark.slow
@fuzz_settings(300)
@given(st.data())
def test_mutated_gguf_is_read_or_refused(seed_gguf, tmp_path, data):
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(data.draw(mutated(seed_gguf)))
    _assert_read_or_refused(path)


V = gguf.GGUFValueType
# Any GGUF value: (type, value) pairs gguf-py can write.
_values = st.one_of(
    st.tuples(st.just(V.UINT32), st.sampled_from([0, 1, 3, 2**31, 2**32 - 1])),
    st.tuples(st.just(V.INT32), st.sampled_from([-1, -(2**31), 0, 5])),
    st.tuples(st.just(V.UINT64), st.sampled_from([0, 2**63, 2**64 - 1])),
    st.tuples(st.just(V.INT64), st.sampled_from([-1, -(2**63)])),
    st.tuples(st.just(V.UINT8), st.integers(0, 255)),
    st.tuples(st.just(V.BOOL), st.booleans()),
    st.tuples(st.just(V.FLOAT32), st.floats(width=32)),
    st.tuples(st.just(V.FLOAT64), st.floats()),
    st.tuples(st.just(V.STRING), st.text(max_size=20)),
    st.tuples(st.just(V.ARRAY), st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=4)),
    st.tuples(st.just(V.ARRAY), st.lists(st.floats(width=32), min_size=1, max_size=4)),
    st.tuples(st.just(V.ARRAY), st.lists(st.text(max_size=8), min_size=1, max_size=4)),
)


@fuzz_settings(250)
@given(st.dictionaries(st.sampled_from(sorted(SEED_KEYS)), _values, min_size=1, max_size=4))
# Found by this test: alignment was passed to int() (ValueError/TypeError) ...
@example(overrides={"general.alignment": (V.STRING, "")})
@example(overrides={"general.alignment": (V.ARRAY, [64])})
@example(overrides={"general.alignment": (V.UINT32, 48)})
# ... and so were the counts check() plans with.
@pytest.mark.slow
@example(overrides={"qwen2.block_count": (V.STRING, "")})
@example(overrides={"qwen2.embedding_length": (V.FLOAT32, float("nan"))})
@example(overrides={"qwen2.attention.head_count_kv": (V.INT32, -1)})
def test_any_value_for_the_keys_edgekit_reads_is_read_or_refused(tmp_path, overrides):
    path = tmp_path / "values.gguf"
    _tiny_gguf(path, overrides)
    _assert_read_or_refused(path)


@fuzz_settings(200)
@given(st.one_of(st.binary(max_size=512), st.binary(max_size=512).map(lambda b: b"GGUF\x03\x00\x00\x00" + b)))
def test_random_bytes_are_refused(tmp_path, blob):
    path = tmp_path / "random.gguf"
    path.write_bytes(blob)
    _assert_read_or_refused(path)
