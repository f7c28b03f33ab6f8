"""SentencePiece vocabularies: converted to llama.cpp's ``llama`` tokenizer, and tokenized exactly as HF does.

Oracles: HF ``tokenizers`` (tokenizer.json), ``sentencepiece`` (tokenizer.model), llama.cpp's own
test vectors (``ggml-vocab-llama-spm.gguf.inp/.out``) and llama.cpp's own converted vocabulary
file, and the numpy reference forward pass for the greedy run.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from reference import ReferenceModel

from edgekit.convert import convert
from edgekit.convert.vocab_check import PROBES
from edgekit.errors import EdgekitError, UnsupportedModel
from edgekit.samples.hf_tokenizer import gguf_metadata
from edgekit.samples.spm import (
    cached_llama_spm_checkpoint,
    random_llama_spm_checkpoint,
    spm_vocab,
    vocab_vectors,
)

# What the issue asks to be tokenized exactly, beyond llama.cpp's vectors and the converter's probes.
TEXTS = [
    " leading space", "   three leading", "several     spaces", "new\nlines\n\n\nand\r\nCRLF", "digits 12345 6.789",
    "emoji 🦙🦙 👩‍👩‍👧 🇯🇵", "missing from the vocab: \U0001d518 \u16a0 \U00010348 \u2c00", "Ünïcödé façade",
]
SPECIAL_TEXTS = ["<s>Hello</s>", "Hi <s> there </s>\n<s>x", "</s></s>  <unk>", "<s> leading"]


def _tokenizer(path):
    from llama_cpp import Llama

    return Llama(str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def llama_spm_gguf():
    return spm_vocab("llama-spm")


@pytest.fixture(scope="module")
def spm_json_f16(tmp_path_factory):
    ck = cached_llama_spm_checkpoint("llama-spm", files="json", style="legacy")
    return ck, convert(ck, tmp_path_factory.mktemp("spm") / "spm-json.gguf", "f16")[0].path


@pytest.fixture(scope="module")
def spm_model_f16(tmp_path_factory):
    ck = cached_llama_spm_checkpoint("llama-spm", files="model", style="legacy")
    return ck, convert(ck, tmp_path_factory.mktemp("spm") / "spm-model.gguf", "f16")[0].path


@pytest.mark.slow
def test_tokenizer_model_converts_to_llama_cpps_own_vocabulary(spm_model_f16, llama_spm_gguf):
    """tokenizer.model's pieces, scores and types are what llama.cpp's converter wrote for Llama 2."""
    _, path = spm_model_f16
    ours, theirs = gguf_metadata(path), gguf_metadata(llama_spm_gguf)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.add_bos_token"):
        assert ours[key] == theirs[key], key
    assert ours["tokenizer.ggml.add_space_prefix"] is True
    assert ours["tokenizer.chat_template"].startswith("{% if messages[0]['role'] == 'system' %}")
    types = ours["tokenizer.ggml.token_type"]
    assert types[0] == 2 and types[1] == types[2] == 3 and set(types[3:259]) == {6}  # unknown, control, bytes


@pytest.mark.slow
def test_tokenizer_json_keeps_types_and_merge_order(spm_json_f16, llama_spm_gguf):
    _, path = spm_json_f16
    ours, theirs = gguf_metadata(path), gguf_metadata(llama_spm_gguf)
    assert ours["tokenizer.ggml.model"] == "llama" and ours["tokenizer.ggml.add_space_prefix"] is True
    assert ours["tokenizer.ggml.tokens"] == theirs["tokenizer.ggml.tokens"]
    assert ours["tokenizer.ggml.token_type"] == theirs["tokenizer.ggml.token_type"]
    # HF has merges, not scores: a piece scores minus the rank of its first merge, so the order of
    # merged pieces is SentencePiece's own.
    scored = [i for i, s in enumerate(ours["tokenizer.ggml.scores"]) if s < 0]
    assert len(scored) > 29000
    order = sorted(scored, key=lambda i: -ours["tokenizer.ggml.scores"][i])
    original = theirs["tokenizer.ggml.scores"]
    assert all(original[a] >= original[b] for a, b in zip(order, order[1:], strict=False))  # ties may go either way


def test_llama_cpp_vectors(spm_json_f16, spm_model_f16, llama_spm_gguf):
    texts, expected = vocab_vectors(llama_spm_gguf)
    for _, path in (spm_json_f16, spm_model_f16):
        tok = _tokenizer(path)
        assert [tok.tokenize(t.encode(), add_bos=False, special=False) for t in texts] == expected


def test_tokenizes_as_hf(spm_json_f16, llama_spm_gguf):
    from tokenizers import Tokenizer

    ck, path = spm_json_f16
    hf = Tokenizer.from_file(str(ck / "tokenizer.json"))
    tok = _tokenizer(path)
    texts = [*vocab_vectors(llama_spm_gguf)[0], *PROBES, *TEXTS, *SPECIAL_TEXTS]
    for text in texts:
        assert tok.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False).ids, text
    # The texts do exercise what they claim: the dummy prefix, byte fallback and special tokens.
    assert hf.encode("Hi").tokens[0].startswith("\u2581")
    assert "<0xF0>" in hf.encode("\U0001d518").tokens
    assert hf.encode("<s>x", add_special_tokens=False).ids[0] == 1
    # BOS where the model wants it.
    assert tok.tokenize(b"Hi", add_bos=True, special=True)[0] == 1


def test_tokenizer_model_tokenizes_as_sentencepiece(spm_model_f16, llama_spm_gguf):
    import sentencepiece

    ck, path = spm_model_f16
    sp = sentencepiece.SentencePieceProcessor(model_file=str(ck / "tokenizer.model"))
    tok = _tokenizer(path)
    for text in [*vocab_vectors(llama_spm_gguf)[0], *PROBES, *TEXTS, *SPECIAL_TEXTS]:
        assert tok.tokenize(text.encode(), add_bos=False, special=False) == list(sp.encode(text)), text


@pytest.mark.slow
def test_gemma_style_has_no_dummy_prefix(tmp_path, llama_spm_gguf):
    from tokenizers import Tokenizer

    ck = random_llama_spm_checkpoint(tmp_path / "ck", llama_spm_gguf, style="gemma", layers=1)
    # As transformers 5.x writes Gemma's tokenizer.json: a Split on " " that the normalizer leaves nothing to do.
    tokenizer = json.loads((ck / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                                  "invert": False}
    (ck / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    path = convert(ck, tmp_path / "g.gguf", "f16")[0].path
    assert gguf_metadata(path)["tokenizer.ggml.add_space_prefix"] is False
    hf = Tokenizer.from_file(str(ck / "tokenizer.json"))
    tok = _tokenizer(path)
    assert not hf.encode("Hello", add_special_tokens=False).tokens[0].startswith("\u2581")
    for text in [*PROBES, *TEXTS, *SPECIAL_TEXTS]:
        assert tok.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False).ids, text


@pytest.mark.slow
def test_phi3_vocabulary_with_added_tokens(tmp_path):
    """Phi-3's vocabulary: chat tokens added after the SentencePiece pieces, <|end|> ends a turn."""
    from tokenizers import Tokenizer

    ck = random_llama_spm_checkpoint(tmp_path / "ck", spm_vocab("phi-3"), layers=1, chat_template=None)
    path = convert(ck, tmp_path / "p.gguf", "f16")[0].path
    meta = gguf_metadata(path)
    assert meta["tokenizer.ggml.tokens"][meta["tokenizer.ggml.eot_token_id"]] == "<|end|>"
    hf = Tokenizer.from_file(str(ck / "tokenizer.json"))
    tok = _tokenizer(path)
    for text in ["<|user|>\nHi there<|end|>\n<|assistant|>\n", " <|end|>x", *TEXTS]:
        assert tok.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False).ids, text
    texts, expected = vocab_vectors(spm_vocab("phi-3"))
    assert [tok.tokenize(t.encode(), add_bos=False, special=False) for t in texts] == expected


