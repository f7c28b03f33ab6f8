"""Weight buffers: where llama.cpp's AMX buffers are off, repackable weights still get repacked."""

from __future__ import annotations

import platform

import numpy as np
import pytest

import edgekit
from edgekit import _llama

X86_AVX2 = platform.machine().lower() in ("x86_64", "amd64") and "AVX2 = 1" in _llama.system_info()


@pytest.fixture(scope="module")
def tiny_q4_0(tiny_qwen2_dir, tmp_path_factory):
    from edgekit.convert import convert

    return convert(tiny_qwen2_dir, tmp_path_factory.mktemp("q4_0"), quant=("q4_0",))[0].path


def test_repack_targets_are_the_matmul_weights_of_repackable_types(tiny_q4_0):
    from edgekit.gguf_check import check

    info = check(tiny_q4_0)
    targets = _llama.repack_targets(info.matrices)
    assert "blk.0.ffn_up.weight" in targets and "blk.1.attn_output.weight" in targets
    assert "token_embd.weight" not in targets  # read by row, never a matmul weight llama.cpp repacks
    assert all(t.endswith(".weight") and not t.endswith("norm.weight") for t in targets)
    assert _llama.repack_targets((("x.weight", "Q4_1", 64), ("y.weight", "Q4_0", 12))) == []


def _last_logits(path, monkeypatch, repack: str) -> tuple[np.ndarray, str]:
    monkeypatch.setenv("EDGEKIT_EXTRA_BUFFERS", "0")
    monkeypatch.setenv("EDGEKIT_REPACK", repack)
    with edgekit.load(path, n_ctx=256) as m:
        log = _llama.log_tail(400, "CPU_REPACK")
        m.generate("The quick brown fox jumps over the lazy dog, and then", max_tokens=1, temperature=0)
        L = _llama.lib()
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(m.llama_context, -1), shape=(m.n_vocab,)).copy()
        m.reset()
    return logits, log


@pytest.mark.slow
@pytest.mark.skipif(not X86_AVX2, reason="llama.cpp repacks these types this way only on x86 with AVX2")
def test_repacked_weights_give_the_same_logits(tiny_q4_0, monkeypatch):
    plain, plain_log = _last_logits(tiny_q4_0, monkeypatch, "0")
    repacked, repack_log = _last_logits(tiny_q4_0, monkeypatch, "1")
    assert "CPU_REPACK" not in plain_log and "CPU_REPACK" in repack_log
    # Other kernels, other rounding (activations are quantized to Q8 on both paths): close, not bit-equal.
    spread = float(plain.max() - plain.min())
    assert np.max(np.abs(plain - repacked)) <= 0.02 * spread
    assert np.corrcoef(plain, repacked)[0, 1] > 0.999


@pytest.mark.slow
def test_repack_is_probed_only_where_amx_is_built_in(tiny_q4_0, monkeypatch):
    from edgekit.gguf_check import check
    from edgekit.paths import cache_dir

    monkeypatch.delenv("EDGEKIT_REPACK", raising=False)
    monkeypatch.setenv("EDGEKIT_EXTRA_BUFFERS", "0")
    monkeypatch.setattr(_llama, "_extra_buffers_verdicts", {})
    info = check(tiny_q4_0)
    overrides = _llama.repack_overrides(tiny_q4_0, info.matrices)
    store = cache_dir() / "extra-buffers.json"
    if not (_llama.build_has_amx() and X86_AVX2):
        assert overrides is None and not store.exists()  # nothing to probe: llama.cpp's defaults hold
        return
    assert store.exists()  # the verdict is cached for the next process
    with edgekit.load(tiny_q4_0, n_ctx=256) as m:  # whatever the verdict, a batched decode survives it
        assert m.generate("one two three four five six seven", max_tokens=2, temperature=0).stats.prompt_tokens > 4
