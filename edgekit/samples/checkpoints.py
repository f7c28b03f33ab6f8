"""Hugging Face checkpoints for tests, the demo and benchmarks, built offline.

- ``random_qwen2_checkpoint``: a tiny (or any size) Qwen2ForCausalLM with the
  real Qwen2 vocabulary and seeded random weights, in either config format.
- ``full_size_qwen2_checkpoint``: the Qwen2.5-0.5B architecture at full size
  with random weights, for speed and memory measurements.
- ``random_checkpoint``: a tiny Qwen3, Llama 3.x, SmolLM3, Gemma 3 or Phi-3
  checkpoint (:data:`TINY_ARCHS`) with a real vocabulary and seeded random weights,
  norms away from their defaults, each architecture's special features switched on.
- ``bench_checkpoint``: the smallest real model of each of :data:`BENCH_ARCHS` at its real widths
  and vocabulary, with fewer layers, for speed comparisons.
- ``cached_checkpoint``: build one of them once per machine in the asset cache.

:mod:`edgekit.samples.smollm2` recovers SmolLM2-135M-Instruct's real weights
from its GGUF with the writers here.

Every tensor is drawn from its own generator seeded by (seed, tensor name), so a
checkpoint's values do not depend on how it is sharded.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.safetensors import f32_to_bf16, write_safetensors
from edgekit.samples.hf_tokenizer import gguf_metadata, tokenizer_files_from_gguf

DTYPES = {"bf16": ("BF16", "bfloat16"), "f16": ("F16", "float16"), "f32": ("F32", "float32")}
TRANSFORMERS_4X = "4.51.3"  # what a TRL fine-tune of 2025 was saved with
TRANSFORMERS_5X = "5.0.0"
RANDOM_NOTE = "random weights with the real vocabulary; made by edgekit.samples.checkpoints, not a trained model"

# A tensor to write: HF name, shape, and a function producing its float32 values.
TensorSpec = tuple[str, tuple[int, ...], Callable[[], np.ndarray]]


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _normal(seed: int, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        values = _rng(seed, name).standard_normal(shape, dtype=np.float32)
        values *= np.float32(std)
        if mean:
            values += np.float32(mean)
        return values

    return make


def encode(values: np.ndarray, st_dtype: str) -> np.ndarray:
    """float32 values as stored in a safetensors file of ``st_dtype`` (BF16 as uint16 words)."""
    if st_dtype == "BF16":
        return f32_to_bf16(values)
    return values.astype(np.float16 if st_dtype == "F16" else np.float32)


def _nbytes(shape: tuple[int, ...], st_dtype: str) -> int:
    return math.prod(shape) * (4 if st_dtype == "F32" else 2)


def write_weights(out_dir: Path, specs: list[TensorSpec], st_dtype: str, shards: int = 1,
                  metadata: dict[str, str] | None = None) -> list[Path]:
    """Write tensors as one ``model.safetensors`` or ``shards`` files plus the index, one shard in memory at a time."""
    meta = {"format": "pt", **(metadata or {})}
    # Drop weights of an earlier build with another shard count, or readers would see both.
    for stale in [*out_dir.glob("model*.safetensors"), out_dir / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    total = sum(_nbytes(shape, st_dtype) for _, shape, _ in specs)
    if shards <= 1:
        path = out_dir / "model.safetensors"
        write_safetensors(path, {name: (st_dtype, encode(make(), st_dtype)) for name, _, make in specs}, meta)
        return [path]
    if shards > len(specs):
        raise ValueError(f"can't split {len(specs)} tensors into {shards} shards")
    # Contiguous groups, each about an equal share of the bytes not yet placed,
    # and never empty (a huge embedding matrix may fill one shard by itself).
    groups: list[list[TensorSpec]] = []
    start, placed = 0, 0
    for k in range(shards, 0, -1):
        target = placed + (total - placed) / k
        end, size = start, 0
        while end < len(specs) - (k - 1) and (end == start or placed + size < target):
            size += _nbytes(specs[end][1], st_dtype)
            end += 1
        if k == 1:
            end = len(specs)
        groups.append(specs[start:end])
        placed += sum(_nbytes(sp[1], st_dtype) for sp in specs[start:end])
        start = end
    n = len(groups)
    weight_map: dict[str, str] = {}
    paths = []
    for i, grp in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        write_safetensors(out_dir / fname, {name: (st_dtype, encode(make(), st_dtype)) for name, _, make in grp}, meta)
        weight_map.update({name: fname for name, _, _ in grp})
        paths.append(out_dir / fname)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    write_json(out_dir / "model.safetensors.index.json", index)
    return paths


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, as transformers does."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer(out_dir: Path, vocab_gguf: str | Path, model_max_length: int | None = None) -> dict[str, Any]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; return the config."""
    files = tokenizer_files_from_gguf(vocab_gguf, model_max_length=model_max_length)
    for name, obj in files.items():
        write_json(out_dir / name, obj)
    return files["tokenizer_config.json"]


