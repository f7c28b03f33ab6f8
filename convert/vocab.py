"""tokenizer.json (byte-level BPE) or a SentencePiece vocabulary to the GGUF vocabulary.

llama.cpp does not run the HF pre-tokenizer itself; it picks one of its built-in
pre-tokenizers by the name in ``tokenizer.ggml.pre``. llama.cpp's own converter
chooses that name by hashing how a test string tokenizes, so any edited or
retrained vocabulary is refused. edgekit instead reads the pre-tokenizer's
*definition* (its split regexes) from tokenizer.json and maps it through
:data:`PRE_TOKENIZERS`, so a new vocabulary with a known pre-tokenizer converts.
The tests prove llama.cpp then tokenizes exactly as the HF tokenizer does.

SentencePiece vocabularies (``tokenizer.model``, or a tokenizer.json BPE with byte fallback
and ``▁`` for spaces) become llama.cpp's ``llama`` tokenizer: see :mod:`edgekit.convert.vocab_spm`.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from edgekit.convert import vocab_spm
from edgekit.errors import MissingFiles, UnsupportedModel

_QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# GPT-2's split, which ByteLevel(use_regex=True) applies; Digits(individual_digits=True)
# splits like the regex \p{N}. Both are normalised to their regex, so either spelling matches.
BYTE_LEVEL_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
DIGITS_EACH = r"\p{N}"

# The sequence of splits a tokenizer.json pre-tokenizer performs -> llama.cpp's name for it.
PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    (_QWEN2,): "qwen2",  # Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen
    (_LLAMA3,): "llama-bpe",  # Llama 3.x
    (_QWEN35,): "qwen35",  # Qwen3.5
    (DIGITS_EACH, BYTE_LEVEL_REGEX): "smollm",  # SmolLM, SmolLM2, StarCoder-style
    (BYTE_LEVEL_REGEX,): "gpt-2",  # GPT-2 style
}

# Other tokenizer.ggml.pre names llama.cpp splits exactly like one in PRE_TOKENIZERS.
SAME_SPLITS = {"gpt2": "gpt-2", "starcoder": "smollm"}


def pre_tokenizer_splits(pre: str) -> tuple[str, ...]:
    """The split regexes of llama.cpp's pre-tokenizer ``pre`` (the inverse of :data:`PRE_TOKENIZERS`).

    Raises KeyError for a name edgekit has no definition of.
    """
    name = SAME_SPLITS.get(pre, pre)
    for steps, known in PRE_TOKENIZERS.items():
        if known == name:
            return steps
    raise KeyError(pre)


# Texts llama.cpp and chat templates use to end a turn.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass
class Vocab:
    """Everything the GGUF needs to reproduce the HF tokenizer."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    # tokenizer.ggml.model: "gpt2" (byte-level BPE), "llama" (SentencePiece BPE) or "t5" (SentencePiece unigram)
    model: str = "gpt2"
    scores: list[float] | None = None  # SentencePiece only
    add_space_prefix: bool = False  # SentencePiece only: "▁" before the text (Llama 2 yes, Gemma no)
    # SentencePiece unigram ("t5") only: its normalizer, which llama.cpp applies as SentencePiece does.
    remove_extra_whitespaces: bool = False
    charsmap: bytes = b""
    # The file llama.cpp's tokenization is checked against at conversion time (convert/vocab_check.py).
    reference: Path | None = None
    # Added tokens the HF tokenizer marks rstrip (it drops the whitespace after them); see naming.llama_cpp_name.
    rstrip: frozenset[int] = frozenset()


def _pre_steps(pre: dict | None) -> tuple[str, ...]:
    """Flatten a tokenizer.json ``pre_tokenizer`` into the splits it performs."""
    if pre is None:
        raise UnsupportedModel("tokenizer.json has no pre_tokenizer, so it is not a byte-level BPE tokenizer")
    kind = pre.get("type")
    if kind == "Sequence":
        steps: list[str] = []
        for sub in pre.get("pretokenizers", []):
            steps.extend(_pre_steps(sub))
        return tuple(steps)
    if kind == "Split":
        pattern = pre.get("pattern", {})
        if "Regex" not in pattern or pre.get("invert") or pre.get("behavior") != "Isolated":
            raise UnsupportedModel(f"tokenizer.json pre-tokenizer Split {json.dumps(pre)[:120]} is not supported")
        return (pattern["Regex"],)
    if kind == "Digits":
        if not pre.get("individual_digits"):
            raise UnsupportedModel("tokenizer.json pre-tokenizer Digits(individual_digits=false) is not supported")
        return (DIGITS_EACH,)
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            raise UnsupportedModel("tokenizer.json ByteLevel(add_prefix_space=true) is not supported")
        return (BYTE_LEVEL_REGEX,) if pre.get("use_regex", True) else ()
    raise UnsupportedModel(f"tokenizer.json pre-tokenizer type {kind!r} is not supported")


