"""edgekit eval: llama-perplexity's scores on real SmolLM2 weights (perturbed off their Q4_1 grid)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.errors import EvalError

N_CTX = 128
pytestmark = pytest.mark.slow  # every test here needs SmolLM2 quantized (module fixture) or evaluated


@pytest.fixture(scope="module")
def f16(smollm2_perturbed_f16):
    return smollm2_perturbed_f16


@pytest.fixture(scope="module")
def quants(f16, tmp_path_factory):
    from edgekit.convert.tensor_quant import quantize_plain

    d = tmp_path_factory.mktemp("quants")
    return {t: quantize_plain(f16, d / f"{t}.gguf", t) for t in ("Q8_0", "Q4_0")}


@pytest.fixture(scope="module")
def f16_logits(f16, tmp_path_factory):
    """F16 reference log-probs over >= 1000 scored tokens (4 chunks x 255)."""
    from edgekit.evaluate import save_reference_logits

    path = tmp_path_factory.mktemp("ref") / "f16.logits"
    base = save_reference_logits(f16, path, n_ctx=512, n_chunks=4)
    return path, base

def _tiny_qwen2(path):
    """A one-layer Qwen2 model with the real Qwen2 vocabulary (151k tokens) and random weights."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    from edgekit.samples.assets import qwen2_vocab

    vocab = GGUFReader(str(qwen2_vocab()))
    n_vocab = len(vocab.get_field("tokenizer.ggml.tokens").data)
    hp = {"block_count": 1, "embedding_length": 64, "feed_forward_length": 128, "attention.head_count": 4,
          "attention.head_count_kv": 4, "context_length": 4096}
    w = GGUFWriter(str(path), "qwen2")
    for field in vocab.fields.values():
        name = field.name
        if name == "general.architecture" or name.startswith("GGUF.") or name.removeprefix("qwen2.") in hp:
            continue
        sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), field.types[0], sub_type=sub)
    for key, value in hp.items():
        w.add_uint32(f"qwen2.{key}", value)
    rng = np.random.default_rng(0)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float16 if len(shape) > 1 else np.float32))

    t("token_embd.weight", n_vocab, 64)
    t("output_norm.weight", 64)
    t("blk.0.attn_norm.weight", 64)
    t("blk.0.ffn_norm.weight", 64)
    for n in ("q", "k", "v"):
        t(f"blk.0.attn_{n}.weight", 64, 64)
        t(f"blk.0.attn_{n}.bias", 64)
    t("blk.0.attn_output.weight", 64, 64)
    t("blk.0.ffn_gate.weight", 128, 64)
    t("blk.0.ffn_up.weight", 128, 64)
    t("blk.0.ffn_down.weight", 64, 128)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# The reference's log-probs are stored as 16-bit codes over (at most) the top 16 nats, so each one is off by
# at most half a code step, 8/65535 nats, plus float32 rounding (~1e-6 at these magnitudes). A model against
# itself then scores KLD = sum p_i*e^(e_i)*e_i with |e_i| below that: within one full step of zero, either side.
CODE_STEP = 16 / 65535  # nats


