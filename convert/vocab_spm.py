"""SentencePiece vocabularies (Llama 2, TinyLlama, Mistral v0.1, Phi-3, Gemma) to llama.cpp's ``llama`` tokenizer.

Two sources describe such a vocabulary:

- ``tokenizer.json`` whose model is BPE with ``byte_fallback``, with either the legacy
  normalizer (``Prepend("▁")`` + ``Replace(" ", "▁")``, or only the ``Replace`` for Gemma)
  or a ``Metaspace`` pre-tokenizer. HF gives no scores; llama.cpp's SentencePiece tokenizer
  merges the adjacent pair whose concatenation scores highest, HF the pair whose merge
  ranks first, so each token scores minus the rank of the first merge that makes it.
- ``tokenizer.model`` (the SentencePiece protobuf), read with the ``sentencepiece`` package:
  pieces, scores and piece types are what llama.cpp stores, and its types use the same
  numbers as GGUF's token types.

llama.cpp has one SentencePiece tokenizer and no hash table to trust here. Whether it
reproduces a vocabulary is proven at conversion time instead (:mod:`edgekit.convert.vocab_check`):
a vocabulary converts only if llama.cpp tokenizes the probe texts exactly as the HF tokenizer
(or SentencePiece) does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from edgekit.errors import UnsupportedModel

SPACE = "\u2581"  # "▁", SentencePiece's visible space


def is_spm_json(tokenizer: dict) -> bool:
    """Whether a tokenizer.json describes a SentencePiece-style BPE (byte fallback, ▁ for spaces)."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        return False
    kinds = {p.get("type") for p in _pre_steps(tokenizer)}
    if "ByteLevel" in kinds:
        return False
    return bool(model.get("byte_fallback")) or "Metaspace" in kinds or _replaces_space(tokenizer.get("normalizer"))


def _pre_steps(tokenizer: dict) -> list[dict]:
    pre = tokenizer.get("pre_tokenizer")
    return (pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]) if pre else []


def _normalizers(norm: dict | None) -> list[dict]:
    if norm is None:
        return []
    if norm.get("type") == "Sequence":
        return [n for sub in norm.get("normalizers", []) for n in _normalizers(sub)]
    return [norm]


def _replaces_space(norm: dict | None) -> bool:
    return any(n.get("type") == "Replace" and (n.get("pattern") or {}).get("String") == " " and n.get("content") == SPACE
               for n in _normalizers(norm))


def _splits_spaces(step: dict) -> bool:
    return step.get("type") == "Split" and (step.get("pattern") or {}).get("String") == " "


def _metaspace(tokenizer: dict) -> dict | None:
    steps = _pre_steps(tokenizer)
    # transformers 5.x writes Gemma's files with Split(" ") after the normalizer turned every space into
    # "▁": it splits nothing.
    if _replaces_space(tokenizer.get("normalizer")):
        steps = [p for p in steps if not _splits_spaces(p)]
    found = [p for p in steps if p.get("type") == "Metaspace"]
    if len(found) != len(steps):
        kinds = ", ".join(str(p.get("type")) for p in steps)
        raise UnsupportedModel(f"tokenizer.json pre-tokenizer {kinds} is not supported with a SentencePiece BPE",
                               "edgekit converts the Metaspace pre-tokenizer, or none with a Replace normalizer.")
    return found[0] if found else None


def add_space_prefix_of(tokenizer: dict) -> bool:
    """Whether the tokenizer puts "▁" before the text (llama.cpp's ``add_space_prefix``), refusing other normalizers."""
    prefix = False
    for norm in _normalizers(tokenizer.get("normalizer")):
        kind = norm.get("type")
        if kind == "Prepend" and norm.get("prepend") == SPACE:
            prefix = True
        elif kind == "Replace" and (norm.get("pattern") or {}).get("String") == " " and norm.get("content") == SPACE:
            pass
        else:
            raise UnsupportedModel(f"tokenizer.json normalizer {kind!r} is not supported with a SentencePiece BPE",
                                   "edgekit converts Prepend('▁') and Replace(' ', '▁').")
    meta = _metaspace(tokenizer)
    if meta is not None:
        if meta.get("replacement", SPACE) != SPACE:
            raise UnsupportedModel(f"tokenizer.json Metaspace replacement {meta.get('replacement')!r} is not supported")
        scheme = meta.get("prepend_scheme")
        if scheme is None:  # tokenizers < 0.15 wrote a boolean
            scheme = "always" if meta.get("add_prefix_space", True) else "never"
        if scheme not in ("always", "first", "never"):
            raise UnsupportedModel(f"tokenizer.json Metaspace prepend_scheme {scheme!r} is not supported")
        prefix = prefix or scheme != "never"
    return prefix


