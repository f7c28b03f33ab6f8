"""SentencePiece test vocabularies and a tiny Llama-2-style checkpoint that uses one.

llama.cpp's ``ggml-vocab-llama-spm.gguf`` (Llama 2's 32000-piece vocabulary, from the
llama-cpp-python sdist) holds the pieces, scores and types of the original
``tokenizer.model``. From them this module rebuilds the files a Hugging Face checkpoint ships:

- ``tokenizer.model``: a SentencePiece ModelProto (BPE, byte fallback, identity normalizer,
  dummy prefix), as Llama 2's;
- ``tokenizer.json``: what transformers' converter makes of it (a BPE with byte fallback,
  merges ordered by the merged piece's score, the legacy ``Prepend("▁")``/``Replace`` normalizer,
  or the ``Metaspace`` pre-tokenizer of newer files);

and writes a tiny ``LlamaForCausalLM`` with random weights beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.samples.checkpoints import DTYPES, RANDOM_NOTE, _qwen2_specs, write_json, write_weights
from edgekit.samples.hf_tokenizer import gguf_metadata

SPACE = "\u2581"
# Bump when these builders' output changes (cached checkpoints carry it in their names).
SPM_BUILD = "1"
# gguf.TokenType / SentencePiece piece types (the same numbers)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 %}{% set content = system_message + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def spm_vocab(name: str = "llama-spm") -> Path:
    """Path of llama.cpp's ``ggml-vocab-<name>.gguf`` (``llama-spm`` or ``phi-3``), with its .inp/.out vectors."""
    from edgekit.samples.assets import llama_cpp_vocab

    return llama_cpp_vocab(name)


def _pieces(vocab_gguf: str | Path) -> tuple[list[str], list[float], list[int], dict[str, Any]]:
    kv = gguf_metadata(vocab_gguf)
    if kv.get("tokenizer.ggml.model") != "llama":
        raise ValueError(f"{Path(vocab_gguf).name} is not a SentencePiece ('llama') vocabulary")
    tokens = list(kv["tokenizer.ggml.tokens"])
    return tokens, [float(s) for s in kv["tokenizer.ggml.scores"]], [int(t) for t in kv["tokenizer.ggml.token_type"]], kv