@pytest.mark.slow
def test_a_vocabulary_llama_cpp_cant_reproduce_is_refused(tmp_path, llama_spm_gguf):
    """Metaspace with prepend_scheme "first" adds no "▁" before a text that starts with a space;
    llama.cpp's SentencePiece tokenizer always does. The conversion names the first text that differs."""
    ck = random_llama_spm_checkpoint(tmp_path / "ck", llama_spm_gguf, style="metaspace", layers=1)
    with pytest.raises(UnsupportedModel, match=r"llama\.cpp would tokenize ' Hello world' differently from the HF tokenizer"):
        convert(ck, tmp_path / "m.gguf", "f16")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.slow
@pytest.mark.parametrize("types", ["q8_0", "q8_0,f16"])  # from a scratch BF16 file; from the F16 output
def test_llama_cpps_refusal_leaves_no_file_and_no_thread(tmp_path, llama_spm_gguf, monkeypatch, types):
    """llama.cpp's half of the check runs on a thread while the tensors stream (convert/vocab_check.py).
    Its refusal still reaches the caller, before llama.cpp's quantizer runs, with no output, partial or
    scratch file, and no thread left behind."""
    import threading

    import edgekit.convert.pipeline as pipeline
    from edgekit import _llama

    ck = random_llama_spm_checkpoint(tmp_path / "ck", llama_spm_gguf, style="metaspace", layers=1)
    quantized, loaded_on = [], []
    monkeypatch.setattr(pipeline, "quantize", lambda *a, **k: quantized.append(a))
    real = _llama.vocab_only
    monkeypatch.setattr(_llama, "vocab_only", lambda path: (loaded_on.append(threading.current_thread().name),
                                                            real(path))[1])
    out = tmp_path / "out"
    with pytest.raises(UnsupportedModel, match=r"llama\.cpp would tokenize ' Hello world' differently"):
        convert(ck, out, types)
    assert quantized == []
    assert not out.exists()  # nor the directory the conversion made for its outputs
    assert loaded_on == ["edgekit-vocab-check"]
    assert not [t for t in threading.enumerate() if t.name == "edgekit-vocab-check"]