def _token_id(tokenizer_json: dict[str, Any], content: str) -> int | None:
    for tok in tokenizer_json["added_tokens"]:
        if tok["content"] == content:
            return tok["id"]
    return None


def qwen2_config(*, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int, vocab_size: int,
                 dtype: str, tied: bool, config_style: str, max_position_embeddings: int, rope_theta: float,
                 yarn: float | None, bos_id: int, eos_id: int, rms_norm_eps: float = 1e-6) -> dict[str, Any]:
    """config.json of a Qwen2ForCausalLM with exactly the keys transformers 4.x or 5.x writes."""
    if config_style not in ("4.x", "5.x"):
        raise ValueError(f"config_style must be '4.x' or '5.x', not {config_style!r}")
    cfg: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": max_position_embeddings,
        "max_window_layers": layers,
        "model_type": "qwen2",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": rms_norm_eps,
    }
    yarn_params = None
    if yarn is not None:
        yarn_params = {"factor": float(yarn), "original_max_position_embeddings": max_position_embeddings,
                       "rope_type": "yarn"}
    if config_style == "4.x":
        # Qwen2.5's own config keeps sliding_window set while use_sliding_window is false.
        rope_scaling = {**yarn_params, "type": "yarn"} if yarn_params else None
        cfg.update({"rope_scaling": rope_scaling, "rope_theta": float(rope_theta),
                    "sliding_window": max_position_embeddings, "tie_word_embeddings": tied,
                    "torch_dtype": DTYPES[dtype][1], "transformers_version": TRANSFORMERS_4X})
    else:
        rope = {"rope_theta": float(rope_theta), "rope_type": "default"}
        if yarn_params:
            rope.update(yarn_params)
        cfg.update({"dtype": DTYPES[dtype][1], "layer_types": ["full_attention"] * layers, "pad_token_id": None,
                    "rope_parameters": rope, "sliding_window": None, "tie_word_embeddings": tied,
                    "transformers_version": TRANSFORMERS_5X})
    cfg.update({"use_cache": True, "use_sliding_window": False, "vocab_size": vocab_size})
    return dict(sorted(cfg.items()))


