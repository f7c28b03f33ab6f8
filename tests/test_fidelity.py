"""Converted models compute what the checkpoint computes, and tokenize as HF does.

The reference is independent of llama.cpp: a numpy forward pass
(tests/reference.py) and the HF `tokenizers` library.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from reference import ReferenceModel

from edgekit.convert import convert
from edgekit.samples.checkpoints import random_qwen2_checkpoint

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. 12345 6789",
    "日本語のテキストと emoji 🚀 mixed together, with   spaces\tand tabs.",
]


def llama_logits(gguf_path, prompts):
    """Logits for every position of each prompt, from llama.cpp itself."""
    from llama_cpp import Llama

    model = Llama(str(gguf_path), n_ctx=256, n_batch=256, logits_all=True, verbose=False, n_threads=2)
    out = []
    for text in prompts:
        ids = model.tokenize(text.encode(), add_bos=False, special=True)
        model.reset()
        model.eval(ids)
        out.append((ids, np.array(model.scores[: len(ids)], dtype=np.float64)))
    model.close()
    return out


# Top-1 must agree wherever the reference's best logit leads the runner-up by more than this. Near-ties
# are left out: llama.cpp rounds activations to F16 and its AVX2/AVX512/NEON kernels sum in different
# orders, so logits differ by up to ~0.05 (the largest difference measured, SmolLM2 on an AVX512 build);
# a flip needs two such errors in opposite directions, and this margin is five of them.
DECIDED_MARGIN = 0.25


def compare(reference: ReferenceModel, results) -> tuple[float, float, float]:
    """Mean KL(ref || llama.cpp), top-1 agreement where the reference's top-1 is decided (leads by more than
    DECIDED_MARGIN), and the fraction of positions that are decided, over all positions of all prompts."""
    kls, agree, decided = [], [], []
    for ids, got in results:
        want = reference.logits(ids).astype(np.float64)
        p = np.exp(want - want.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        log_q = got - got.max(-1, keepdims=True)
        log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
        log_p = np.log(np.clip(p, 1e-300, None))
        kls.extend((p * (log_p - log_q)).sum(-1))
        top2 = np.sort(want, -1)[:, -2:]
        sure = top2[:, 1] - top2[:, 0] > DECIDED_MARGIN
        decided.extend(sure)
        agree.extend((want.argmax(-1) == got.argmax(-1))[sure])
    return float(np.mean(kls)), float(np.mean(agree)), float(np.mean(decided))


@pytest.fixture(scope="module")
def qwen2_f16(tmp_path_factory, qwen2_vocab_gguf):
    ck = random_qwen2_checkpoint(tmp_path_factory.mktemp("q") / "tiny-qwen2", qwen2_vocab_gguf, layers=3)
    [f16] = convert(ck, out=tmp_path_factory.mktemp("o"), quant="f16")
    return ck, f16.path


@pytest.mark.slow
def test_qwen2_logits_match_reference(qwen2_f16):
    ck, gguf_path = qwen2_f16
    config = json.loads((ck / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    reference = ReferenceModel(ck)
    assert np.abs(reference.w("model.layers.0.self_attn.q_proj.bias")).max() > 0  # biases are exercised
    kl, top1, decided = compare(reference, llama_logits(gguf_path, PROMPTS))
    assert decided > 0.75  # random weights, yet most positions have a clear winner
    assert top1 == 1.0
    assert kl < 1e-4


@pytest.mark.slow
def test_smollm2_real_weights_logits_match_reference(smollm2_hf_dir, tmp_path):
    [f16] = convert(smollm2_hf_dir, out=tmp_path, quant="f16")
    kl, top1, decided = compare(ReferenceModel(smollm2_hf_dir), llama_logits(f16.path, PROMPTS[:3]))
    assert decided > 0.75
    assert top1 == 1.0
    assert kl < 1e-4


def _vectors(vocab_gguf):
    inp = vocab_gguf.with_name(vocab_gguf.name + ".inp").read_text(encoding="utf-8")
    out = vocab_gguf.with_name(vocab_gguf.name + ".out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")[:-1]
    ids = [[int(x) for x in line.split()] for line in out.split("\n")[: len(texts)]]
    return texts, ids


def _llama_tokenizer(gguf_path):
    from llama_cpp import Llama

    return Llama(str(gguf_path), vocab_only=True, verbose=False)


def test_llama_cpp_vectors_on_converted_vocab(qwen2_f16, qwen2_vocab_gguf):
    _, gguf_path = qwen2_f16
    texts, expected = _vectors(qwen2_vocab_gguf)
    assert len(texts) > 20
    tok = _llama_tokenizer(gguf_path)
    got = [tok.tokenize(t.encode(), add_bos=False, special=False) for t in texts]
    assert got == expected


def test_tokenization_matches_hf(qwen2_f16, qwen2_vocab_gguf):
    from tokenizers import Tokenizer

    ck, gguf_path = qwen2_f16
    hf = Tokenizer.from_file(str(ck / "tokenizer.json"))
    tok = _llama_tokenizer(gguf_path)
    texts, _ = _vectors(qwen2_vocab_gguf)
    for text in texts + PROMPTS:
        assert tok.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False).ids


@pytest.mark.slow
def test_edited_tokenizer_still_converts_and_matches_hf(qwen2_f16, tmp_path):
    """A vocabulary llama.cpp's converter would refuse ('BPE pre-tokenizer was not recognized')."""
    from tokenizers import Tokenizer

    ck, _ = qwen2_f16
    edited = tmp_path / "edited"
    shutil.copytree(ck, edited)
    tokenizer = json.loads((edited / "tokenizer.json").read_text())
    merges = tokenizer["model"]["merges"]
    # drop every 7th merge among the first 20k: common words now split differently
    tokenizer["model"]["merges"] = [m for i, m in enumerate(merges) if i >= 20000 or i % 7]
    next_id = max(a["id"] for a in tokenizer["added_tokens"]) + 1
    tokenizer["added_tokens"].append(
        {"id": next_id, "content": "<|edgekit|>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
    )
    (edited / "tokenizer.json").write_text(json.dumps(tokenizer))
    [f16] = convert(edited, out=tmp_path, quant="f16")
    hf = Tokenizer.from_file(str(edited / "tokenizer.json"))
    original = Tokenizer.from_file(str(ck / "tokenizer.json"))
    tok = _llama_tokenizer(f16.path)
    texts = PROMPTS + ["Hello <|edgekit|> world, the other thing is that they were there."]
    assert any(hf.encode(t).ids != original.encode(t).ids for t in texts)  # the edit matters
    for text in texts:
        assert tok.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False).ids


