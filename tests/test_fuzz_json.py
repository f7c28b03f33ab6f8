"""Fuzz the config.json and tokenizer.json readers (edgekit.convert.open_checkpoint).

A tiny checkpoint (2 layers, hidden 8, vocabulary 264, a small byte-level BPE
tokenizer) is opened with its JSON files edited: any key set to any JSON value
(wrong types, huge and negative numbers, nesting thousands deep), keys deleted,
the whole file replaced, or its text mutated. Opening must succeed or raise an
EdgekitError, in bounded time and memory; and a config that opens must agree
with the weights (the check that refuses a config claiming 100000 layers).

A longer run (examples per test; the default is a few hundred):
    EDGEKIT_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_*.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzzing import DEEP, dump_json, fuzz_settings, json_values, mutations, only_edgekit_errors
from hypothesis import example, given
from hypothesis import strategies as st

from edgekit.convert import open_checkpoint
from edgekit.convert.safetensors import write_safetensors
from edgekit.convert.vocab import PRE_TOKENIZERS
from edgekit.samples.checkpoints import qwen2_config

LAYERS, HIDDEN, HEADS, KV_HEADS, FF, VOCAB = 2, 8, 2, 1, 16, 264
QWEN2_REGEX = next(steps[0] for steps, name in PRE_TOKENIZERS.items() if name == "qwen2")

CONFIG = qwen2_config(layers=LAYERS, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, intermediate=FF, vocab_size=VOCAB,
                      dtype="f32", tied=True, config_style="4.x", max_position_embeddings=256, rope_theta=1e6,
                      yarn=2.0, bos_id=260, eos_id=260)
TOKENIZER = {
    "version": "1.0",
    "added_tokens": [{"id": 260 + i, "content": text, "special": True, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False} for i, text in enumerate(["<|endoftext|>", "<|im_start|>",
                                                                                       "<|im_end|>"])],
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False, "byte_fallback": False,
              "vocab": {f"t{i}": i for i in range(260)}, "merges": [f"t{i} t{i + 1}" for i in range(0, 8, 2)]},
}
TOKENIZER_CONFIG = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                    "add_bos_token": False, "chat_template": "{{ messages[0]['content'] }}"}


def _weights(path: Path) -> None:
    rng = np.random.default_rng(0)

    def w(*shape):
        return "F32", rng.standard_normal(shape).astype(np.float32)

    head_dim = HIDDEN // HEADS
    tensors = {"model.embed_tokens.weight": w(VOCAB, HIDDEN), "model.norm.weight": w(HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors.update({p + "input_layernorm.weight": w(HIDDEN), p + "post_attention_layernorm.weight": w(HIDDEN),
                        p + "self_attn.q_proj.weight": w(HEADS * head_dim, HIDDEN),
                        p + "self_attn.q_proj.bias": w(HEADS * head_dim),
                        p + "self_attn.k_proj.weight": w(KV_HEADS * head_dim, HIDDEN),
                        p + "self_attn.k_proj.bias": w(KV_HEADS * head_dim),
                        p + "self_attn.v_proj.weight": w(KV_HEADS * head_dim, HIDDEN),
                        p + "self_attn.v_proj.bias": w(KV_HEADS * head_dim),
                        p + "self_attn.o_proj.weight": w(HIDDEN, HEADS * head_dim),
                        p + "mlp.gate_proj.weight": w(FF, HIDDEN), p + "mlp.up_proj.weight": w(FF, HIDDEN),
                        p + "mlp.down_proj.weight": w(HIDDEN, FF)})
    write_safetensors(path, tensors)


# One checkpoint directory for the module (in memory where there is a tmpfs); each example rewrites the
# JSON file it fuzzes and puts the seed back afterwards.
_DIR = tempfile.TemporaryDirectory(prefix="edgekit-fuzz-json-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
CKPT = Path(_DIR.name)
_weights(CKPT / "model.safetensors")
SEED_FILES = {"config.json": CONFIG, "tokenizer.json": TOKENIZER, "tokenizer_config.json": TOKENIZER_CONFIG}
for _name, _seed in SEED_FILES.items():
    (CKPT / _name).write_text(json.dumps(_seed))
(CKPT / "elsewhere").mkdir()
_weights(CKPT / "elsewhere" / "model.safetensors")  # a valid shard outside the checkpoint's own files


def _open(files: dict[str, bytes]):
    try:
        for name, text in files.items():
            (CKPT / name).write_bytes(text)
        return only_edgekit_errors(open_checkpoint, CKPT)
    finally:
        for name in files:
            if name in SEED_FILES:
                (CKPT / name).write_text(json.dumps(SEED_FILES[name]))
            else:
                (CKPT / name).unlink()


def _paths(value, prefix=(), limit=40):
    """Paths (key/index tuples) into a JSON value, at most ``limit`` items of any one list or dict."""
    yield prefix
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, list) else []
    for key, child in items[:limit]:
        yield from _paths(child, (*prefix, key), limit)


def _edit(value, path, new):
    """A copy of ``value`` with the item at ``path`` replaced by ``new`` (or deleted when ``new`` is DELETE)."""
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    if new is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return copy


DELETE = object()


@st.composite
def edited(draw, seed):
    """JSON text of ``seed`` with one to three items replaced or deleted (or the text itself mutated)."""
    value = seed
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(value))
        path = draw(st.sampled_from(paths))
        new = draw(st.one_of(json_values, st.just(DELETE))) if path else draw(json_values)
        value = _edit(value, path, new)
    text = dump_json(value, draw(st.integers(1, 5000)))
    return draw(st.one_of(st.just(text), mutations(text)))


def _edited_config(**changes) -> bytes:
    return json.dumps({**CONFIG, **changes}).encode()


def test_the_seed_checkpoint_opens():
    ckpt = _open({})
    assert ckpt is not None and ckpt.hparams.n_layer == LAYERS and len(ckpt.vocab.tokens) == VOCAB
    assert ckpt.vocab.pre == "qwen2" and ckpt.hparams.rope_scaling["rope_type"] == "yarn"


@fuzz_settings(200)
@given(edited(CONFIG))
# Found by this test: a config.json holding null or a list raised AttributeError, one nested thousands deep
# RecursionError, and architectures of the wrong type TypeError.
@pytest.mark.slow
@example(b"null")
@example(dump_json({**CONFIG, "rope_scaling": DEEP}, 5000))
@example(_edited_config(architectures=[["Qwen2ForCausalLM"]]))
@example(_edited_config(architectures=7))
def test_edited_config_is_read_or_refused(config):
    ckpt = _open({"config.json": config})
    if ckpt is not None:
        hp = ckpt.hparams  # whatever the config says, what was accepted agrees with the weights
        assert (hp.n_layer, hp.n_embd, hp.n_ff, hp.vocab_size) == (LAYERS, HIDDEN, FF, VOCAB)
        assert hp.n_head * hp.head_dim == HIDDEN and hp.n_head_kv * hp.head_dim == KV_HEADS * HIDDEN // HEADS


def _edited_tokenizer(path, value) -> bytes:
    return json.dumps(_edit(TOKENIZER, path, value)).encode()


@fuzz_settings(200)
@given(edited(TOKENIZER))
# Found by this test: a tokenizer.json nested thousands deep raised RecursionError, and a value of the wrong
# type (model, vocab, an added token, the pre-tokenizer) AttributeError or TypeError ...
@example(dump_json({**TOKENIZER, "merges": DEEP}, 5000))
@example(_edited_tokenizer(("model",), []))
@example(_edited_tokenizer(("model", "vocab", "t0"), None))
@example(_edited_tokenizer(("added_tokens", 0), {"id": 260}))
@example(_edited_tokenizer(("pre_tokenizer", "pretokenizers", 0), "Split"))
# ... and a token id of 10^12 made the reader pad the vocabulary to 10^12 entries.
@pytest.mark.slow
@example(_edited_tokenizer(("added_tokens", 0, "id"), 10**12))
def test_edited_tokenizer_is_read_or_refused(tokenizer):
    ckpt = _open({"tokenizer.json": tokenizer})
    if ckpt is not None:
        vocab = ckpt.vocab
        assert len(vocab.tokens) == len(vocab.types) >= VOCAB
        assert all(0 <= i < len(vocab.tokens) for i in vocab.special_ids.values())


@pytest.mark.slow
@fuzz_settings(100)
@given(edited(TOKENIZER_CONFIG))
@example(b"[]")  # found by this test: AttributeError
def test_edited_tokenizer_config_is_read_or_refused(tokenizer_config):
    _open({"tokenizer_config.json": tokenizer_config})


INDEX = {"metadata": {"total_size": 1}, "weight_map": {"model.embed_tokens.weight": "model.safetensors",
                                                       "model.norm.weight": "model.safetensors"}}


@fuzz_settings(100)
@given(edited(INDEX))
# Found by this test: a weight_map that is not an object raised AttributeError, a shard name that is not a
# string TypeError; and a shard named by a path ("/etc/passwd") was read from outside the checkpoint.
@example(json.dumps({"weight_map": []}).encode())
@example(json.dumps({"weight_map": {"a": 1}}).encode())
@example(json.dumps({"weight_map": {"a": "elsewhere/model.safetensors"}}).encode())
def test_edited_shard_index_is_read_or_refused(index):
    ckpt = _open({"model.safetensors.index.json": index})
    if ckpt is not None:
        assert ckpt.weights.files == [CKPT / "model.safetensors"]


# --- SentencePiece: a tokenizer.json BPE with byte fallback, and tokenizer.model bytes ----------------------
# Read by open_checkpoint, then proven by check_vocab (HF tokenizers / sentencepiece and llama.cpp on the
# probe texts), which must also only succeed or refuse.

SPACE = "\u2581"
SPM_PIECES = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], SPACE, "a", "b", SPACE + "a", "ab"]
SPM_TOKENIZER = {
    "version": "1.0",
    "added_tokens": [{"id": i, "content": t, "special": True, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False} for i, t in enumerate(SPM_PIECES[:3])],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE},
                                                        {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]},
    "pre_tokenizer": None, "post_processor": None, "decoder": None,
    "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
              "vocab": {t: i for i, t in enumerate(SPM_PIECES)}, "merges": [[SPACE, "a"], ["a", "b"]]},
}


def _spm_model_bytes(edits: dict[int, tuple[str | None, float | None, int | None]] | None = None,
                     model_type: int = 2, dummy_prefix: bool = True, remove_spaces: bool = False) -> bytes:
    """The seed tokenizer.model; ``edits`` replace a piece's text, score or type (None keeps it)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    for i, text in enumerate(SPM_PIECES):
        text_, score, kind = (edits or {}).get(i, (None, None, None))
        piece = proto.pieces.add()
        piece.piece = text if text_ is None else text_
        piece.score = -float(i) if score is None else score
        piece.type = (2 if i == 0 else 3 if i < 3 else 6 if i < 259 else 1) if kind is None else kind
    proto.trainer_spec.model_type = model_type
    proto.trainer_spec.byte_fallback = True
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = dummy_prefix
    proto.normalizer_spec.remove_extra_whitespaces = remove_spaces
    return proto.SerializeToString()


