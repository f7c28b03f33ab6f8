"""The architectures edgekit converts, declared in one table.

Adding an architecture means adding an :class:`Arch` entry: the GGUF
architecture, whether llama.cpp expects Q/K rows permuted for its rotary
embedding, the tensors each block must have, the rope scaling types its
llama.cpp graph runs, and every config.json field that changes the forward pass
with the values edgekit converts exactly (anything else is refused, naming the
field). Tensor names are mapped with gguf-py's own ``TensorNameMap``, the table
llama.cpp's converter uses. docs/models.md lists what each entry was verified against.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import gguf

from edgekit.convert.hparams import HParams
from edgekit.errors import UnsupportedModel

# Per-block tensors (GGUF names) every Llama-family layer must have.
LLAMA_BLOCK = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
QK_NORMS = ("attn_q_norm", "attn_k_norm")
GEMMA3_BLOCK = (*LLAMA_BLOCK, *QK_NORMS, "post_attention_norm", "post_ffw_norm")
PHI3_BLOCK = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")

# config.json fields that change the forward pass: the values each conversion computes exactly.
# A field that is absent takes transformers' default, which is the first value listed.
NO_BIAS = (("attention_bias", (False,)), ("mlp_bias", (False,)))
NO_SLIDING = (("use_sliding_window", (False,)),)
SILU = (("hidden_act", ("silu",)),)


@dataclass(frozen=True)
class Arch:
    """How one Hugging Face architecture becomes a GGUF architecture."""

    hf_name: str
    gguf_arch: gguf.MODEL_ARCH
    # llama.cpp's LLAMA graph applies rotary embeddings to interleaved pairs, HF to
    # split halves, so the converter reorders Q/K rows (QWEN2 uses NEOX rope: no permute).
    permute_qk: bool
    # Tensors that carry no weights llama.cpp needs.
    skip_suffixes: tuple[str, ...] = (".rotary_emb.inv_freq",)
    write_rope_dims: bool = False
    write_vocab_size: bool = False
    # How HF names a block's tensors; group 1 is the layer number (counted from the file, not the config).
    block_pattern: str = r"model\.layers\.(\d+)\."
    block_tensors: tuple[str, ...] = LLAMA_BLOCK
    rope_types: tuple[str, ...] = ("linear", "yarn")
    requires: tuple[tuple[str, tuple], ...] = SILU + NO_SLIDING
    # Added to every RMS norm weight: Gemma computes x * (1 + w), llama.cpp x * w.
    norm_shift: float = 0.0
    fused_ffn: bool = False  # ffn_up holds gate and up stacked (Phi-3's gate_up_proj)
    sliding_window: bool = False  # has sliding-window layers (size, pattern and their rope base are written)
    # Checks of config fields llama.cpp's graph hard-codes (raise UnsupportedModel naming the field).
    check: Callable[[dict, HParams], None] | None = None

    @property
    def gguf_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]


def _refuse(field: str, value: object, arch: str, why: str) -> UnsupportedModel:
    return UnsupportedModel(f"config.json says {field}={json.dumps(value)}; {why}",
                            f"edgekit's {arch} conversion would compute something else, so it refuses.")


def _smollm3_rope_layers(config: dict, hp: HParams) -> None:
    """llama.cpp's smollm3 graph skips rope on every 4th layer (3, 7, ...): the pattern must be exactly that."""
    llama_cpp = [int((i + 1) % 4 != 0) for i in range(hp.n_layer)]
    interval = config.get("no_rope_layer_interval", 4)
    layers = config.get("no_rope_layers")
    if layers is None:
        if interval != 4:
            raise _refuse("no_rope_layer_interval", interval, "SmolLM3ForCausalLM",
                          "llama.cpp's smollm3 graph skips rope on every 4th layer only")
        return
    if not isinstance(layers, list) or [int(x) if isinstance(x, (int, bool)) else x for x in layers] != llama_cpp:
        raise _refuse("no_rope_layers", layers, "SmolLM3ForCausalLM",
                      "llama.cpp's smollm3 graph skips rope on every 4th layer (no_rope_layers "
                      f"{llama_cpp[:8]}...), not on these")


def _gemma3_config(config: dict, hp: HParams) -> None:
    """llama.cpp's gemma3 graph scales queries by 1/sqrt(head_dim) (n_embd/n_head for its 62-layer 27B)."""
    expected = hp.n_embd // hp.n_head if hp.n_layer == 62 else hp.head_dim
    scalar = config.get("query_pre_attn_scalar", 256)
    if not isinstance(scalar, (int, float)) or not math.isclose(float(scalar), expected):
        raise _refuse("query_pre_attn_scalar", scalar, "Gemma3ForCausalLM",
                      f"llama.cpp's gemma3 graph scales attention by 1/sqrt({expected}) for this shape")


