"""Numbers claiming huge sizes are refused before anything is allocated, proven under an address-space limit.

Each reader runs in a child process whose address space (RLIMIT_AS) is capped at
1 GiB: a reader that believed a header claiming 10^12 elements, and allocated
for it, would die with MemoryError there instead of refusing with an EdgekitError.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest

from edgekit.convert.safetensors import write_safetensors

LIMIT = 1 << 30
CHILD = textwrap.dedent("""
    import json, sys
    from edgekit.errors import EdgekitError
    from edgekit.convert import open_checkpoint
    from edgekit.convert.safetensors import read_header as read_safetensors
    from edgekit.gguf_check import check
    from edgekit.runtime.template import render

    readers = {"safetensors": read_safetensors, "gguf": check, "checkpoint": open_checkpoint,
               "template": lambda source: render(source, [{"role": "user", "content": "x"}])}
    for kind, arg in json.loads(sys.argv[1]):
        try:
            readers[kind](arg)
        except EdgekitError as exc:
            print("refused", kind, exc.message[:100])
        else:
            sys.exit(f"{kind} {arg!r} was accepted")
""")


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _safetensors_claiming(path, shape, nbytes):
    write_safetensors(path, {"w": ("F32", np.zeros(4, np.float32))})
    blob = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(16))
    return str(path)


def _gguf_claiming(path, dims):
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tensor_info("token_embd.weight", dims, np.dtype(np.float32), 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "ab") as f:
        f.write(bytes(64))
    return str(path)


def _checkpoint_claiming(src, dst, key, value, file="config.json"):
    dst.mkdir()
    for f in src.iterdir():
        if f.name != file:
            (dst / f.name).symlink_to(f)
    data = json.loads((src / file).read_text())
    if file == "config.json":
        data[key] = value
    else:
        data["added_tokens"][0][key] = value
    (dst / file).write_text(json.dumps(data))
    return str(dst)


@pytest.mark.slow
def test_huge_claims_are_refused_without_allocating(tiny_qwen2_dir, tmp_path):
    cases = [
        ("safetensors", _safetensors_claiming(tmp_path / "a.safetensors", [10**6, 10**6], 4 * 10**12)),
        ("safetensors", _safetensors_claiming(tmp_path / "b.safetensors", [10**12], 16)),
        ("gguf", _gguf_claiming(tmp_path / "a.gguf", (2**40, 1))),
        ("gguf", _gguf_claiming(tmp_path / "b.gguf", (2**20, 2**20))),
        ("checkpoint", _checkpoint_claiming(tiny_qwen2_dir, tmp_path / "c1", "vocab_size", 2**31 - 1)),
        ("checkpoint", _checkpoint_claiming(tiny_qwen2_dir, tmp_path / "c2", "num_hidden_layers", 2**31 - 1)),
        ("checkpoint", _checkpoint_claiming(tiny_qwen2_dir, tmp_path / "c3", "intermediate_size", 10**9)),
        ("checkpoint", _checkpoint_claiming(tiny_qwen2_dir, tmp_path / "c4", "id", 10**12, "tokenizer.json")),
        ("template", "{{ 'x' * 10**12 }}"),
        ("template", "{{ [0] * 10**12 }}"),
    ]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True,
                            env=env, preexec_fn=_limit_address_space, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("refused") == len(cases), result.stdout