def _flag(token: str, **flags):
    """An edit of tokenizer.json setting ``flags`` on the added token ``token``."""

    def edit(tokenizer):
        for added in tokenizer["added_tokens"]:
            if added["content"] == token:
                added.update(flags)

    return edit


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["rstrip", "lstrip"])
def test_bpe_vocabulary_llama_cpp_cannot_reproduce_is_refused(tiny_qwen2_dir, tmp_path, flag):
    """Byte-level BPE vocabularies are proven at conversion time as SentencePiece ones are: an added token
    marked rstrip or lstrip (HF drops the whitespace after or before it; a GGUF has no such flag) is refused,
    naming the text."""
    from fixtures_checkpoints import with_edited

    from edgekit.errors import UnsupportedModel

    edited = with_edited(tiny_qwen2_dir, tmp_path / flag, "tokenizer.json", _flag("<|im_start|>", **{flag: True}))
    with pytest.raises(UnsupportedModel, match=r"tokenize '.*<\|im_start\|>.*differently from the HF tokenizer"):
        convert(edited, out=tmp_path / "out", quant="f16")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    convert(tiny_qwen2_dir, out=tmp_path / "out", quant="f16")  # the same vocabulary unedited converts


def test_bpe_normalizer_other_than_nfc_is_refused_naming_it(tiny_qwen2_dir, tmp_path):
    """A byte-level BPE tokenizer.json whose normalizer llama.cpp doesn't apply (only NFC is) is refused by
    name before anything is written."""
    from fixtures_checkpoints import with_edited

    from edgekit.errors import UnsupportedModel

    def nfkc(tokenizer):
        tokenizer["normalizer"] = {"type": "NFKC"}

    edited = with_edited(tiny_qwen2_dir, tmp_path / "nfkc", "tokenizer.json", nfkc)
    with pytest.raises(UnsupportedModel, match="tokenizer.json normalizer 'NFKC' is not supported") as err:
        convert(edited, out=tmp_path / "out", quant="f16")
    assert "\n" not in err.value.message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_llama3_vocabulary_without_ignore_merges_is_refused(tmp_path):
    """llama.cpp always tokenizes Llama 3's pre-tokenizer with ignore_merges (a word that is one token stays
    one token), as Llama 3's own tokenizer.json says; a file saying otherwise tokenizes some words
    differently in HF (found by the probes: 'пеки' is one token in llama.cpp, three by the merges)."""
    from fixtures_checkpoints import with_edited

    from edgekit.errors import UnsupportedModel
    from edgekit.samples.checkpoints import cached_random_checkpoint

    ck = cached_random_checkpoint("llama3")
    assert json.loads((ck / "tokenizer.json").read_text())["model"]["ignore_merges"] is True

    def merges_apply(tokenizer):
        tokenizer["model"]["ignore_merges"] = False

    edited = with_edited(ck, tmp_path / "merges", "tokenizer.json", merges_apply)
    with pytest.raises(UnsupportedModel, match="differently from the HF tokenizer"):
        convert(edited, out=tmp_path / "out", quant="f16")


def test_end_of_generation_tokens(qwen2_f16):
    import llama_cpp

    _, gguf_path = qwen2_f16
    tok = _llama_tokenizer(gguf_path)
    vocab = llama_cpp.llama_model_get_vocab(tok.model)
    im_end, endoftext, im_start = (tok.tokenize(t.encode(), add_bos=False, special=True)[0]
                                    for t in ("<|im_end|>", "<|endoftext|>", "<|im_start|>"))
    assert llama_cpp.llama_vocab_is_eog(vocab, im_end)
    assert llama_cpp.llama_vocab_is_eog(vocab, endoftext)
    assert not llama_cpp.llama_vocab_is_eog(vocab, im_start)