def _qwen2_specs(*, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int, vocab_size: int,
                 tied: bool, seed: int) -> Iterator[TensorSpec]:
    """Tensors with scales chosen so every layer matters and logits are peaky but not one-hot.

    Embedding rows have norm about 4, so tied logits have a spread of about 4
    nats; projections are ~1/sqrt(fan_in) so activations keep unit scale, and the
    residual branches (o_proj, down_proj) add about as much as the residual holds.
    """
    head_dim = hidden // heads
    emb_std = 4.0 / math.sqrt(hidden)
    branch = 0.8 * emb_std

    def mat(name: str, rows: int, cols: int, gain: float = 1.0) -> TensorSpec:
        return name, (rows, cols), _normal(seed, name, (rows, cols), gain / math.sqrt(cols))

    def vec(name: str, n: int, std: float, mean: float = 0.0) -> TensorSpec:
        return name, (n,), _normal(seed, name, (n,), std, mean)

    yield "model.embed_tokens.weight", (vocab_size, hidden), _normal(seed, "model.embed_tokens.weight",
                                                                     (vocab_size, hidden), emb_std)
    for i in range(layers):
        p = f"model.layers.{i}."
        yield vec(p + "input_layernorm.weight", hidden, 0.1, 1.0)
        yield mat(p + "mlp.down_proj.weight", hidden, intermediate, branch * 2)
        yield mat(p + "mlp.gate_proj.weight", intermediate, hidden)
        yield mat(p + "mlp.up_proj.weight", intermediate, hidden)
        yield vec(p + "post_attention_layernorm.weight", hidden, 0.1, 1.0)
        yield vec(p + "self_attn.k_proj.bias", kv_heads * head_dim, 0.3)
        yield mat(p + "self_attn.k_proj.weight", kv_heads * head_dim, hidden, 1.5)
        yield mat(p + "self_attn.o_proj.weight", hidden, heads * head_dim, branch)
        yield vec(p + "self_attn.q_proj.bias", heads * head_dim, 0.3)
        yield mat(p + "self_attn.q_proj.weight", heads * head_dim, hidden, 1.5)
        yield vec(p + "self_attn.v_proj.bias", kv_heads * head_dim, 0.3)
        yield mat(p + "self_attn.v_proj.weight", kv_heads * head_dim, hidden)
    yield vec("model.norm.weight", hidden, 0.1, 1.0)
    if not tied:
        yield "lm_head.weight", (vocab_size, hidden), _normal(seed, "lm_head.weight", (vocab_size, hidden), emb_std)


