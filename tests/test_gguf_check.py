"""GGUF validation before llama.cpp opens a file: clear edgekit errors, never a crash."""

from __future__ import annotations

import os
import shutil
import struct

import pytest

import edgekit
from edgekit.errors import CorruptFile, SourceError, UnsupportedModel
from edgekit.gguf_check import check


def _copy(src, dst):
    shutil.copyfile(src, dst)
    return dst


def test_reads_what_the_planner_needs(smollm2_gguf):
    info = check(smollm2_gguf)
    assert info.arch == "llama"
    assert (info.n_layer, info.n_embd, info.n_head, info.n_head_kv) == (30, 576, 9, 3)
    assert (info.head_dim_k, info.head_dim_v, info.n_ff, info.n_vocab) == (64, 64, 1536, 49152)
    assert info.n_ctx_train == 8192 and info.eog_token_ids == (2,)
    assert info.file_size == os.path.getsize(smollm2_gguf)
    assert 0.9 * info.file_size < info.weights_bytes < info.file_size
    assert "im_start" in info.chat_template
    assert info.kv_values_per_token() == (30 * 3 * 64, 30 * 3 * 64)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        check(tmp_path / "nope.gguf")
    with pytest.raises(SourceError):
        edgekit.load(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", b"hello world, not a model at all" * 3, os.urandom(4096),
                                     b"PK\x03\x04" + b"\0" * 100])
def test_not_gguf(tmp_path, content):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    with pytest.raises(CorruptFile, match="not a GGUF file"):
        check(p)
    with pytest.raises(CorruptFile):
        edgekit.load(p)


@pytest.mark.parametrize("keep", [30, 2000, 1_000_000, -4096])
def test_truncated(tmp_path, smollm2_gguf, keep):
    data = open(smollm2_gguf, "rb").read()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(CorruptFile) as err:
        check(p)
    assert "truncated" in (err.value.hint or "") + err.value.message or "ends" in err.value.message


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


@pytest.mark.parametrize("blob", [
    _header(2**63, 1),  # absurd tensor count
    _header(0, 2**60),  # absurd key count
    _header(0, 1) + struct.pack("<Q", 2**62) + b"k",  # a key string longer than the file
    _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2**61),  # huge array
    _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77),  # unknown value type
    _header(0, 0, version=1),  # unsupported version
])
def test_malformed_headers_fail_fast(tmp_path, blob):
    p = tmp_path / "evil.gguf"
    p.write_bytes(blob + b"\0" * 64)
    with pytest.raises(CorruptFile):
        check(p)


def test_tensor_outside_file(tmp_path, smollm2_gguf):
    p = _copy(smollm2_gguf, tmp_path / "short.gguf")
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 1)
    with pytest.raises(CorruptFile, match="outside the file"):
        check(p)


def test_unsupported_architecture(tmp_path, smollm2_gguf):
    p = _copy(smollm2_gguf, tmp_path / "alien.gguf")
    data = bytearray(p.read_bytes())
    i = data.index(b"general.architecture")
    j = data.index(b"llama", i)  # the value "llama" -> "xlama" (same length, header stays consistent)
    data[j] = ord("x")
    p.write_bytes(bytes(data))
    with pytest.raises(UnsupportedModel, match="xlama"):
        check(p)
    with pytest.raises(UnsupportedModel):
        edgekit.load(p)
