"""The memory planner: exact KV arithmetic, the auto KV choice, refusals, and agreement with real RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

import edgekit
from edgekit.errors import EdgekitError, OutOfMemory
from edgekit.gguf_check import ModelInfo
from edgekit.planner import MiB, plan_info, require_fit

# Qwen2.5-0.5B's shape, from its config.json: 24 layers, 2 KV heads of 64, 32k trained context
# (max_position_embeddings 32768).
QWEN05 = ModelInfo(path=Path("qwen05.gguf"), arch="qwen2", file_size=398_000_000, weights_bytes=390_000_000,
                   n_tensors=290, n_layer=24, n_embd=896, n_head=14, n_head_kv=2, head_dim_k=64, head_dim_v=64,
                   n_ff=4864, n_vocab=151936, n_ctx_train=32768, chat_template=None, eog_token_ids=(151645,),
                   name="qwen", metadata={})
BIG = 64 << 30


@pytest.mark.parametrize("kv,mib", [("f16", 384), ("q8_0", 204), ("q4_0", 108)])
def test_kv_bytes_match_the_facts_table(kv, mib):
    p = plan_info(QWEN05, 32768, kv, available=BIG)
    assert p.kv_bytes == mib * MiB
    assert p.total_bytes == p.weights_bytes + p.kv_bytes + p.compute_bytes + p.overhead_bytes


def test_defaults_trained_context_and_fastest_cache():
    p = plan_info(QWEN05, available=BIG)
    assert p.n_ctx == 32768 and p.fits and p.max_fitting_ctx == 32768
    # f16 first: a q8_0 K cache more than halves prefill at depth (docs/memory.md); 384 MiB fits here
    assert (p.type_k, p.type_v, p.flash_attn) == ("f16", "f16", True)
    assert "fits" in p.summary() and p.as_dict()["n_ctx"] == 32768


def test_auto_falls_back_to_smaller_caches_as_memory_shrinks():
    f16 = plan_info(QWEN05, 32768, "f16", available=BIG).total_bytes
    p = plan_info(QWEN05, 32768, available=f16 - MiB)  # f16 no longer fits; q8_0 K halves K's 192 MiB
    assert (p.type_k, p.type_v, p.fits) == ("q8_0", "f16", True)
    need = plan_info(QWEN05, 32768, "q8_0", available=BIG).total_bytes
    p = plan_info(QWEN05, 32768, available=need + MiB)  # q8_0/f16 no longer fits, q8_0/q8_0 does
    assert (p.type_k, p.type_v, p.flash_attn, p.fits) == ("q8_0", "q8_0", True, True)
    p = plan_info(QWEN05, 32768, available=need - 50 * MiB)
    assert (p.type_k, p.type_v, p.fits) == ("q4_0", "q4_0", True)


def test_nothing_fits_says_which_context_does():
    avail = 600 * MiB
    p = plan_info(QWEN05, 32768, available=avail)
    assert not p.fits and 0 < p.max_fitting_ctx < 32768 and p.max_fitting_ctx % 256 == 0
    assert plan_info(QWEN05, p.max_fitting_ctx, "q4_0", available=avail).fits
    assert not plan_info(QWEN05, p.max_fitting_ctx + 256, "q4_0", available=avail).fits
    with pytest.raises(OutOfMemory, match=f"n_ctx={p.max_fitting_ctx}"):
        require_fit(p)
    tiny = plan_info(QWEN05, 4096, available=100 * MiB)
    assert tiny.max_fitting_ctx == 0
    with pytest.raises(OutOfMemory, match="smaller"):
        require_fit(tiny)


def test_flash_attention_off_scores_and_quantized_v():
    on = plan_info(QWEN05, 32768, "f16", flash_attn=True, available=BIG)
    off = plan_info(QWEN05, 32768, "f16", flash_attn=False, available=BIG)
    # without flash attention a 512-token ubatch at 32k holds 512 x 32768 x 14 f32 scores (~900 MiB)
    # and their softmax; the mask is f32 instead of f16
    assert off.compute_bytes - on.compute_bytes == 512 * 32768 * (2 * 14 * 4 + 4 - 2)
    auto_off = plan_info(QWEN05, 32768, "auto", flash_attn=False, available=BIG)
    assert auto_off.type_v == "f16" and not auto_off.flash_attn
    with pytest.raises(EdgekitError, match="flash attention"):
        plan_info(QWEN05, 4096, "q4_0", flash_attn=False, available=BIG)
    with pytest.raises(EdgekitError, match="unknown KV cache type"):
        plan_info(QWEN05, 4096, "q3_k", available=BIG)
    assert plan_info(QWEN05, 4096, "q8_0/f16", available=BIG).type_k == "q8_0"


def test_plan_of_a_file(smollm2_gguf):
    p = edgekit.plan(smollm2_gguf, n_ctx=4096)
    assert p.n_ctx == 4096 and p.n_ctx_train == 8192 and p.available_bytes > 0
    assert p.weights_bytes > 90 * MiB and p.kv_bytes == 4096 * 30 * 3 * 64 * (2 + 2)  # f16 K and V
    with pytest.raises(FrozenInstanceError):  # a plan is a value: nobody edits it after planning
        p.fits = False


_MEASURE = """
import json, sys, edgekit
from edgekit.samples.assets import smollm2_gguf
n_ctx, kv = int(sys.argv[1]), sys.argv[2]
m = edgekit.load(smollm2_gguf(), n_ctx=n_ctx, kv_cache=kv, rope_scaling="linear" if n_ctx > 8192 else None)
c = m.generate("The history of the city is long. " * 70, max_tokens=8, temperature=0)  # a full 512-token ubatch
print(json.dumps({"peak": c.stats.peak_rss, "plan": m.plan.total_bytes}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx,kv", [(4096, "f16"), (32768, "q8_0/f16")])
def test_plan_agrees_with_measured_peak_rss(n_ctx, kv, smollm2_gguf):
    # A fresh process, so the peak RSS belongs to this model alone.
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(n_ctx), kv], capture_output=True, text=True,
                         check=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(r["peak"] / r["plan"] - 1) < 0.15, r


# Each architecture's tiny checkpoint (edgekit.samples.checkpoints.TINY_ARCHS) with 32 layers of 4 KV heads and a
# 32k trained context, so that at n_ctx 32768 its f16 KV cache (256-512 MiB: head sizes 16 and 32) is most of
# the plan, not the fixed overhead. Gemma 3 keeps 5 sliding-window layers in 6: llama.cpp would give them a
# window-sized cache unless told to keep every cell (swa_full, which edgekit sets), and the plan counts them at
# n_ctx; a plan that didn't match what llama.cpp allocates would be off by about half here.
KV_HEAVY_LAYERS = 32
KV_HEAVY = {
    "qwen3": {"max_window_layers": KV_HEAVY_LAYERS},
    "llama3": {},
    "smollm3": {"no_rope_layers": [1, 1, 1, 0] * (KV_HEAVY_LAYERS // 4), "max_window_layers": KV_HEAVY_LAYERS},
    "gemma3": {"layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * (KV_HEAVY_LAYERS // 6)
               + ["sliding_attention"] * (KV_HEAVY_LAYERS % 6)},
    "phi3": {"sliding_window": 32768},  # a window below the context is refused for phi3
}

_MEASURE_FILE = """
import json, sys, edgekit
m = edgekit.load(sys.argv[1], n_ctx=32768, kv_cache="f16", prompt_cache="off")
c = m.generate("The history of the city is long. " * 70, max_tokens=8, temperature=0)  # a full 512-token ubatch
print(json.dumps({"peak": c.stats.peak_rss, "plan": m.plan.total_bytes, "kv": m.plan.kv_bytes}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(KV_HEAVY))
def test_plan_agrees_with_measured_peak_rss_on_each_architecture(arch, tmp_path):
    from edgekit.convert import convert
    from edgekit.samples.assets import llama_bpe_vocab, qwen2_vocab
    from edgekit.samples.checkpoints import random_checkpoint

    vocab = llama_bpe_vocab() if arch == "llama3" else qwen2_vocab()
    ckpt = random_checkpoint(tmp_path / f"kv-heavy-{arch}", arch, vocab,
                             num_hidden_layers=KV_HEAVY_LAYERS, num_key_value_heads=4,
                             max_position_embeddings=32768, **KV_HEAVY[arch])
    [f16] = convert(ckpt, out=tmp_path / "gguf", quant="f16")
    out = subprocess.run([sys.executable, "-c", _MEASURE_FILE, str(f16.path)], capture_output=True, text=True,
                         check=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["kv"] > r["plan"] / 2  # the KV cache dominates the plan, so this checks its per-arch size
    assert abs(r["peak"] / r["plan"] - 1) < 0.15, r