def scores_from_merges(tokens: dict[str, int], merges: list[Any]) -> dict[int, float]:
    """Each token made by a merge scores minus that merge's rank (the first one, when several make it)."""
    scores: dict[int, float] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token_id = tokens.get(left + right)
        if token_id is not None and token_id not in scores:
            scores[token_id] = -float(rank)
    return scores


BYTE_PIECES = frozenset(f"<0x{b:02X}>" for b in range(256))  # SentencePiece's byte pieces, <0x00> ... <0xFF>


def added_token_text(token: dict) -> str:
    """The text llama.cpp matches for a tokenizer.json added token.

    A non-special token with ``normalized`` set is matched by HF after the normalizer turned
    spaces into "▁"; llama.cpp matches raw text, so its "▁" become spaces.
    """
    content = str(token["content"])
    return content.replace(SPACE, " ") if token.get("normalized") and not token.get("special") else content


def json_pieces(tokenizer: dict) -> tuple[dict[int, str], dict[int, float], dict[int, int]]:
    """(id -> text, id -> score, id -> GGUF token type) of a SentencePiece-style tokenizer.json's model vocabulary."""
    model = tokenizer["model"]
    vocab = {str(t): int(i) for t, i in model.get("vocab", {}).items()}
    scores = scores_from_merges(vocab, model.get("merges", []))
    unk = model.get("unk_token")
    by_id: dict[int, str] = {}
    types: dict[int, int] = {}
    for text, i in vocab.items():
        by_id[i] = text
        if text == unk:
            types[i] = gguf.TokenType.UNKNOWN
        elif text in BYTE_PIECES:
            types[i] = gguf.TokenType.BYTE
        else:
            types[i] = gguf.TokenType.NORMAL
    return by_id, scores, types


def read_model_proto(path: Path) -> Any:
    """The ModelProto of a ``tokenizer.model``, or one clear error if it isn't a SentencePiece model."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError, or any failure of its parser on arbitrary bytes
        raise UnsupportedModel(f"{path.name} is not a SentencePiece model ({type(exc).__name__})",
                               "Copy tokenizer.model again from the base model.") from exc
    if not proto.pieces:
        raise UnsupportedModel(f"{path.name} is not a SentencePiece model (it holds no pieces)",
                               "Copy tokenizer.model again from the base model.")
    return proto


# sentencepiece's TrainerSpec.ModelType: UNIGRAM=1, BPE=2, WORD=3, CHAR=4.
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def proto_pieces(proto: Any) -> tuple[dict[int, str], dict[int, float], dict[int, int]]:
    """(id -> piece, id -> score, id -> GGUF token type) of a SentencePiece model.

    SentencePiece's piece types (NORMAL=1, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE=6)
    are numbered as GGUF's token types.
    """
    kind = MODEL_TYPES.get(proto.trainer_spec.model_type, str(proto.trainer_spec.model_type))
    if kind not in ("bpe", "unigram"):
        raise UnsupportedModel(f"tokenizer.model is a SentencePiece {kind} model",
                               "edgekit converts SentencePiece BPE and unigram models.")
    norm = proto.normalizer_spec
    if kind == "bpe" and (norm.precompiled_charsmap or norm.remove_extra_whitespaces):
        # llama.cpp's SentencePiece BPE ("llama") tokenizer applies no normalizer; its unigram one ("t5") does.
        what = f"with {norm.name!r}" if norm.precompiled_charsmap else "by removing extra whitespace"
        raise UnsupportedModel(f"tokenizer.model is a SentencePiece BPE that normalizes text {what}, which "
                               "llama.cpp's SentencePiece BPE tokenizer doesn't do",
                               "edgekit converts SentencePiece BPE models with the identity normalizer.")
    # SentencePiece matches user-defined pieces in the escaped text ("▁" for a space), llama.cpp in
    # the raw text: Gemma's whitespace pieces ("▁▁▁") become spaces, as llama.cpp's converter writes them.
    by_id = {i: p.piece.replace(SPACE, " ") if p.type == gguf.TokenType.USER_DEFINED else p.piece
             for i, p in enumerate(proto.pieces)}
    scores = {i: float(p.score) for i, p in enumerate(proto.pieces)}
    types = {i: int(p.type) for i, p in enumerate(proto.pieces)}
    return by_id, scores, types


def check_byte_pieces(tokens: list[str]) -> None:
    """Refuse a SentencePiece BPE vocabulary without all 256 byte pieces (``<0x00>``...``<0xFF>``).

    llama.cpp's SentencePiece tokenizer spells a character outside the vocabulary as its bytes, and
    aborts the whole process when a byte's piece is missing.
    """
    missing = sorted(BYTE_PIECES.difference(tokens))
    if missing:
        raise UnsupportedModel(f"the SentencePiece vocabulary lacks {len(missing)} of the 256 byte pieces, first "
                               f"{missing[0]}; llama.cpp needs them all to spell characters outside the vocabulary",
                               "edgekit converts SentencePiece BPE vocabularies with byte fallback.")