def _phi3_config(config: dict, hp: HParams) -> None:
    """llama.cpp's phi3 graph has no sliding window and head_dim = hidden_size / num_attention_heads."""
    window = config.get("sliding_window")
    if window is not None and (not isinstance(window, int) or window < hp.n_ctx_train):
        raise _refuse("sliding_window", window, "Phi3ForCausalLM",
                      f"llama.cpp's phi3 graph attends to the whole context (it ignores windows below "
                      f"max_position_embeddings={hp.n_ctx_train})")
    if hp.head_dim * hp.n_head != hp.n_embd:
        raise _refuse("head_dim", hp.head_dim, "Phi3ForCausalLM",
                      f"llama.cpp's phi3 graph needs hidden_size / num_attention_heads = {hp.n_embd // hp.n_head}")


ARCHS: dict[str, Arch] = {
    # Qwen2 / Qwen2.5 (the target: terasut/gkd-qwen-2.5-0.5b-base_v4_from3b_eff32)
    "Qwen2ForCausalLM": Arch("Qwen2ForCausalLM", gguf.MODEL_ARCH.QWEN2, permute_qk=False),
    # Llama 2/3/3.x, SmolLM/SmolLM2, TinyLlama and other Llama-family checkpoints
    "LlamaForCausalLM": Arch(
        "LlamaForCausalLM", gguf.MODEL_ARCH.LLAMA, permute_qk=True, write_rope_dims=True, write_vocab_size=True,
        rope_types=("linear", "yarn", "llama3"), requires=SILU + NO_BIAS,
    ),
    # Qwen3 0.6B-32B dense: per-head q/k RMS norms, head_dim independent of hidden_size
    "Qwen3ForCausalLM": Arch(
        "Qwen3ForCausalLM", gguf.MODEL_ARCH.QWEN3, permute_qk=False, block_tensors=(*LLAMA_BLOCK, *QK_NORMS),
        requires=SILU + NO_SLIDING + NO_BIAS[:1],
    ),
    # SmolLM3: Llama with no rope on every 4th layer
    "SmolLM3ForCausalLM": Arch(
        "SmolLM3ForCausalLM", gguf.MODEL_ARCH.SMOLLM3, permute_qk=True, requires=SILU + NO_SLIDING + NO_BIAS,
        check=_smollm3_rope_layers,
    ),
    # Gemma 3 text (270M, 1B): (1 + w) norms, GELU-tanh, sliding-window layers
    "Gemma3ForCausalLM": Arch(
        "Gemma3ForCausalLM", gguf.MODEL_ARCH.GEMMA3, permute_qk=False, block_tensors=GEMMA3_BLOCK,
        rope_types=("linear",), norm_shift=1.0, sliding_window=True, check=_gemma3_config,
        requires=(("hidden_activation", ("gelu_pytorch_tanh",)), ("hidden_act", ("gelu_pytorch_tanh",)),
                  ("attention_bias", (False,)), ("attn_logit_softcapping", (None,)),
                  ("use_bidirectional_attention", (False, None))),
    ),
    # Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv and gate_up projections, partial rotary, longrope
    "Phi3ForCausalLM": Arch(
        "Phi3ForCausalLM", gguf.MODEL_ARCH.PHI3, permute_qk=False, write_rope_dims=True, block_tensors=PHI3_BLOCK,
        rope_types=("longrope",), fused_ffn=True, requires=SILU, check=_phi3_config,
    ),
}


def check_config(arch: Arch, config: dict, hp: HParams) -> None:
    """Refuse a config whose forward pass this conversion wouldn't compute, naming the field."""
    for field, allowed in arch.requires:
        if field in config and config[field] not in allowed:
            raise _refuse(field, config[field], arch.hf_name,
                          f"edgekit converts only {' or '.join(json.dumps(v) for v in allowed)} there")
    types = config.get("layer_types")
    if not arch.sliding_window and isinstance(types, list) and "sliding_attention" in types \
            and config.get("sliding_window"):
        raise _refuse("layer_types", types, arch.hf_name,
                      f"llama.cpp's {arch.gguf_name} graph has no sliding-window layers")
    kind = hp.rope_scaling.get("rope_type")
    if kind not in (None, "default") and kind not in arch.rope_types:
        raise UnsupportedModel(f"config.json: rope scaling type {kind!r} is not supported for {arch.hf_name}",
                               f"Supported there: {', '.join(arch.rope_types)}.")
    if arch.check is not None:
        arch.check(config, hp)


def arch_for(config: dict) -> Arch:
    """Return the table entry for a config.json, or refuse with the supported list."""
    names = config.get("architectures") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UnsupportedModel(f"config.json says architectures={json.dumps(names)[:60]}, not a list of names",
                               "Use the config.json that transformers saved with the model.")
    for name in names:
        if name in ARCHS:
            return ARCHS[name]
    shown = ", ".join(names) or f"model_type={config.get('model_type', '?')}"
    raise UnsupportedModel(
        f"architecture {shown} is not supported",
        f"edgekit converts {', '.join(sorted(ARCHS))}.",
    )


def permute_rows(weight, n_head: int):
    """Reorder Q/K projection rows from HF's split-half rope layout to llama.cpp's interleaved one.

    Works on weights (rows x cols) and biases (rows,) alike.
    """
    rows = weight.shape[0]
    tail = weight.shape[1:]
    return weight.reshape(n_head, 2, rows // n_head // 2, *tail).swapaxes(1, 2).reshape(weight.shape)