SPM_MODEL = _spm_model_bytes()


def _convert_vocab(files: dict[str, bytes], drop: tuple[str, ...] = ()):
    """open_checkpoint and check_vocab on the checkpoint with ``files`` written and ``drop`` removed."""
    from edgekit.convert.pipeline import check_vocab

    def read():
        ckpt = open_checkpoint(CKPT)
        check_vocab(ckpt, "fuzz")
        return ckpt

    try:
        for name in drop:
            (CKPT / name).unlink()
        for name, data in files.items():
            (CKPT / name).write_bytes(data)
        return only_edgekit_errors(read)
    finally:
        for name in {*files, *drop}:
            if name in SEED_FILES:
                (CKPT / name).write_text(json.dumps(SEED_FILES[name]))
            else:
                (CKPT / name).unlink(missing_ok=True)


def test_the_sentencepiece_seeds_convert():
    for files, drop in (({"tokenizer.json": json.dumps(SPM_TOKENIZER).encode()}, ()),
                        ({"tokenizer.model": SPM_MODEL}, ("tokenizer.json",))):
        ckpt = _convert_vocab(files, drop)
        assert ckpt is not None and ckpt.vocab.model == "llama" and ckpt.vocab.add_space_prefix


def _without_byte_pieces(*values: int) -> bytes:
    vocab = {t: i for t, i in SPM_TOKENIZER["model"]["vocab"].items() if not any(t == f"<0x{v:02X}>" for v in values)}
    return json.dumps({**SPM_TOKENIZER, "model": {**SPM_TOKENIZER["model"], "vocab": vocab}}).encode()