def test_kld_of_a_model_against_itself_is_zero(quants):
    from edgekit.evaluate import evaluate

    res = evaluate(quants["Q8_0"], reference=quants["Q8_0"], n_ctx=N_CTX, n_chunks=4)
    assert res.n_tokens == 4 * (N_CTX - 1 - N_CTX // 2)
    # only the 16-bit coding of the reference's log-probs separates them; reported as is (may be < 0)
    assert abs(res.kld_mean) < CODE_STEP
    assert abs(res.kld_max) < CODE_STEP
    # two top logits within half a step get the same code, and the reference's argmax takes the lower id
    assert res.same_top_p >= 0.99
    assert res.rms_dp < 1e-3
    assert res.perplexity == pytest.approx(res.perplexity_base, rel=1e-3)


def test_perplexity_matches_numpy_over_the_same_logits(quants):
    """Chunking, BOS, second-half scoring and the NLL average, against a direct numpy log-softmax."""
    import llama_cpp

    from edgekit import _llama
    from edgekit.evaluate import default_text, evaluate
    from edgekit.gguf_check import check

    model = quants["Q8_0"]
    res = evaluate(model, n_ctx=N_CTX, n_chunks=3)
    info = check(model)
    with _llama.same_weight_buffers(model, info.tensor_types, info.matrices):
        llm = llama_cpp.Llama(str(model), n_ctx=N_CTX, n_batch=N_CTX, logits_all=True, verbose=False)
    tokens = llm.tokenize(default_text().encode(), add_bos=True, special=False)
    add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))
    first, nlls = N_CTX // 2, []
    for c in range(3):
        chunk = tokens[c * N_CTX:(c + 1) * N_CTX]
        llm.reset()
        llm.eval(([llm.token_bos()] if add_bos else chunk[:1]) + chunk[1:])
        logits = np.asarray(llm.scores[first:N_CTX - 1], dtype=np.float64)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        nlls.extend(-logp[np.arange(len(logp)), chunk[first + 1:]])
    llm.close()
    assert res.n_tokens == len(nlls)
    assert res.perplexity == pytest.approx(float(np.exp(np.mean(nlls))), rel=2e-3)


def test_q8_0_is_closer_to_f16_than_q4_0_on_real_weights(quants, f16_logits):
    from edgekit.evaluate import evaluate, read_logits_header

    path, base = f16_logits
    # llama.cpp's --kl-divergence-base layout: header, tokens, then 255 rows of (n_vocab + 4) uint16 per chunk
    n_ctx, n_vocab, n_chunk, tokens = read_logits_header(path)
    assert (n_ctx, n_vocab, n_chunk, len(tokens)) == (512, 49152, 4, 2048)
    assert path.stat().st_size == 20 + 4 * 2048 + 4 * 255 * (49152 + 4) * 2
    q8 = evaluate(quants["Q8_0"], reference_logits=path)
    q4 = evaluate(quants["Q4_0"], reference_logits=path)
    assert q8.n_tokens >= 1000
    assert q8.perplexity_base == pytest.approx(base.perplexity, rel=1e-3)
    assert CODE_STEP < q8.kld_mean < q4.kld_mean  # a real difference clears the self-comparison tolerance
    assert q8.same_top_p > q4.same_top_p
    assert q8.kld_p99 < q4.kld_p99


def test_reference_with_another_vocabulary_is_refused(quants, tmp_path):
    from edgekit.evaluate import evaluate

    other = _tiny_qwen2(tmp_path / "tiny-qwen2.gguf")
    with pytest.raises(EvalError, match="vocabulary of 151"):
        evaluate(quants["Q8_0"], reference=other, n_ctx=64, n_chunks=1)


def test_text_shorter_than_the_context_is_refused(quants):
    from edgekit.evaluate import evaluate

    with pytest.raises(EvalError, match="shorter than the context"):
        evaluate(quants["Q8_0"], text="Just a few words.", n_ctx=512)


def test_a_file_that_is_not_reference_logits_is_refused(quants, tmp_path):
    from edgekit.evaluate import evaluate

    bogus = tmp_path / "x.logits"
    bogus.write_bytes(b"not logits at all")
    with pytest.raises(EvalError, match="not a reference logits file"):
        evaluate(quants["Q8_0"], reference_logits=bogus)


def test_cli_json_and_one_line_errors(quants, f16_logits, tmp_path, capsys):
    from edgekit.cli import main

    path, _ = f16_logits
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(quants["Q4_0"]), "--reference-logits", str(path), "--chunks", "1", "--json"])
    assert exit_info.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["n_tokens"] == 255 and out["kld_mean"] > 0 and 0 < out["same_top_p"] < 1

    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(quants["Q4_0"]), "--text", str(short), "--quiet"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: The evaluation text is") and "\n" not in err