def detect_pre(tokenizer: dict) -> str:
    """Return llama.cpp's pre-tokenizer name for a tokenizer.json, or refuse clearly."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedModel(f"tokenizer model {model.get('type')!r} is not supported", "edgekit converts byte-level BPE tokenizers.")
    normalizer = tokenizer.get("normalizer")
    if normalizer is not None and normalizer.get("type") not in ("NFC",):
        raise UnsupportedModel(f"tokenizer.json normalizer {normalizer.get('type')!r} is not supported")
    steps = _pre_steps(tokenizer.get("pre_tokenizer"))
    name = PRE_TOKENIZERS.get(steps)
    if name is None:
        shown = " then ".join(s[:60] for s in steps)
        raise UnsupportedModel(
            f"the tokenizer's pre-tokenizer ({shown}) has no llama.cpp equivalent",
            f"Supported pre-tokenizers: {', '.join(sorted(set(PRE_TOKENIZERS.values())))}.",
        )
    return name


def _looks_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<pad>", "<mask>", "<s>", "</s>", "<unk>")


def _token_text(value: object) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_json_object(path: Path) -> dict:
    """A checkpoint's JSON file (config, tokenizer, shard index), which must hold an object."""
    try:
        # bytes decoded at once: read_text's incremental decoder and newline translation take twice as long on a
        # 33 MB tokenizer.json (newlines only ever stand between JSON tokens, so the parse is the same)
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
        raise UnsupportedModel(f"{path.name} can't be read as JSON ({exc})", "Download it again.") from exc
    if not isinstance(value, dict):
        raise UnsupportedModel(f"{path.name} holds a {type(value).__name__}, not a JSON object", "Download it again.")
    return value


def chat_template_of(directory: Path, tokenizer_config: dict) -> str | None:
    """The chat template from tokenizer_config.json, else chat_template.jinja."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if not template and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    return template or None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: parsing a large tokenizer.json allocates over a million lists and
    dicts (Gemma 3's 513k merges), which set off collections, the older generations' walking all the objects
    parsed so far: that more than doubled the parse (0.25 s -> 0.4-0.7 s for Gemma 3's). Nothing here makes
    reference cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_vocab(directory: Path, n_vocab: int, config: dict) -> Vocab:
    """Read tokenizer.json (+ tokenizer_config.json, chat_template.jinja) from a checkpoint dir."""
    try:
        with _gc_paused():
            return _load_vocab(directory, n_vocab, config)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        # The files are untrusted JSON: any value may have any type.
        raise UnsupportedModel(f"tokenizer.json or tokenizer_config.json is malformed ({type(exc).__name__}: {exc})",
                               "Copy them again from the base model.") from exc


@dataclass
class _Source:
    """What a checkpoint's tokenizer file says, before padding, special tokens and the config."""

    kind: str  # tokenizer.ggml.model
    pre: str
    by_id: dict[int, str]
    added: list[dict]  # HF added tokens: {"id", "content", "special", "normalized", ...}
    adds_bos: bool  # the default when tokenizer_config.json doesn't say
    merges: list[str] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)
    base_types: dict[int, int] = field(default_factory=dict)
    add_space_prefix: bool = False
    remove_spaces: bool = False
    charsmap: bytes = b""
    reference: Path | None = None


def _read_source(directory: Path, tok_config: dict) -> _Source:
    """tokenizer.json (byte-level BPE or SentencePiece-style), else tokenizer.model."""
    tok_path, spm_path = directory / "tokenizer.json", directory / "tokenizer.model"
    if tok_path.is_file():
        tokenizer = read_json_object(tok_path)
        added = list(tokenizer.get("added_tokens", []))
        adds_bos = _post_processor_adds_bos(tokenizer)
        if vocab_spm.is_spm_json(tokenizer):
            by_id, scores, types = vocab_spm.json_pieces(tokenizer)
            return _Source("llama", "default", by_id, added, adds_bos, scores=scores, base_types=types,
                           add_space_prefix=vocab_spm.add_space_prefix_of(tokenizer), reference=tok_path)
        pre = detect_pre(tokenizer)
        by_id = {int(i): t for t, i in tokenizer["model"].get("vocab", {}).items()}
        merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"].get("merges", [])]
        return _Source("gpt2", pre, by_id, added, adds_bos, merges=merges, reference=tok_path)
    if spm_path.is_file():
        proto = vocab_spm.read_model_proto(spm_path)
        by_id, scores, types = vocab_spm.proto_pieces(proto)
        # A tokenizer.model comes with its added tokens in tokenizer_config.json.
        decoder = tok_config.get("added_tokens_decoder") or {}
        added = [{"id": int(i), **t} for i, t in decoder.items() if isinstance(t, dict) and "content" in t]
        norm = proto.normalizer_spec
        unigram = vocab_spm.MODEL_TYPES.get(proto.trainer_spec.model_type) == "unigram"
        return _Source("t5" if unigram else "llama", "default", by_id, added, True,  # LlamaTokenizer adds BOS
                       scores=scores, base_types=types, add_space_prefix=bool(norm.add_dummy_prefix),
                       remove_spaces=unigram and bool(norm.remove_extra_whitespaces),
                       charsmap=bytes(norm.precompiled_charsmap) if unigram else b"", reference=spm_path)
    present = [p for p in ("vocab.json", "merges.txt") if (directory / p).is_file()]
    extra = f" (found only {', '.join(present)})" if present else ""
    raise MissingFiles(
        f"{directory} has no tokenizer.json or tokenizer.model{extra}",
        "Copy tokenizer.json (or tokenizer.model) and tokenizer_config.json from the base model into the checkpoint directory.",
    )


