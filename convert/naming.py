"""Model metadata (name, basename, size label, license, source) and default file names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import gguf

from edgekit import __version__

if TYPE_CHECKING:
    from edgekit.convert.vocab import Vocab

CONVERTER = f"edgekit {__version__}"


def model_metadata(checkpoint: Path, n_params: int, repo_id: str | None, url: str | None) -> gguf.Metadata:
    """Gather authorship metadata with gguf-py's heuristics (model card, config, repo name)."""
    meta = gguf.Metadata.load(model_path=checkpoint, total_params=n_params)
    model_id = repo_id or checkpoint.name
    _full, org, basename, finetune, version, size = gguf.Metadata.get_model_id_components(model_id, n_params)
    if repo_id or not meta.basename:
        meta.name = meta.name if meta.name and not repo_id else (model_id.split("/")[-1])
        meta.basename = basename or meta.basename
        meta.finetune = finetune if finetune is not None else meta.finetune
        meta.version = version if version is not None else meta.version
        meta.organization = meta.organization or org
    if not meta.name:
        meta.name = checkpoint.name
    meta.size_label = meta.size_label or size or gguf.size_label(n_params, 0, 0, 0)
    if url:
        meta.repo_url = meta.repo_url or url
        meta.source_url = url
    return meta


# llama.cpp (src/llama-vocab.cpp, the vocabulary's load, in the version llama-cpp-python 0.3.36 vendors) sets
# token attributes by the model's name: when the lowercased general.name contains "phi-3" or "phi3", every
# control, user-defined and unknown token is marked rstrip (the whitespace after it is dropped when special
# tokens are parsed), except "<unk>", "<s>" and "<|endoftext|>". (It marks "</s>" too, which matters only when
# "</s>" is one of those special tokens: only they are matched in text.) That is what real Phi-3 tokenizers say;
# a tokenizer whose flags differ (Phi-4-mini's strip nothing) would be tokenized differently. A GGUF has no
# per-token flag for it, so the name is the only switch.
PHI3_NAME = re.compile(r"(phi)-?(3)", re.IGNORECASE)  # what llama.cpp looks for
PHI3_SPACED = re.compile(r"(phi)[ _](3)", re.IGNORECASE)  # gguf-py's names: "Phi-3-mini" becomes "Phi 3 Mini"
PHI3_NOT_STRIPPED = ("<unk>", "<s>", "<|endoftext|>")


def llama_cpp_rstrip(vocab: Vocab) -> frozenset[int]:
    """The tokens llama.cpp marks rstrip in a model whose name says Phi-3."""
    kinds = (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED, gguf.TokenType.UNKNOWN)
    return frozenset(i for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.types, strict=True))
                     if kind in kinds and text not in PHI3_NOT_STRIPPED)


def llama_cpp_name(name: str, vocab: Vocab) -> str:
    """``name`` as general.name, changed only where llama.cpp would read it as the wrong tokenizer.

    A tokenizer that strips nothing, in a model named like ``Phi3 Mini`` (edgekit names a GGUF after its
    directory or repo), gets ``Phi 3`` instead, so llama.cpp strips nothing either. A tokenizer whose rstrip
    flags are exactly llama.cpp's Phi-3 rule (real Phi-3's) gets ``Phi-3`` in its name if it lacks it (gguf-py
    turns a ``Phi-3-mini`` directory into ``Phi 3 Mini``). Any other mix of flags no name reproduces: the
    vocabulary check (:mod:`edgekit.convert.vocab_check`) refuses it.
    """
    rule = llama_cpp_rstrip(vocab)
    if vocab.rstrip == rule:
        if not rule or PHI3_NAME.search(name):
            return name
        return PHI3_SPACED.sub(r"\1-\2", name, count=1) if PHI3_SPACED.search(name) else f"{name} Phi-3"
    if not vocab.rstrip:
        return PHI3_NAME.sub(r"\1 \2", name)
    return name


def default_filename(meta: gguf.Metadata, type_name: str) -> str:
    """``<basename>-<size>-<TYPE>.gguf``, e.g. ``qwen2.5-0.5B-Q4_K_M.gguf``."""
    base = (meta.basename or meta.name or "model").strip().replace(" ", "-").replace("/", "-")
    size = (meta.size_label or "").strip()
    parts = [base] + ([size] if size and size.lower() not in base.lower() else []) + [type_name.upper()]
    return "-".join(parts) + ".gguf"