def random_qwen2_checkpoint(
    out_dir: str | Path,
    vocab_gguf: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    dtype: str = "bf16",
    tied: bool = True,
    shards: int = 1,
    config_style: str = "4.x",
    seed: int = 0,
    max_position_embeddings: int = 32768,
    rope_theta: float = 1e6,
    yarn: float | None = None,
    vocab_size: int | None = None,
) -> Path:
    """Write a Qwen2ForCausalLM checkpoint with seeded random weights and the GGUF's real vocabulary.

    ``vocab_size`` defaults to the GGUF's token count (151936 for llama.cpp's
    Qwen2 vocab, which matches Qwen2.5's config). Returns ``out_dir``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    if hidden % heads or heads % kv_heads:
        raise ValueError("hidden must be a multiple of heads, and heads a multiple of kv_heads")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_tokens = len(gguf_metadata(vocab_gguf)["tokenizer.ggml.tokens"])
    vocab_size = vocab_size or n_tokens
    tok_cfg = write_tokenizer(out, vocab_gguf, model_max_length=131072)
    tok_json = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    eos = _token_id(tok_json, tok_cfg["eos_token"]) if tok_cfg.get("eos_token") else None
    bos = _token_id(tok_json, tok_cfg["bos_token"]) if tok_cfg.get("bos_token") else None
    im_end = _token_id(tok_json, "<|im_end|>")

    cfg = qwen2_config(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, intermediate=intermediate,
                       vocab_size=vocab_size, dtype=dtype, tied=tied, config_style=config_style,
                       max_position_embeddings=max_position_embeddings, rope_theta=rope_theta, yarn=yarn,
                       bos_id=bos, eos_id=eos)
    write_json(out / "config.json", cfg)
    # Like Qwen2.5 chat fine-tunes: config says <|endoftext|>, generation also stops at <|im_end|>.
    gen_eos: Any = [im_end, eos] if im_end is not None and im_end != eos else eos
    gen = {"bos_token_id": bos, "do_sample": False, "eos_token_id": gen_eos, "max_new_tokens": 2048,
           "transformers_version": cfg["transformers_version"]}
    write_json(out / "generation_config.json", gen)
    specs = list(_qwen2_specs(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                              intermediate=intermediate, vocab_size=vocab_size, tied=tied, seed=seed))
    write_weights(out, specs, DTYPES[dtype][0], shards, {"edgekit": RANDOM_NOTE})
    return out


def full_size_qwen2_checkpoint(out_dir: str | Path, vocab_gguf: str | Path, shards: int = 2, seed: int = 0,
                               config_style: str = "4.x") -> Path:
    """Write the Qwen2.5-0.5B architecture at full size (bf16, tied, ~1 GB) with random weights.

    Speed and memory depend on shapes, not values, so this stands in for the real
    model in benchmarks. A README.md in the directory says the weights are random.
    """
    out = random_qwen2_checkpoint(out_dir, vocab_gguf, layers=24, hidden=896, heads=14, kv_heads=2,
                                  intermediate=4864, dtype="bf16", tied=True, shards=shards, seed=seed,
                                  config_style=config_style, vocab_size=151936)
    (out / "README.md").write_text(
        "# Qwen2.5-0.5B architecture, random weights\n\n"
        f"This checkpoint has the Qwen2.5-0.5B shapes (24 layers, hidden 896, 14/2 heads, vocab 151936) and {RANDOM_NOTE}.\n"
        "Use it to measure speed and memory only; its text is noise.\n",
        encoding="utf-8",
    )
    return out


LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

# Llama 3.1 renamed three of Llama 3's reserved special tokens; llama.cpp's llama-bpe vocabulary is Llama 3's.
LLAMA31_SPECIALS = {128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>"}


def _as_llama31(out: Path, names: dict[int, str] = LLAMA31_SPECIALS) -> None:
    """Make llama.cpp's Llama 3 tokenizer files Llama 3.1/3.2's: renamed specials, BOS added by the post-processor."""
    tok_json = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    for tok in tok_json["added_tokens"]:
        tok["content"] = names.get(tok["id"], tok["content"])
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    tok_json["post_processor"] = {"type": "Sequence", "processors": [tok_json["post_processor"], {
        "type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                 "tokens": ["<|begin_of_text|>"]}}}]}
    write_json(out / "tokenizer.json", tok_json)
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    del tok_cfg["add_bos_token"]  # Llama 3's tokenizer_config.json leaves it to the post-processor
    for token_id, text in names.items():
        tok_cfg["added_tokens_decoder"][str(token_id)]["content"] = text
    tok_cfg["additional_special_tokens"] = [t["content"] for t in tok_json["added_tokens"] if t["special"]
                                            and t["content"] not in (tok_cfg["bos_token"], tok_cfg["eos_token"])]
    write_json(out / "tokenizer_config.json", tok_cfg)


# Each tiny architecture: its config.json (transformers 4.x keys), with what makes it different switched on.
# Shapes are small; head_dim, windows and rope thresholds are small too, so short prompts cross them.
TINY_ARCHS: dict[str, dict[str, Any]] = {
    # head_dim 32 with hidden 64 and 4 heads (128 != 64), untied output (Qwen3-4B and larger)
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 32, "hidden_act": "silu",
              "attention_bias": False, "use_sliding_window": False, "sliding_window": None, "max_window_layers": 2,
              "rope_theta": 1e6, "rope_scaling": None, "max_position_embeddings": 4096, "tie_word_embeddings": False},
    # Llama 3.2's rope scaling with a small original context, so 64 tokens span all three frequency bands
    "llama3": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "head_dim": 16, "hidden_act": "silu",
               "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1, "rope_theta": 500000.0,
               "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                "original_max_position_embeddings": 64, "rope_type": "llama3"},
               "max_position_embeddings": 2048, "tie_word_embeddings": True},
    # 4 layers: layer 3 has no rope (SmolLM3's every 4th layer)
    "smollm3": {"architectures": ["SmolLM3ForCausalLM"], "model_type": "smollm3", "layers": 4, "hidden_act": "silu",
                "attention_bias": False, "mlp_bias": False, "use_sliding_window": False, "sliding_window": None,
                "no_rope_layer_interval": 4, "no_rope_layers": [1, 1, 1, 0], "rope_theta": 5e6, "rope_scaling": None,
                "max_position_embeddings": 4096, "max_window_layers": 4, "tie_word_embeddings": True},
    # an 8-token window on an irregular layer pattern, its own local rope base, query_pre_attn_scalar = head_dim
    "gemma3": {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "layers": 4, "head_dim": 32,
               "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False, "attn_logit_softcapping": None,
               "final_logit_softcapping": None, "query_pre_attn_scalar": 32, "sliding_window": 8,
               "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
               "rope_theta": 1e6, "rope_local_base_freq": 10000.0, "rope_scaling": None,
               "max_position_embeddings": 4096, "use_bidirectional_attention": False, "tie_word_embeddings": True},
    # Phi-4-mini's shape of things: partial rotary 0.75, longrope past 256 tokens, window >= context (inactive)
    "phi3": {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden": 128, "hidden_act": "silu",
             "partial_rotary_factor": 0.75, "original_max_position_embeddings": 256, "max_position_embeddings": 1024,
             "rope_theta": 10000.0, "sliding_window": 2048, "tie_word_embeddings": True,
             "rope_scaling": {"type": "longrope", "long_factor": [1.0 + 0.5 * i for i in range(12)],
                              "short_factor": [1.0 + 0.05 * i for i in range(12)]}},
}


def _arch_specs(cfg: dict[str, Any], seed: int) -> Iterator[TensorSpec]:
    """Tensors for one of TINY_ARCHS, scaled like :func:`_qwen2_specs`; every norm is away from its default."""
    hidden, heads, kv, ff = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or hidden // heads
    vocab = cfg["vocab_size"]
    gemma = cfg["model_type"] == "gemma3_text"
    fused = cfg["model_type"] == "phi3"
    emb_std = 4.0 / math.sqrt(hidden)
    branch = 0.8 * emb_std
    norm_mean = 0.0 if gemma else 1.0  # Gemma stores w of (1 + w)

    def mat(name: str, rows: int, cols: int, gain: float = 1.0) -> TensorSpec:
        return name, (rows, cols), _normal(seed, name, (rows, cols), gain / math.sqrt(cols))

    def norm(name: str, n: int, mean: float = norm_mean) -> TensorSpec:
        return name, (n,), _normal(seed, name, (n,), 0.1, mean)

    yield "model.embed_tokens.weight", (vocab, hidden), _normal(seed, "model.embed_tokens.weight", (vocab, hidden),
                                                                emb_std)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield norm(p + "input_layernorm.weight", hidden)
        yield norm(p + "post_attention_layernorm.weight", hidden)
        if gemma:
            yield norm(p + "pre_feedforward_layernorm.weight", hidden)
            yield norm(p + "post_feedforward_layernorm.weight", hidden, 1.0)  # effective 2: branches count
        if fused:
            yield mat(p + "self_attn.qkv_proj.weight", (heads + 2 * kv) * head_dim, hidden, 1.5)
            yield mat(p + "mlp.gate_up_proj.weight", 2 * ff, hidden)
        else:
            yield mat(p + "self_attn.q_proj.weight", heads * head_dim, hidden, 1.5)
            yield mat(p + "self_attn.k_proj.weight", kv * head_dim, hidden, 1.5)
            yield mat(p + "self_attn.v_proj.weight", kv * head_dim, hidden)
            yield mat(p + "mlp.gate_proj.weight", ff, hidden)
            yield mat(p + "mlp.up_proj.weight", ff, hidden)
        if cfg["model_type"] in ("qwen3", "gemma3_text"):
            yield norm(p + "self_attn.q_norm.weight", head_dim)
            yield norm(p + "self_attn.k_norm.weight", head_dim)
        yield mat(p + "self_attn.o_proj.weight", hidden, heads * head_dim, branch)
        yield mat(p + "mlp.down_proj.weight", hidden, ff, branch * 2)
    yield norm("model.norm.weight", hidden)
    if not cfg["tie_word_embeddings"]:
        yield "lm_head.weight", (vocab, hidden), _normal(seed, "lm_head.weight", (vocab, hidden), emb_std)


def as_5x_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A 4.x config.json of :data:`TINY_ARCHS` as transformers 5.x saves it (checked against what 5.25 wrote).

    Rope settings move into ``rope_parameters`` (per layer type for Gemma 3, with Phi-3's partial rotary
    factor and original context in it); ``layer_types`` is spelled out; ``torch_dtype`` becomes ``dtype``.
    """
    out = {k: v for k, v in cfg.items() if k not in ("rope_theta", "rope_scaling", "rope_local_base_freq", "torch_dtype")}
    rope: dict[str, Any] = {**(cfg.get("rope_scaling") or {}), "rope_theta": cfg["rope_theta"]}
    rope["rope_type"] = rope.get("rope_type") or rope.get("type") or "default"
    if cfg["model_type"] == "gemma3_text":
        rope = {"full_attention": rope, "sliding_attention": {"rope_theta": cfg.get("rope_local_base_freq", 10000.0),
                                                              "rope_type": "default"}}
    if cfg["model_type"] == "phi3":
        rope.update(partial_rotary_factor=cfg["partial_rotary_factor"],
                    original_max_position_embeddings=cfg["original_max_position_embeddings"])
    if cfg["model_type"] in ("qwen3", "smollm3"):
        out["layer_types"] = ["full_attention"] * cfg["num_hidden_layers"]
    out.update(rope_parameters=rope, dtype=cfg["torch_dtype"], transformers_version=TRANSFORMERS_5X)
    return dict(sorted(out.items()))