def _load_vocab(directory: Path, n_vocab: int, config: dict) -> Vocab:
    directory = Path(directory)
    tok_config = read_json_object(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}
    src = _read_source(directory, tok_config)
    kind, by_id, added, base_types = src.kind, src.by_id, src.added, src.base_types

    special: set[int] = set()
    for token in added:
        if int(token["id"]) in by_id and base_types.get(int(token["id"])) in (gguf.TokenType.UNKNOWN, gguf.TokenType.BYTE):
            continue  # SentencePiece's own <unk> and byte pieces keep their types
        by_id[int(token["id"])] = vocab_spm.added_token_text(token) if kind != "gpt2" else token["content"]
        # A byte-level BPE's files sometimes forget the flag; SentencePiece vocabularies have "<s>" as
        # an HTML tag (Gemma), so there only the flag counts.
        if token.get("special") or (kind == "gpt2" and _looks_special(token["content"])):
            special.add(int(token["id"]))
    added_ids = {int(a["id"]) for a in added} - {i for i, t in base_types.items()
                                                  if t in (gguf.TokenType.UNKNOWN, gguf.TokenType.BYTE)}
    if by_id and max(by_id) >= max(n_vocab, len(by_id)):
        # Padding up to an id beyond both the embedding and the tokens present would be unbounded work.
        raise UnsupportedModel(f"the tokenizer has token id {max(by_id)} but only {len(by_id)} tokens "
                               f"and an embedding of {n_vocab} rows", "Copy it again from the base model.")
    if by_id and max(by_id) >= n_vocab:
        n_vocab = max(by_id) + 1

    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in special:
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL)
        elif i in added_ids:
            tokens.append(text)
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(base_types.get(i, gguf.TokenType.NORMAL))

    if kind == "llama":
        vocab_spm.check_byte_pieces(tokens)
    ids = {t: i for i, t in enumerate(tokens)}

    def lookup(key: str, config_key: str) -> int | None:
        text = _token_text(tok_config.get(key))
        if text is not None and text in ids:
            return ids[text]
        value = config.get(config_key)
        if isinstance(value, list):
            value = value[0] if value else None
        return int(value) if isinstance(value, int) and 0 <= value < n_vocab else None

    special_ids = {
        "bos": lookup("bos_token", "bos_token_id"),
        "eos": lookup("eos_token", "eos_token_id"),
        "pad": lookup("pad_token", "pad_token_id"),
        "unk": lookup("unk_token", "unk_token_id"),
    }
    # The end-of-turn token a chat template closes each message with: marking it
    # keeps a chat fine-tune from generating past the end of its answer.
    for text in END_OF_TURN[:-1]:
        if text in ids and ids[text] != special_ids["eos"]:
            special_ids["eot"] = ids[text]
            break
    return Vocab(
        tokens=tokens,
        types=[int(t) for t in types],
        merges=src.merges,
        pre=src.pre,
        special_ids={k: v for k, v in special_ids.items() if v is not None},
        add_bos=bool(tok_config.get("add_bos_token", src.adds_bos)),
        add_eos=bool(tok_config.get("add_eos_token", False)),
        chat_template=chat_template_of(directory, tok_config),
        model=kind,
        scores=[src.scores.get(i, 0.0) for i in range(n_vocab)] if kind != "gpt2" else None,
        add_space_prefix=src.add_space_prefix,
        reference=src.reference,
        rstrip=frozenset(int(a["id"]) for a in added if a.get("rstrip") is True),
        remove_extra_whitespaces=src.remove_spaces,
        charsmap=src.charsmap,
    )


def _post_processor_adds_bos(tokenizer: dict) -> bool:
    """True when tokenizer.json's TemplateProcessing puts a special token first (Llama 3 style)."""
    post = tokenizer.get("post_processor") or {}
    processors = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for proc in processors:
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            return bool(single) and "SpecialToken" in single[0]
    return False


def write_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    """Add the vocabulary keys to a GGUF writer."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.model in ("llama", "t5"):
        writer.add_token_scores(vocab.scores or [0.0] * len(vocab.tokens))
        writer.add_add_space_prefix(vocab.add_space_prefix)
        if vocab.model == "t5":  # llama.cpp's unigram tokenizer normalizes as SentencePiece does
            writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
            if vocab.charsmap:
                writer.add_precompiled_charsmap(vocab.charsmap)
    else:
        writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "pad": writer.add_pad_token_id,
              "unk": writer.add_unk_token_id, "eot": writer.add_eot_token_id}
    for key, token_id in vocab.special_ids.items():
        adders[key](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
