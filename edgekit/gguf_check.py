"""Validate a GGUF before llama.cpp opens it, and read what the planner needs.

The header itself is parsed and bounds-checked by :mod:`edgekit.gguf_meta`
(magic, version, counts, string and array sizes, tensor data inside the file).
This module adds the runtime's checks on top: is the architecture one this
llama.cpp build runs, and does the file carry the hyperparameters we plan with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import CorruptFile, UnsupportedModel
from edgekit.gguf_meta import read_header
from edgekit.llama_facts import ggml_type_name

# general.architecture values known to the llama.cpp vendored in llama-cpp-python
# 0.3.36 (src/llama-arch.cpp, LLM_ARCH_NAMES), minus encoder-only/vision/audio
# entries that can't generate text.
SUPPORTED_ARCHS = frozenset("""
llama llama4 deci falcon grok gpt2 gptj gptneox mpt baichuan starcoder refact bloom stablelm qwen qwen2
qwen2moe qwen2vl qwen3 qwen3moe qwen3next qwen3vl qwen3vlmoe qwen35 qwen35moe qwen4exp phi2 phi3 phimoe plamo
plamo2 plamo3 codeshell orion internlm2 minicpm minicpm3 gemma gemma2 gemma3 gemma3n gemma4 starcoder2 mamba
mamba2 maple jamba falcon-h1 xverse command-r cohere2 cohere2moe dbrx olmo olmo2 olmoe muse-glimmer openelm
arctic deepseek deepseek2 deepseek32 deepseek4 chatglm glm4 glm4moe glm-dsa bitnet t5 jais jais2 nemotron
nemotron_h nemotron_h_moe exaone exaone4 exaone-moe rwkv6 rwkv6qwen2 rwkv7 arwkv7 granite granitemoe
granitehybrid graniteswitch granite_swa chameleon plm bailingmoe bailingmoe2 bailingmoe3 dots1 dots3note arcee
afmoe laguna ernie4_5 ernie4_5-moe hunyuan-moe hunyuan-dense hy_v3 hy_v4 smollm3 gpt-oss lfm2 lfm2moe dream
smallthinker llada llada-moe seed_oss grovemoe apertus minimax-01 hrm_text minimax-m2 minimax-m3 rnd1
pangu-embedded mistral3 mistral4
""".split())


@dataclass(frozen=True)
class ModelInfo:
    """What edgekit knows about a GGUF file before loading it."""

    path: Path
    arch: str
    file_size: int
    weights_bytes: int  # bytes of tensor data (what mmap maps and decoding reads)
    n_tensors: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int  # the largest per-layer value when the file lists one per layer
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    chat_template: str | None
    eog_token_ids: tuple[int, ...]
    name: str | None
    metadata: dict[str, Any] = field(repr=False)
    tensor_types: frozenset[str] = frozenset()  # ggml type names of the tensors, e.g. {"F32", "Q4_0"}
    # (name, ggml type name, rows) of every 2-D weight: which of them llama.cpp can repack
    matrices: tuple[tuple[str, str, int], ...] = field(default=(), repr=False)

    def kv_values_per_token(self) -> tuple[int, int]:
        """(K values, V values) the KV cache stores per token, over all layers."""
        return (self.n_layer * self.n_head_kv * self.head_dim_k, self.n_layer * self.n_head_kv * self.head_dim_v)


def _int(md: dict[str, Any], key: str, file_name: str, default: int = 0) -> int:
    """An integer key (the largest entry of a per-layer array, e.g. head_count_kv on some archs); refuse anything else."""
    value = md.get(key)
    if value is None:
        return default
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
        raise CorruptFile(f"{file_name}: {key} is {shown}, not a count",
                          "The GGUF is corrupt; convert or download it again.")
    return max(values)


def _short_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata without the vocabulary-sized arrays (kept small for Model.metadata)."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, list) and len(value) > 64:
            out[key] = f"<array of {len(value)}>"
        else:
            out[key] = value
    return out


def check(path: str | Path) -> ModelInfo:
    """Validate the GGUF at ``path`` and return its :class:`ModelInfo`.

    Raises :class:`~edgekit.SourceError` (missing), :class:`~edgekit.CorruptFile`
    (not GGUF, truncated, malformed) or :class:`~edgekit.UnsupportedModel`.
    """
    header = read_header(path)
    md = header.metadata
    arch = header.arch
    name = Path(path).name
    if not arch:
        raise CorruptFile(f"{name} has no general.architecture key", "The GGUF was not written by a known tool.")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModel(
            f"{name} has architecture {arch!r}, which this llama.cpp build can't run",
            "Upgrade llama-cpp-python, or use a model of a supported architecture (e.g. qwen2, llama).",
        )

    def count(key: str, default: int = 0) -> int:
        return _int(md, f"{arch}.{key}", name, default)

    def need(key: str) -> int:
        if md.get(f"{arch}.{key}") is None:
            raise CorruptFile(f"{name} lacks the {arch}.{key} key", "Convert the model again with `edgekit convert`.")
        value = count(key)
        if not value:
            raise CorruptFile(f"{name} says {arch}.{key}=0", "The GGUF is corrupt; convert or download it again.")
        return value

    n_layer = need("block_count")
    n_embd = need("embedding_length")
    n_head = count("attention.head_count") or 1
    n_head_kv = count("attention.head_count_kv", n_head) or n_head
    head_dim = n_embd // n_head
    tokens = md.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens) if isinstance(tokens, list) else count("vocab_size")
    eog = []
    for key in ("eos", "eot", "eom"):
        tok = md.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(tok, int) and tok not in eog:
            eog.append(tok)
    template = md.get("tokenizer.chat_template")
    return ModelInfo(
        path=Path(path),
        arch=arch,
        file_size=header.file_size,
        weights_bytes=header.tensor_bytes,
        n_tensors=len(header.tensors),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=count("attention.key_length", head_dim) or head_dim,
        head_dim_v=count("attention.value_length", head_dim) or head_dim,
        n_ff=count("feed_forward_length", 4 * n_embd),
        n_vocab=n_vocab,
        n_ctx_train=count("context_length") or 2048,
        chat_template=template if isinstance(template, str) else None,
        eog_token_ids=tuple(eog),
        name=md.get("general.name") if isinstance(md.get("general.name"), str) else None,
        metadata=_short_metadata(md),
        tensor_types=frozenset(ggml_type_name(t.type) for t in header.tensors),  # read_header knows each type
        matrices=tuple((t.name, ggml_type_name(t.type), t.shape[1]) for t in header.tensors if len(t.shape) == 2),
    )


# The start of a GGUF holds its metadata and tensor infos (a few MiB with a 150k-token vocabulary): hashed
# up to this cap, with the last MiB of tensor data, so an identity costs milliseconds, not a read of the file.
_IDENTITY_HEAD_BYTES = 32 << 20
_IDENTITY_TAIL_BYTES = 1 << 20


def model_identity(path: str | Path) -> dict[str, Any]:
    """What says whether a GGUF is still the file something was made for: its size and hashes of its
    header with the tensor infos and of its last MiB. Re-quantizing, re-converting or editing the file
    changes it; copying or touching the file doesn't. Saved KV states and tuned profiles both use it."""
    path = Path(path)
    size = path.stat().st_size
    head = min(read_header(path).data_offset, _IDENTITY_HEAD_BYTES)
    with open(path, "rb") as f:
        head_sha = hashlib.sha256(f.read(head)).hexdigest()[:16]
        f.seek(max(head, size - _IDENTITY_TAIL_BYTES))
        tail_sha = hashlib.sha256(f.read(_IDENTITY_TAIL_BYTES)).hexdigest()[:16]
    return {"size": size, "head_sha256": head_sha, "tail_sha256": tail_sha}