def random_checkpoint(out_dir: str | Path, arch: str, vocab_gguf: str | Path, *, seed: int = 0,
                      dtype: str = "bf16", config_style: str = "4.x", **overrides: Any) -> Path:
    """Write a tiny checkpoint of ``arch`` (a key of :data:`TINY_ARCHS`) with the GGUF's real vocabulary.

    ``overrides`` replace config.json keys (before the weights are drawn, so shapes follow them);
    ``config_style`` "5.x" writes config.json as transformers 5.x does (:func:`as_5x_config`).
    The embedding has the vocabulary GGUF's rows (Qwen2's 151936 holds 151646 tokens).
    """
    if arch not in TINY_ARCHS:
        raise ValueError(f"arch must be one of {sorted(TINY_ARCHS)}, not {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = dict(TINY_ARCHS[arch])
    layers = spec.pop("layers", 2)
    hidden = spec.pop("hidden", 64)
    n_tokens = len(gguf_metadata(vocab_gguf)["tokenizer.ggml.tokens"])
    tok_cfg = write_tokenizer(out, vocab_gguf, model_max_length=spec["max_position_embeddings"])
    if gguf_metadata(vocab_gguf).get("tokenizer.ggml.pre") == "llama-bpe":  # make it Llama 3.1/3.2's
        _as_llama31(out)
        tok_cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_json = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    bos = _token_id(tok_json, tok_cfg["bos_token"]) if tok_cfg.get("bos_token") else None
    eos = _token_id(tok_json, tok_cfg["eos_token"]) if tok_cfg.get("eos_token") else None
    ends = [t for t in (_token_id(tok_json, s) for s in ("<|im_end|>", "<|eom_id|>", "<|eot_id|>")) if t is not None]
    if _token_id(tok_json, "<|eot_id|>") is not None:
        tok_cfg["chat_template"] = LLAMA3_TEMPLATE
        write_json(out / "tokenizer_config.json", tok_cfg)
    cfg: dict[str, Any] = {
        "attention_dropout": 0.0, "bos_token_id": bos, "eos_token_id": eos, "hidden_size": hidden,
        "initializer_range": 0.02, "intermediate_size": 2 * hidden, "num_attention_heads": 4,
        "num_hidden_layers": layers, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
        "torch_dtype": DTYPES[dtype][1], "transformers_version": TRANSFORMERS_4X, "use_cache": True,
        "vocab_size": n_tokens, **spec, **overrides,
    }
    cfg = dict(sorted(cfg.items()))
    write_json(out / "config.json", as_5x_config(cfg) if config_style == "5.x" else cfg)
    gen_eos: Any = sorted({eos, *ends} - {None}) if ends else eos
    write_json(out / "generation_config.json", {"bos_token_id": bos, "do_sample": False, "eos_token_id": gen_eos,
                                                "transformers_version": TRANSFORMERS_4X})
    write_weights(out, list(_arch_specs(cfg, seed)), DTYPES[dtype][0], 1, {"edgekit": RANDOM_NOTE})
    return out


# Bump when a builder's output changes, so per-machine caches are rebuilt.
BUILD_VERSION = "2"


def cached_checkpoint(name: str, build: Callable[[Path], Path]) -> Path:
    """Build a checkpoint once per machine under the asset cache; return its directory.

    The directory name carries ``BUILD_VERSION``, so a changed builder never
    overwrites a directory another process may be reading. Built under a file
    lock into a temporary directory that replaces the target only when complete,
    so parallel sessions never see a half-written checkpoint.
    """
    import fcntl

    from edgekit.atomic import atomic_directory
    from edgekit.samples.assets import CACHE

    out = CACHE / f"{name}-v{BUILD_VERSION}"
    if (out / ".done").exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / ".done").exists():
            return out
        with atomic_directory(out) as tmp:
            build(tmp)
            (tmp / ".done").touch()
    return out


