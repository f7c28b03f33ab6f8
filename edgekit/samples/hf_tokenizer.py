"""Rebuild Hugging Face tokenizer files from a GGUF vocabulary.

The test checkpoints need a real tokenizer (the converter reads
``tokenizer.json``), but the only real vocabularies we can fetch offline live
inside GGUF files. This module inverts what llama.cpp's converter does for
byte-level BPE vocabularies: tokens and merges go back into a BPE model, control
and user-defined tokens become ``added_tokens``, and the pre-tokenizer regex is
the one Hugging Face's own ``tokenizer.json`` uses for that ``tokenizer.ggml.pre``
(taken from the converter's table, :data:`edgekit.convert.vocab.PRE_TOKENIZERS`).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

# gguf token types (gguf.TokenType); kept literal so importing this module stays light.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

_PAD_TOKEN = re.compile(r"\[PAD\d+\]")
_BYTE_LEVEL = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}


@lru_cache(maxsize=4)
def _read_kv(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    """All key/value metadata of a GGUF file.

    gguf-py's reader takes several seconds on a 150k-token vocabulary, so the
    result is kept in memory and as JSON in the asset cache, keyed by the file's
    size and mtime.
    """
    from edgekit.samples.assets import CACHE

    cached = CACHE / "gguf-kv" / f"{Path(path).stem}-{size}-{mtime_ns}.json"
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    from gguf import GGUFReader

    reader = GGUFReader(path)
    kv = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    from edgekit.atomic import atomic_output
    from edgekit.errors import DiskFull

    try:
        with atomic_output(cached) as tmp:
            tmp.write_text(json.dumps(kv, ensure_ascii=False), encoding="utf-8")
    except (OSError, DiskFull):
        pass  # a read-only or full cache only costs speed
    return kv


def gguf_metadata(gguf_path: str | Path) -> dict[str, Any]:
    """Return a GGUF file's metadata as ``{key: value}`` (a fresh dict; the parse is cached)."""
    path = Path(gguf_path).resolve()
    st = path.stat()
    return dict(_read_kv(str(path), st.st_size, st.st_mtime_ns))


def _pre_tokenizer(pre: str) -> dict[str, Any]:
    from edgekit.convert.vocab import pre_tokenizer_splits  # the converter's table: one copy of the regexes

    try:
        regexes = pre_tokenizer_splits(pre)
    except KeyError:
        raise ValueError(f"no Hugging Face pre-tokenizer known for tokenizer.ggml.pre={pre!r}") from None
    splits = [
        {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False} for rx in regexes
    ]
    return {"type": "Sequence", "pretokenizers": [*splits, {"type": "ByteLevel", **_BYTE_LEVEL}]}


def tokenizer_files_from_gguf(
    gguf_path: str | Path, *, model_max_length: int | None = None, keep_padding: bool = False
) -> dict[str, dict[str, Any]]:
    """Return ``{"tokenizer.json": ..., "tokenizer_config.json": ..., "special_tokens_map.json": ...}``.

    Each value is the JSON object to write. Only byte-level BPE vocabularies
    (``tokenizer.ggml.model == "gpt2"``) are supported. Tokens named ``[PAD<n>]``
    that llama.cpp's converter invents to pad the vocabulary up to the
    embedding size are left out, as in the real Hugging Face files, unless
    ``keep_padding`` is set.
    """
    kv = gguf_metadata(gguf_path)
    model = kv.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"{Path(gguf_path).name}: tokenizer model {model!r} is not byte-level BPE ('gpt2')")
    tokens: list[str] = list(kv.get("tokenizer.ggml.tokens"))
    types: list[int] = [int(t) for t in kv.get("tokenizer.ggml.token_type", [_NORMAL] * len(tokens))]
    merges: list[str] = list(kv.get("tokenizer.ggml.merges", []))
    pre = kv.get("tokenizer.ggml.pre", "gpt2")

    vocab: dict[str, int] = {}
    added: list[dict[str, Any]] = []
    # Real files differ in where specials live: Qwen2 appends them after the BPE
    # vocab (added_tokens only), SmolLM2 has them at ids 0..16 inside it. Follow
    # that: an added token is also in the model vocab if a normal token comes after it.
    last_normal = max((i for i, t in enumerate(types) if t not in (_CONTROL, _USER_DEFINED)), default=-1)
    for i, (tok, typ) in enumerate(zip(tokens, types, strict=True)):
        if typ in (_CONTROL, _USER_DEFINED):
            if typ == _USER_DEFINED and _PAD_TOKEN.fullmatch(tok) and not keep_padding:
                continue
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": typ == _CONTROL})
            if i > last_normal:
                continue
        vocab[tok] = i

    tokenizer_json: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(pre),
        "post_processor": {"type": "ByteLevel", **_BYTE_LEVEL},
        "decoder": {"type": "ByteLevel", **_BYTE_LEVEL},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            # Llama 3's own tokenizer.json says true (a word that is one token is never split), and llama.cpp
            # ignores merges for its pre-tokenizer whatever the file says; the others say false.
            "ignore_merges": pre in ("llama-bpe", "llama3", "llama-v3"),
            "vocab": vocab,
            "merges": merges,
        },
    }

    def token_text(key: str) -> str | None:
        idx = kv.get(key)
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    arch = kv.get("general.architecture", "")
    if model_max_length is None:
        model_max_length = int(kv.get(f"{arch}.context_length", 32768))
    specials = {
        "bos_token": token_text("tokenizer.ggml.bos_token_id"),
        "eos_token": token_text("tokenizer.ggml.eos_token_id"),
        "pad_token": token_text("tokenizer.ggml.padding_token_id"),
        "unk_token": token_text("tokenizer.ggml.unknown_token_id"),
    }
    control = [a["content"] for a in added if a["special"]]
    config: dict[str, Any] = {
        "add_bos_token": bool(kv.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(kv.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added
        },
        "additional_special_tokens": [t for t in control if t not in specials.values()],
        **specials,
        "chat_template": kv.get("tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if config["chat_template"] is None:
        del config["chat_template"]
    special_map: dict[str, Any] = {k: v for k, v in specials.items() if v is not None}
    special_map["additional_special_tokens"] = config["additional_special_tokens"]
    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": config, "special_tokens_map.json": special_map}