@pytest.mark.slow
def test_the_reference_refuses_before_llama_cpp_loads_anything(tmp_path, llama_spm_gguf, monkeypatch):
    """A tokenizer.json HF tokenizers can't load (a merge of a token the vocabulary lacks) is refused by the
    reference, and llama.cpp never loads that vocabulary (it aborts the process on some that HF refuses)."""
    from edgekit import _llama

    ck = random_llama_spm_checkpoint(tmp_path / "ck", llama_spm_gguf, layers=1)
    tokenizer = json.loads((ck / "tokenizer.json").read_text())
    tokenizer["model"]["merges"].insert(0, ["\u2581", "no such token"])
    (ck / "tokenizer.json").write_text(json.dumps(tokenizer))
    loaded = []
    real = _llama.vocab_only
    monkeypatch.setattr(_llama, "vocab_only", lambda path: (loaded.append(path), real(path))[1])
    with pytest.raises(UnsupportedModel, match="tokenizer.json can't be loaded by its tokenizer library"):
        convert(ck, tmp_path / "m.gguf", "f16")
    assert loaded == [] and not (tmp_path / "m.gguf").exists()


def test_a_tokenizer_model_that_isnt_sentencepiece(tmp_path, spm_model_f16):
    ck, _ = spm_model_f16
    bad = tmp_path / "ck"
    shutil.copytree(ck, bad)
    (bad / "tokenizer.model").write_bytes(b"\x00not a protobuf at all\xff" * 3)
    with pytest.raises(UnsupportedModel, match="tokenizer.model is not a SentencePiece model") as info:
        convert(bad, tmp_path / "x.gguf", "f16")
    assert "\n" not in info.value.message