def cached_full_size_qwen2_checkpoint() -> Path:
    """The full-size random Qwen2.5-0.5B-architecture checkpoint (~1 GB), built once per machine."""
    from edgekit.samples.assets import qwen2_vocab

    return cached_checkpoint("qwen2.5-0.5b-random-hf", lambda d: full_size_qwen2_checkpoint(d, qwen2_vocab()))


def cached_random_checkpoint(arch: str) -> Path:
    """A tiny checkpoint of ``arch`` (a key of :data:`TINY_ARCHS`), built once per machine.

    Its directory becomes the GGUF's ``general.name``; Phi-3's is named ``tiny-phi-longrope``, though edgekit
    now writes a Phi-3 name llama.cpp would misread as ``Phi 3`` (docs/models.md, "Phi-3's name").
    """
    from edgekit.samples.assets import llama_bpe_vocab, qwen2_vocab

    vocab = llama_bpe_vocab() if arch == "llama3" else qwen2_vocab()
    name = f"tiny-{arch}".replace("phi3", "phi-longrope")
    return cached_checkpoint(f"{name}-r4", lambda d: random_checkpoint(d, arch, vocab))


# Bench-size checkpoints: each architecture's smallest real model by its config.json (widths, heads, KV heads,
# head_dim, intermediate size, vocabulary rows, rope settings), with fewer layers so its Q4_0 GGUF stays near
# 400 MB. llama.cpp's Q4_0 stores a tied embedding as Q6_K (0.82 B/weight) and the layers as Q4_0 (0.56):
#   Qwen3-0.6B:  embedding 128 MB + 28 layers x  8.9 MB = 375 MB (all its layers)
#   Llama 3.2 1B: embedding 215 MB +  5 layers x 34.2 MB = 386 MB (of 16)
#   SmolLM3-3B:  embedding 215 MB +  4 layers x 43.9 MB = 391 MB (of 36; layer 3 has no rope, as in the model)
#   Phi-4-mini:  embedding 504 MB +  2 layers x 56.6 MB = 617 MB (of 32; its 200k x 3072 embedding alone is over 400)
# Vocabularies: Qwen2's for Qwen3, Llama 3's for Llama 3.2 and SmolLM3 (both use it), and Qwen2's padded to
# Phi-4-mini's 200064 rows (llama.cpp ships no o200k vocabulary; decode speed depends on the rows, not the text).
# Gemma 3 needs no stand-in: the real 270M is edgekit.samples.gemma3.cached_gemma3_270m_checkpoint().
BENCH_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3": ("Qwen3-0.6B", {
        "num_hidden_layers": 28, "hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 8,
        "head_dim": 128, "intermediate_size": 3072, "max_window_layers": 28, "max_position_embeddings": 40960,
        "tie_word_embeddings": True}),
    "llama3": ("Llama-3.2-1B", {
        "num_hidden_layers": 5, "hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "intermediate_size": 8192, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}}),
    "smollm3": ("SmolLM3-3B", {
        "num_hidden_layers": 4, "hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 4,
        "intermediate_size": 11008, "max_window_layers": 4, "max_position_embeddings": 65536,
        "no_rope_layer_interval": 4, "no_rope_layers": [1, 1, 1, 0]}),
    "phi3": ("Phi-4-mini", {
        "num_hidden_layers": 2, "hidden_size": 3072, "num_attention_heads": 24, "num_key_value_heads": 8,
        "intermediate_size": 8192, "rms_norm_eps": 1e-5, "vocab_size": 200064, "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096, "sliding_window": 262144,
        # one factor per rotated dimension pair: 128 x 0.75 / 2 = 48
        "rope_scaling": {"type": "longrope", "long_factor": [1.0 + 0.75 * i for i in range(48)],
                         "short_factor": [1.0 + 0.02 * i for i in range(48)]}}),
}


def bench_checkpoint(out_dir: str | Path, arch: str, seed: int = 0) -> Path:
    """Write a bench-size checkpoint of ``arch`` (a key of :data:`BENCH_ARCHS`): bf16, random weights.

    Speed depends on shapes, not values, so this stands in for the real model in speed comparisons;
    layers are cut (see :data:`BENCH_ARCHS`) to keep the Q4_0 file near 400 MB. A README.md says so.
    """
    from edgekit.samples.assets import llama_bpe_vocab, qwen2_vocab

    if arch not in BENCH_ARCHS:
        raise ValueError(f"arch must be one of {sorted(BENCH_ARCHS)}, not {arch!r}")
    model, overrides = BENCH_ARCHS[arch]
    vocab = llama_bpe_vocab() if arch in ("llama3", "smollm3") else qwen2_vocab()
    out = random_checkpoint(out_dir, arch, vocab, seed=seed, dtype="bf16", **overrides)
    (out / "README.md").write_text(
        f"# {model} shapes, {overrides['num_hidden_layers']} layers, random weights\n\n"
        f"{model}'s widths, heads, vocabulary rows and rope settings with {RANDOM_NOTE}.\n"
        "Use it to measure speed only; its text is noise.\n", encoding="utf-8")
    return out


def cached_bench_checkpoint(arch: str) -> Path:
    """The bench-size checkpoint of ``arch`` (a key of :data:`BENCH_ARCHS`), built once per machine."""
    if arch not in BENCH_ARCHS:
        raise ValueError(f"arch must be one of {sorted(BENCH_ARCHS)}, not {arch!r}")
    model, overrides = BENCH_ARCHS[arch]
    name = f"bench-{model.lower()}-{overrides['num_hidden_layers']}l"  # its general.name: never "phi3" (see above)
    return cached_checkpoint(name, lambda d: bench_checkpoint(d, arch))
