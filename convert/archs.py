"""The architectures edgekit converts, declared in one table.

Adding an architecture means adding an :class:`Arch` entry: the GGUF
architecture, whether llama.cpp expects Q/K rows permuted for its rotary
embedding, and which HF tensors to drop. Tensor names are mapped with gguf-py's
own ``TensorNameMap``, the table llama.cpp's converter uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import gguf

from edgekit.errors import UnsupportedModel


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

    @property
    def gguf_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]


ARCHS: dict[str, Arch] = {
    # Qwen2 / Qwen2.5 (the target: terasut/gkd-qwen-2.5-0.5b-base_v4_from3b_eff32)
    "Qwen2ForCausalLM": Arch("Qwen2ForCausalLM", gguf.MODEL_ARCH.QWEN2, permute_qk=False),
    # Llama 2/3, SmolLM/SmolLM2, TinyLlama and other Llama-family checkpoints
    "LlamaForCausalLM": Arch(
        "LlamaForCausalLM", gguf.MODEL_ARCH.LLAMA, permute_qk=True, write_rope_dims=True, write_vocab_size=True
    ),
}


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