@fuzz_settings(60)
@given(edited(SPM_TOKENIZER))
# Found by this test: a vocabulary without the byte piece <0x0A> made llama.cpp abort the process on "\n".
@pytest.mark.slow
@example(_without_byte_pieces(0x0A, 0x1A))
def test_edited_sentencepiece_tokenizer_is_converted_or_refused(tokenizer):
    _convert_vocab({"tokenizer.json": tokenizer})


@pytest.mark.slow
@fuzz_settings(60)
@given(st.one_of(mutations(SPM_MODEL), st.binary(max_size=64)))
@example(b"")
def test_mutated_tokenizer_model_is_converted_or_refused(model):
    _convert_vocab({"tokenizer.model": model}, drop=("tokenizer.json",))


@st.composite
def edited_models(draw):
    """The seed tokenizer.model with a few pieces' texts, scores or types changed, and its settings."""
    edits = draw(st.dictionaries(
        st.integers(0, len(SPM_PIECES) - 1),
        st.tuples(st.none() | st.sampled_from(SPM_PIECES) | st.text(max_size=6),
                  st.none() | st.floats(allow_nan=True, allow_infinity=True, width=32), st.none() | st.integers(1, 6)),
        max_size=4))
    return _spm_model_bytes(edits, draw(st.integers(1, 4)), draw(st.booleans()), draw(st.booleans()))


@pytest.mark.slow
@fuzz_settings(60)
@given(edited_models())
def test_edited_tokenizer_model_is_converted_or_refused(model):
    _convert_vocab({"tokenizer.model": model}, drop=("tokenizer.json",))