def spm_model_bytes(vocab_gguf: str | Path, *, add_dummy_prefix: bool = True, model_type: int = 2) -> bytes:
    """A serialized SentencePiece ModelProto with the GGUF's pieces, scores and types (model_type 2 = BPE)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens, scores, types, kv = _pieces(vocab_gguf)
    proto = pb.ModelProto()
    unk_id = int(kv.get("tokenizer.ggml.unknown_token_id", 0))
    for i, (text, score, kind) in enumerate(zip(tokens, scores, types, strict=True)):
        piece = proto.pieces.add()
        # llama.cpp's converter wrote user-defined pieces with spaces where SentencePiece has "▁",
        # and typed Gemma's <unk> as control where SentencePiece has it unknown.
        piece.piece = text.replace(" ", SPACE) if kind == _USER_DEFINED else text
        piece.score, piece.type = score, _UNKNOWN if i == unk_id else kind
    trainer = proto.trainer_spec
    trainer.model_type = model_type
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = any(t == _BYTE for t in types)
    trainer.unk_id = unk_id
    trainer.bos_id = int(kv.get("tokenizer.ggml.bos_token_id", 1))
    trainer.eos_id = int(kv.get("tokenizer.ggml.eos_token_id", 2))
    trainer.pad_id = -1
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = add_dummy_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()


def spm_tokenizer_json(vocab_gguf: str | Path, *, style: str = "legacy") -> dict[str, Any]:
    """tokenizer.json for the GGUF's SentencePiece vocabulary, as transformers converts a tokenizer.model.

    ``style``: ``legacy`` (Llama 2's file: Prepend + Replace normalizer), ``metaspace``
    (a Metaspace pre-tokenizer, prepend_scheme "first") or ``gemma`` (Replace only, no prefix).
    """
    tokens, scores, types, kv = _pieces(vocab_gguf)
    vocab = {t: i for i, t in enumerate(tokens)}
    # Every split of a piece into two pieces is a merge, ranked by the merged piece's score
    # (higher first), ties by the ids of the halves: what transformers' SentencePiece extractor makes.
    merges: list[tuple[float, int, int, str, str]] = []
    for piece, i in vocab.items():
        if types[i] != _NORMAL:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], vocab[left], vocab[right], left, right))
    merges.sort()
    unk = tokens[int(kv.get("tokenizer.ggml.unknown_token_id", 0))]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": k in (_CONTROL, _UNKNOWN)}
             for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k in (_UNKNOWN, _CONTROL, _USER_DEFINED)]
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    normalizer: Any = None
    pre: Any = None
    if style == "legacy":
        normalizer = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]}
    elif style == "gemma":
        normalizer = replace
    elif style == "metaspace":
        pre = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "first", "split": False}
    else:
        raise ValueError(f"style must be legacy, metaspace or gemma, not {style!r}")
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
            *([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if style != "gemma" else [])]},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [[m[3], m[4]] for m in merges]},
    }


def write_spm_tokenizer(out_dir: Path, vocab_gguf: str | Path, *, files: str = "json", style: str = "legacy",
                        chat_template: str | None = LLAMA2_TEMPLATE) -> dict[str, Any]:
    """Write ``tokenizer.json`` (``files="json"``), ``tokenizer.model`` (``"model"``) or both, and the config."""
    tokens, _, types, kv = _pieces(vocab_gguf)

    def text(key: str) -> str | None:
        idx = kv.get(key)
        return tokens[int(idx)] if idx is not None else None

    if files in ("json", "both"):
        write_json(out_dir / "tokenizer.json", spm_tokenizer_json(vocab_gguf, style=style))
    if files in ("model", "both"):
        (out_dir / "tokenizer.model").write_bytes(spm_model_bytes(vocab_gguf, add_dummy_prefix=style != "gemma"))
    config: dict[str, Any] = {
        "add_bos_token": bool(kv.get("tokenizer.ggml.add_bos_token", True)),
        "add_eos_token": bool(kv.get("tokenizer.ggml.add_eos_token", False)),
        "bos_token": text("tokenizer.ggml.bos_token_id"), "eos_token": text("tokenizer.ggml.eos_token_id"),
        "unk_token": text("tokenizer.ggml.unknown_token_id"), "pad_token": text("tokenizer.ggml.padding_token_id"),
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": k != _USER_DEFINED}
                                 for i, (t, k) in enumerate(zip(tokens, types, strict=True))
                                 if k in (_UNKNOWN, _CONTROL, _USER_DEFINED)},
        "clean_up_tokenization_spaces": False, "legacy": style == "legacy", "model_max_length": 4096,
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
    }
    if chat_template:
        config["chat_template"] = chat_template
    write_json(out_dir / "tokenizer_config.json", config)
    return config


def random_llama_spm_checkpoint(out_dir: str | Path, vocab_gguf: str | Path, *, files: str = "json",
                                style: str = "legacy", layers: int = 2, seed: int = 0,
                                chat_template: str | None = LLAMA2_TEMPLATE) -> Path:
    """A tiny Llama-2-style ``LlamaForCausalLM`` (untied, rope 10000) with the GGUF's SentencePiece vocabulary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens, _, _, kv = _pieces(vocab_gguf)
    write_spm_tokenizer(out, vocab_gguf, files=files, style=style, chat_template=chat_template)
    bos, eos = int(kv.get("tokenizer.ggml.bos_token_id", 1)), int(kv.get("tokenizer.ggml.eos_token_id", 2))
    return _tiny_llama(out, len(tokens), bos, eos, layers=layers, seed=seed)


def _tiny_llama(out: Path, vocab_size: int, bos: int, eos: int, *, layers: int, seed: int, hidden: int = 64,
                heads: int = 4, kv_heads: int = 2, intermediate: int = 128, dtype: str = "bf16") -> Path:
    cfg = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
           "bos_token_id": bos, "eos_token_id": eos, "hidden_act": "silu", "hidden_size": hidden,
           "initializer_range": 0.02, "intermediate_size": intermediate, "max_position_embeddings": 4096,
           "mlp_bias": False, "model_type": "llama", "num_attention_heads": heads, "num_hidden_layers": layers,
           "num_key_value_heads": kv_heads, "pretraining_tp": 1, "rms_norm_eps": 1e-5, "rope_scaling": None,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": DTYPES[dtype][1],
           "transformers_version": "4.51.3", "use_cache": True, "vocab_size": vocab_size}
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", {"bos_token_id": bos, "eos_token_id": eos, "transformers_version": "4.51.3"})
    # Llama has Qwen2's tensors without the q/k/v biases.
    specs = [s for s in _qwen2_specs(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                                     intermediate=intermediate, vocab_size=vocab_size, tied=False, seed=seed)
             if not s[0].endswith(".bias")]
    write_weights(out, specs, DTYPES[dtype][0], 1, {"edgekit": RANDOM_NOTE})
    (out / "README.md").write_text(f"# Tiny Llama-2-style checkpoint\n\n{RANDOM_NOTE}.\n", encoding="utf-8")
    return out