def test_other_normalizers_are_refused(tmp_path, spm_json_f16):
    ck, _ = spm_json_f16
    bad = tmp_path / "ck"
    shutil.copytree(ck, bad)
    tokenizer = json.loads((bad / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["normalizer"]["normalizers"].append({"type": "NFKC"})
    (bad / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    with pytest.raises(EdgekitError, match="normalizer 'NFKC' is not supported"):
        convert(bad, tmp_path / "x.gguf", "f16")


@pytest.mark.slow
def test_runs_greedy_through_load(spm_json_f16):
    """The converted model generates what the checkpoint computes (numpy reference), token by token."""
    import edgekit

    ck, path = spm_json_f16
    reference = ReferenceModel(ck)
    with edgekit.load(path, n_ctx=256, threads=2) as model:
        prompt = model.tokenize("The quick brown fox jumps over")
        assert prompt[0] == 1  # BOS
        out = model.generate(prompt, max_tokens=8, temperature=0.0)
        assert out.tokens
        ids = list(prompt)
        for token in out.tokens:
            logits = reference.logits(ids)[-1]
            top2 = np.sort(logits)[-2:]
            if top2[1] - top2[0] > 0.25:  # a near-tie may go either way on another SIMD path
                assert token == int(np.argmax(logits))
            ids.append(token)
        # Chat renders the checkpoint's Llama 2 template, with BOS once.
        chat = model.chat_tokens([{"role": "user", "content": "Hi"}])
        assert chat[0] == 1 and chat.count(1) == 1


# --- vocabularies no table knows: SentencePiece models trained here ------------------------------------

@pytest.mark.slow
def test_trained_bpe_converts_tokenizes_exactly_and_runs(tmp_path):
    import sentencepiece

    import edgekit
    from edgekit.samples.spm import trained_llama_spm_checkpoint

    ck = trained_llama_spm_checkpoint(tmp_path / "ck", "bpe")
    path = convert(ck, tmp_path / "t.gguf", "f16")[0].path
    assert gguf_metadata(path)["tokenizer.ggml.model"] == "llama"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(ck / "tokenizer.model"))
    tok = _tokenizer(path)
    for text in [*PROBES, *TEXTS]:
        assert tok.tokenize(text.encode(), add_bos=False, special=False) == list(sp.encode(text)), text
    assert "<0xF0>" in sp.encode("\U0001d518", out_type=str)  # byte fallback is exercised
    with edgekit.load(path, n_ctx=64, threads=2) as model:
        assert model.generate("Permission is hereby granted", max_tokens=4, temperature=0).tokens


def test_user_defined_pieces_after_a_dummy_prefix_are_refused(tmp_path):
    """SentencePiece reads a user-defined piece inside the text ("<|user|>Hi" -> <|user|>, "Hi"); llama.cpp
    splits the text there and puts the dummy prefix before "Hi" too. The converter names such a text."""
    from edgekit.samples.spm import trained_llama_spm_checkpoint

    ck = trained_llama_spm_checkpoint(tmp_path / "ck", "bpe", user_defined=("<|user|>", "<|end|>"))
    with pytest.raises(UnsupportedModel, match=r"llama\.cpp would tokenize '<\|(user|end)\|>Hello"):
        convert(ck, tmp_path / "t.gguf", "f16")


@pytest.mark.slow
def test_unigram_converts_to_llama_cpps_unigram_tokenizer(tmp_path):
    """A unigram model with SentencePiece's default normalizer (NFKC, extra spaces removed), as T5's."""
    import sentencepiece

    from edgekit.samples.spm import trained_llama_spm_checkpoint

    ck = trained_llama_spm_checkpoint(tmp_path / "ck", "unigram", normalizer="nmt_nfkc", byte_fallback=False)
    path = convert(ck, tmp_path / "u.gguf", "f16")[0].path
    meta = gguf_metadata(path)
    assert meta["tokenizer.ggml.model"] == "t5" and meta["tokenizer.ggml.remove_extra_whitespaces"] is True
    sp = sentencepiece.SentencePieceProcessor(model_file=str(ck / "tokenizer.model"))
    tok = _tokenizer(path)
    for text in [*PROBES, *TEXTS, "ｆｕｌｌｗｉｄｔｈ ① ﬁ"]:
        assert tok.tokenize(text.encode(), add_bos=False, special=False) == list(sp.encode(text)), text
    assert len(sp.encode("several     spaces")) == len(sp.encode("several spaces"))  # the normalizer ran
    import edgekit

    with edgekit.load(path, n_ctx=64, threads=2) as model:  # a Llama body with llama.cpp's unigram tokenizer
        assert model.tokenize("Permission is")[0] == sp.bos_id()
        assert model.generate("Permission is hereby granted", max_tokens=4, temperature=0).tokens


def test_unigram_with_byte_fallback_is_refused(tmp_path):
    """llama.cpp's unigram tokenizer has no byte fallback: a character outside the vocabulary differs."""
    from edgekit.samples.spm import trained_llama_spm_checkpoint

    ck = trained_llama_spm_checkpoint(tmp_path / "ck", "unigram", byte_fallback=True)
    with pytest.raises(UnsupportedModel, match="llama.cpp would tokenize .* differently from the SentencePiece tokenizer"):
        convert(ck, tmp_path / "u.gguf", "f16")


def test_bpe_with_a_normalizer_is_refused(tmp_path):
    from edgekit.samples.spm import trained_llama_spm_checkpoint

    ck = trained_llama_spm_checkpoint(tmp_path / "ck", "bpe", normalizer="nmt_nfkc")
    with pytest.raises(UnsupportedModel, match="SentencePiece BPE that normalizes text with 'nmt_nfkc'"):
        convert(ck, tmp_path / "b.gguf", "f16")


# --- Gemma 3's real vocabulary (262k pieces, no dummy prefix) ---------------------------------------------

GEMMA_TEXTS = ["<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n", "<bos>Hello",
               "a\n\n\n\nb   c\t\td", "<table><tr><td>x</td></tr></table>", " leading", "Hello world"]


@pytest.mark.slow
def test_gemma3_vocabulary(tmp_path):
    from tokenizers import Tokenizer

    from edgekit.samples.assets import gemma3_270m_gguf
    from edgekit.samples.checkpoints import cached_checkpoint
    from edgekit.samples.spm import SPM_BUILD, gemma3_vocab_llama_checkpoint

    registry = gemma3_270m_gguf()
    ck = cached_checkpoint(f"tiny-llama-gemma3-vocab-s{SPM_BUILD}", gemma3_vocab_llama_checkpoint)
    from_json = convert(ck, tmp_path / "j.gguf", "f16")[0].path
    model_only = tmp_path / "model-only"
    model_only.mkdir()
    for f in ck.iterdir():
        if f.name != "tokenizer.json":
            (model_only / f.name).symlink_to(f)
    from_model = convert(model_only, tmp_path / "m.gguf", "f16")[0].path

    theirs = gguf_metadata(registry)
    for path in (from_json, from_model):
        ours = gguf_metadata(path)
        assert ours["tokenizer.ggml.add_space_prefix"] is False
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"):
            assert ours[key] == theirs[key], key
        # llama.cpp's converter types Gemma's <unk> as control (it is listed among the special added
        # tokens); edgekit keeps SentencePiece's own type, unknown. Every other type is the same.
        unk = theirs["tokenizer.ggml.unknown_token_id"]
        types, their_types = list(ours["tokenizer.ggml.token_type"]), list(theirs["tokenizer.ggml.token_type"])
        assert (types.pop(unk), their_types.pop(unk)) == (2, 3) and types == their_types
    assert gguf_metadata(from_model)["tokenizer.ggml.scores"] == theirs["tokenizer.ggml.scores"]

    hf = Tokenizer.from_file(str(ck / "tokenizer.json"))
    reference = _tokenizer(registry)
    for path in (from_json, from_model):
        tok = _tokenizer(path)
        for text in [*PROBES, *TEXTS, *GEMMA_TEXTS]:
            want = hf.encode(text, add_special_tokens=False).ids
            assert tok.tokenize(text.encode(), add_bos=False, special=True) == want, text
            assert reference.tokenize(text.encode(), add_bos=False, special=True) == want, text