def trained_spm_model(model_type: str = "bpe", vocab_size: int = 2000, *, normalizer: str = "identity",
                      byte_fallback: bool = True, user_defined: tuple[str, ...] = ()) -> bytes:
    """A SentencePiece model trained on the license texts that ship with the OS (a vocabulary no table knows).

    Dummy prefix, digits split, ``user_defined`` pieces; ``normalizer`` ``identity`` keeps
    whitespace, ``nmt_nfkc`` (SentencePiece's default) also collapses it. Training is
    deterministic and takes well under a second.
    """
    import io

    import sentencepiece

    licenses = sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file())
    if not licenses:
        raise FileNotFoundError("no license texts in /usr/share/common-licenses to train on")
    lines = [ln for p in licenses for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=byte_fallback, normalization_rule_name=normalizer, remove_extra_whitespaces=normalizer != "identity",
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=list(user_defined), num_threads=1, minloglevel=2)
    return model.getvalue()


def trained_llama_spm_checkpoint(out_dir: str | Path, model_type: str = "bpe", *, layers: int = 1,
                                 normalizer: str = "identity", byte_fallback: bool = True,
                                 user_defined: tuple[str, ...] = ()) -> Path:
    """A tiny ``LlamaForCausalLM`` whose only tokenizer file is a freshly trained ``tokenizer.model``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = trained_spm_model(model_type, normalizer=normalizer, byte_fallback=byte_fallback, user_defined=user_defined)
    (out / "tokenizer.model").write_bytes(data)
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=data)
    write_json(out / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": sp.id_to_piece(sp.bos_id()),
        "eos_token": sp.id_to_piece(sp.eos_id()), "unk_token": sp.id_to_piece(sp.unk_id()),
        "legacy": True, "tokenizer_class": "LlamaTokenizer"})
    return _tiny_llama(out, sp.get_piece_size(), sp.bos_id(), sp.eos_id(), layers=layers, seed=1)


def gemma3_vocab_llama_checkpoint(out_dir: str | Path, *, files: str = "both") -> Path:
    """A tiny ``LlamaForCausalLM`` with Gemma 3's real 262k SentencePiece vocabulary (no dummy prefix).

    The vocabulary comes from the registry's Gemma 3 270M GGUF (:func:`edgekit.samples.assets.gemma3_270m_gguf`);
    its tokenizer files are rebuilt as Gemma's (``Replace(" ", "▁")`` only). The Llama body stands in
    until Gemma 3 itself converts: only the vocabulary is Gemma's.
    """
    from edgekit.samples.assets import gemma3_270m_gguf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_gguf = gemma3_270m_gguf()
    tokens, _, _, kv = _pieces(vocab_gguf)
    write_spm_tokenizer(out, vocab_gguf, files=files, style="gemma", chat_template=None)
    bos, eos = int(kv["tokenizer.ggml.bos_token_id"]), int(kv["tokenizer.ggml.eos_token_id"])
    return _tiny_llama(out, len(tokens), bos, eos, layers=1, seed=2, hidden=32)


def vocab_vectors(vocab_gguf: Path) -> tuple[list[str], list[list[int]]]:
    """llama.cpp's test vectors beside a vocab GGUF: (texts, expected token ids without BOS)."""
    inp = vocab_gguf.with_name(vocab_gguf.name + ".inp").read_text(encoding="utf-8")
    out = vocab_gguf.with_name(vocab_gguf.name + ".out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")[:-1]
    expected = [[int(x) for x in line.split()] for line in out.split("\n")[:len(texts)]]
    return texts, expected


def cached_llama_spm_checkpoint(vocab: str = "llama-spm", *, files: str = "json", style: str = "legacy",
                                chat_template: bool = True) -> Path:
    """A tiny random Llama-2-style checkpoint with a real SentencePiece vocabulary, built once per machine."""
    from edgekit.samples.checkpoints import cached_checkpoint

    name = f"tiny-llama-{vocab}-{files}-{style}" + ("" if chat_template else "-notemplate") + f"-s{SPM_BUILD}"
    template = LLAMA2_TEMPLATE if chat_template else None
    return cached_checkpoint(name, lambda d: random_llama_spm_checkpoint(
        d, spm_vocab(vocab), files=files, style=style, chat_template=template))
