"""Each architecture beyond Qwen2/Llama 2 converts exactly: Qwen3, Llama 3.x, SmolLM3, Gemma 3 and Phi-3.

The tiny checkpoints (edgekit.samples.checkpoints.TINY_ARCHS) switch on what makes each
architecture different; the logits of its F16 and Q8_0 conversions, run by llama.cpp, are held
against the numpy reference (tests/reference.py), over prompts that cross each sliding window
and rope-scaling threshold. Each test that relies on a feature also checks that the feature
changes the reference's logits, so a converter that dropped it could not pass.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_checkpoints import with_config
from reference import ReferenceModel
from test_fidelity import PROMPTS, compare

from edgekit.convert import convert
from edgekit.errors import CorruptFile, UnsupportedModel
from edgekit.samples.checkpoints import cached_random_checkpoint

# Long enough to cross Gemma's 8-token window, Llama 3's 64-token original context and all prompts' tokens.
LONG = " ".join(PROMPTS)
# Phi-3's longrope switches to its long factors past 256 tokens (llama.cpp: when its context exceeds 256).
VERY_LONG = " ".join(PROMPTS * 4)
# Q8_0 rounds every weight, which can flip a decided top-1 here and there: the bounds are loose but far
# from what a wrong tensor gives (KLD of order 1, top-1 agreement near chance).
Q8_MAX_KLD = 0.03  # measured: up to 0.008 (SmolLM3, hidden 64); docs/models.md


def _logits(gguf_path, prompts, n_ctx=256):
    """Logits for every position of each prompt, from llama.cpp itself (at most n_ctx tokens)."""
    from llama_cpp import Llama

    model = Llama(str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False, n_threads=2)
    out = []
    for text in prompts:
        ids = model.tokenize(text.encode(), add_bos=False, special=True)[:n_ctx]
        model.reset()
        model.eval(ids)
        out.append((ids, np.array(model.scores[: len(ids)], dtype=np.float64)))
    model.close()
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """arch -> (checkpoint, F16 path, Q8_0 path), each built and converted once per module."""
    done: dict[str, tuple] = {}

    def get(arch: str):
        if arch not in done:
            ck = cached_random_checkpoint(arch)
            f16, q8 = convert(ck, out=tmp_path_factory.mktemp("out"), quant="f16,q8_0")
            done[arch] = ck, f16.path, q8.path
        return done[arch]

    return get


def _check(reference, results, min_decided=0.75, max_kld=1e-3, min_top1=1.0):
    kl, top1, decided = compare(reference, results)
    assert decided > min_decided  # random weights, yet most positions have a clear winner
    assert top1 >= min_top1
    assert kl < max_kld
    return kl


def _differs(reference, ids, change) -> float:
    """How much the reference's logits move when ``change(reference)`` switches a feature off."""
    before = reference.logits(ids)
    change(reference)
    reference._cache.clear()
    return float(np.abs(reference.logits(ids) - before).max())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen3", "llama3", "smollm3", "gemma3", "phi3"])
def test_f16_and_q8_logits_match_reference(converted, arch):
    ck, f16, q8 = converted(arch)
    reference = ReferenceModel(ck)
    prompts = [*PROMPTS, LONG]
    _check(reference, _logits(f16, prompts), max_kld=1e-3)
    _check(reference, _logits(q8, prompts[-2:]), max_kld=Q8_MAX_KLD, min_decided=0.6, min_top1=0.95)


@pytest.mark.slow
def test_qwen3_head_dim_and_untied_output(converted):
    import gguf

    ck, f16, _ = converted("qwen3")
    config = json.loads((ck / "config.json").read_text())
    assert config["head_dim"] * config["num_attention_heads"] != config["hidden_size"]
    assert config["tie_word_embeddings"] is False
    reader = gguf.GGUFReader(f16)
    names = {t.name for t in reader.tensors}
    assert {"output.weight", "blk.1.attn_q_norm.weight", "blk.1.attn_k_norm.weight"} <= names
    assert int(reader.fields["qwen3.attention.key_length"].contents()) == 32


@pytest.mark.slow
def test_llama3_rope_scaling_is_written_and_matters(converted):
    import gguf

    ck, f16, _ = converted("llama3")
    reference = ReferenceModel(ck)
    results = _logits(f16, [LONG])
    assert len(results[0][0]) > 64  # past original_max_position_embeddings
    reader = gguf.GGUFReader(f16)
    freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
    # head_dim 16, theta 5e5, original 64: one unscaled, one smoothed and six fully scaled frequencies
    assert freqs[0] == 1 and 1 < freqs[1] < 32 and np.allclose(freqs[2:], 32)
    assert "llama.rope.scaling.type" not in reader.fields  # the factors carry it all; no second scaling
    assert _differs(reference, results[0][0], lambda r: setattr(r, "scaling", None)) > 0.1


@pytest.mark.slow
def test_smollm3_skips_rope_where_the_config_says(converted):
    ck, f16, _ = converted("smollm3")
    reference = ReferenceModel(ck)
    assert reference.use_rope == [True, True, True, False]
    ids = _logits(f16, [LONG])[0][0]
    assert _differs(reference, ids, lambda r: setattr(r, "use_rope", [True] * 4)) > 0.1


@pytest.mark.slow
def test_gemma3_sliding_window_and_norms_matter(converted):
    import gguf

    ck, f16, _ = converted("gemma3")
    reader = gguf.GGUFReader(f16)
    assert list(reader.fields["gemma3.attention.sliding_window_pattern"].contents()) == [True, True, False, True]
    assert int(reader.fields["gemma3.attention.sliding_window"].contents()) == 8
    norm = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight").data
    assert abs(float(np.mean(norm)) - 1) < 0.1  # stored as 1 + w
    reference = ReferenceModel(ck)
    ids = _logits(f16, [LONG])[0][0]
    assert len(ids) > 3 * 8
    assert _differs(reference, ids, lambda r: setattr(r, "window", [None] * 4)) > 0.1
    assert _differs(ReferenceModel(ck), ids, lambda r: setattr(r, "local_theta", r.theta)) > 0.1


@pytest.mark.slow
def test_phi3_long_factors_past_the_original_context(converted):
    ck, f16, q8 = converted("phi3")
    reference = ReferenceModel(ck)
    results = _logits(f16, [VERY_LONG], n_ctx=512)
    ids = results[0][0]
    assert len(ids) > 256
    _check(reference, results)
    # the long factors differ from the short ones, so choosing the wrong set would fail above
    short = ReferenceModel(ck)
    short.scaling = {**short.scaling, "long_factor": short.scaling["short_factor"]}
    assert np.abs(short.logits(ids) - reference.logits(ids)).max() > 0.1


@pytest.mark.parametrize(
    "arch, changes, error, message",
    [
        ("qwen3", {"use_sliding_window": True}, UnsupportedModel, "use_sliding_window=true"),
        ("qwen3", {"attention_bias": True}, UnsupportedModel, "attention_bias=true"),
        ("qwen3", {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 4096},
         UnsupportedModel, "layer_types=.*has no sliding-window layers"),
        ("qwen3", {"hidden_act": "gelu"}, UnsupportedModel, 'hidden_act="gelu"'),
        ("qwen3", {"head_dim": 16}, CorruptFile, "head_dim=16 but model.layers.0.self_attn"),
        ("qwen3", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64}},
         UnsupportedModel, "'llama3' is not supported for Qwen3ForCausalLM"),
        ("qwen3", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, UnsupportedModel,
         "rope scaling type 'dynamic' is not supported"),
        ("llama3", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, UnsupportedModel,
         "needs original_max_position_embeddings"),
        ("llama3", {"mlp_bias": True}, UnsupportedModel, "mlp_bias=true"),
        ("smollm3", {"no_rope_layers": [1, 0, 1, 1]}, UnsupportedModel, "no_rope_layers=\\[1, 0, 1, 1\\]"),
        ("smollm3", {"no_rope_layers": None, "no_rope_layer_interval": 3}, UnsupportedModel,
         "no_rope_layer_interval=3"),
        ("gemma3", {"query_pre_attn_scalar": 64}, UnsupportedModel, "query_pre_attn_scalar=64"),
        ("gemma3", {"attn_logit_softcapping": 50.0}, UnsupportedModel, "attn_logit_softcapping=50.0"),
        ("gemma3", {"hidden_activation": "gelu"}, UnsupportedModel, 'hidden_activation="gelu"'),
        ("gemma3", {"layer_types": ["sliding_attention"]}, UnsupportedModel, "layer_types must list"),
        ("phi3", {"sliding_window": 128}, UnsupportedModel, "sliding_window=128"),
        ("phi3", {"rope_scaling": {"type": "longrope", "long_factor": [1.0] * 5, "short_factor": [1.0] * 12}},
         UnsupportedModel, "long_factor has 5 values but the 24 rotary dimensions need 12"),
        ("phi3", {"rope_scaling": {"type": "longrope", "long_factor": "x", "short_factor": [1.0] * 12}},
         UnsupportedModel, "long_factor must be a list of positive numbers"),
        ("phi3", {"intermediate_size": 128}, CorruptFile, r"intermediate_size=128 \(twice, gate and up fused\) but"),
        ("phi3", {"num_key_value_heads": 4}, CorruptFile,
         "num_attention_heads=4 and num_key_value_heads=4 with head_dim=32 but model.layers.0.self_attn.qkv_proj"),
    ],
)
def test_bad_config_is_refused_naming_the_field(tmp_path, arch, changes, error, message):
    bad = with_config(cached_random_checkpoint(arch), tmp_path / "bad", **changes)
    with pytest.raises(error, match=message) as err:
        convert(bad, out=tmp_path / "out", quant="f16")
    assert err.value.hint
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tied_output_is_read_from_the_weights_when_the_config_leaves_it_out(tmp_path):
    """transformers omits tie_word_embeddings when it equals its base default (true), as Gemma 3's config does."""
    from edgekit.convert.tensor_quant import tensor_types

    config = json.loads((cached_random_checkpoint("gemma3") / "config.json").read_text())
    del config["tie_word_embeddings"]
    ck = with_config(cached_random_checkpoint("gemma3"), tmp_path / "ck", **{})
    (ck / "config.json").write_text(json.dumps(config))
    [f16] = convert(ck, out=tmp_path / "out", quant="f16")
    types = tensor_types(f16.path)
    assert "token_embd.weight" in types and "output.weight" not in types


def test_phi3_su_is_longrope(tmp_path):
    config = json.loads((cached_random_checkpoint("phi3") / "config.json").read_text())
    from edgekit.convert.hparams import read_hparams

    config["rope_scaling"]["type"] = "su"
    assert read_hparams(config).rope_scaling["rope_type"] == "longrope"


PHI3_TEXT = "<|im_start|>user\n  hi<|im_end|>\n <|im_start|> assistant <|endoftext|>  end"


@pytest.mark.slow
@pytest.mark.parametrize("directory, strips, named_phi3", [
    ("Phi3-mini-test", False, False),  # gguf-py names it "Phi3 Mini Test": renamed "Phi 3 Mini Test"
    ("Phi-3-mini-test", False, False),  # named "Phi 3 Mini Test": kept
    ("Phi-3-mini-test", True, True),  # strips like real Phi-3: named "Phi-3 Mini Test", so llama.cpp strips too
    ("Phi3-mini-test", True, True),  # kept
])
def test_phi3_named_checkpoint_tokenizes_as_hf_after_special_tokens(tmp_path, directory, strips, named_phi3):
    """llama.cpp marks special tokens rstrip when general.name says Phi-3 (convert/naming.py). A tiny Phi-3
    converted from a Phi-3-named directory, its tokenizer stripping nothing or exactly what llama.cpp's rule
    strips (every added token but <|endoftext|>): llama.cpp tokenizes the text after a special token as HF."""
    import gguf
    from fixtures_checkpoints import with_edited
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    def rstrip(tokenizer):
        for added in tokenizer["added_tokens"]:
            added["rstrip"] = strips and added["content"] != "<|endoftext|>"

    ck = with_edited(cached_random_checkpoint("phi3"), tmp_path / directory, "tokenizer.json", rstrip)
    [f16] = convert(ck, out=tmp_path / "out", quant="f16")
    name = str(gguf.GGUFReader(str(f16.path)).get_field("general.name").contents())
    assert any(s in name.lower() for s in ("phi3", "phi-3")) == named_phi3, name
    hf = Tokenizer.from_file(str(ck / "tokenizer.json")).encode(PHI3_TEXT, add_special_tokens=False).ids
    llm = Llama(str(f16.path), vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(PHI3_TEXT.encode(), add_bos=False, special=True) == hf
    finally:
        llm.close()
    plain = Tokenizer.from_file(str(cached_random_checkpoint("phi3") / "tokenizer.json"))
    assert (plain.encode(PHI3_TEXT, add_special_tokens=False).ids != hf) == strips  # the flags matter


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    bad = with_config(cached_random_checkpoint("qwen3"), tmp_path / "bad", architectures=["Lfm2ForCausalLM"])
    with pytest.raises(UnsupportedModel, match="Lfm2ForCausalLM is not supported") as err:
        convert(bad, out=tmp_path / "out", quant="f16")
    for name in ("Qwen3ForCausalLM", "SmolLM3ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"):
        assert name in err.value.hint


@pytest.mark.slow
def test_llama3_vocabulary_tokenizes_as_llama_cpp_and_hf_and_ends_turns(converted):
    """Llama 3's own BPE vocabulary (llama-bpe): llama.cpp's test vectors, HF's tokenizer, end-of-generation."""
    import llama_cpp
    from test_checkpoints import llama_cpp_vectors
    from tokenizers import Tokenizer

    from edgekit.samples.assets import llama_bpe_vocab

    ck, f16, _ = converted("llama3")
    tok = llama_cpp.Llama(str(f16), vocab_only=True, verbose=False)
    hf = Tokenizer.from_file(str(ck / "tokenizer.json"))
    vectors = llama_cpp_vectors(llama_bpe_vocab())
    for text, ids in vectors:
        assert tok.tokenize(text.encode(), add_bos=False, special=False) == ids, repr(text)
    chat = "<|start_header_id|>user<|end_header_id|>\n\nHi 12345!<|eot_id|>"
    for text in [*PROMPTS, chat]:
        assert tok.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text, add_special_tokens=False).ids
    vocab = llama_cpp.llama_model_get_vocab(tok.model)
    eot, eom, eos, bos, header = (tok.tokenize(t.encode(), add_bos=False, special=True)[0] for t in
                                  ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|begin_of_text|>",
                                   "<|start_header_id|>"))
    assert all(llama_cpp.llama_vocab_is_eog(vocab, t) for t in (eot, eom, eos))
    assert not any(llama_cpp.llama_vocab_is_eog(vocab, t) for t in (bos, header))
    assert tok.tokenize(b"Hi", add_bos=True, special=False)[0] == bos  # Llama 3 starts with <|begin_of_text|>
    gen = json.loads((ck / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) == {eot, eom, eos}


@pytest.mark.parametrize("arch", ["qwen3", "llama3", "smollm3", "gemma3", "phi3"])
def test_5x_config_reads_as_the_4x_one(arch):
    """transformers 5.x moves rope settings into rope_parameters (per layer type for Gemma 3): same hparams."""
    from edgekit.convert.archs import arch_for, check_config
    from edgekit.convert.hparams import read_hparams
    from edgekit.convert.rope import rope_tensors
    from edgekit.samples.checkpoints import as_5x_config

    old = json.loads((cached_random_checkpoint(arch) / "config.json").read_text())
    new = as_5x_config(old)
    assert "rope_theta" not in new and "rope_parameters" in new
    entry = arch_for(new)
    hp_old, hp_new = read_hparams(old, entry.sliding_window), read_hparams(new, entry.sliding_window)
    check_config(entry, new, hp_new)
    assert {k: v for k, v in vars(hp_new).items() if k not in ("rope_scaling", "dtype")} == \
        {k: v for k, v in vars(hp_old).items() if k not in ("rope_scaling", "dtype")}
    assert hp_new.rope_scaling.get("rope_type") == hp_old.rope_scaling.get("rope_type")
    old_t, new_t = rope_tensors(hp_old), rope_tensors(hp_new)
    assert old_t.keys() == new_t.keys() and all(np.array_equal(old_t[k], new_t[k]) for k in old_t)


@pytest.mark.slow
def test_gemma3_linear_rope_on_global_layers_and_final_softcap(tmp_path):
    """Gemma 3 4B+: linear rope scaling on the global layers only, and a final logit softcap if configured."""
    from edgekit.samples.assets import qwen2_vocab
    from edgekit.samples.checkpoints import random_checkpoint

    ck = random_checkpoint(tmp_path / "gemma3-linear", "gemma3", qwen2_vocab(), dtype="f16",
                           rope_scaling={"rope_type": "linear", "factor": 8.0}, final_logit_softcapping=30.0)
    [f16] = convert(ck, out=tmp_path / "out", quant="f16")
    reference = ReferenceModel(ck)
    results = _logits(f16.path, [LONG])
    _check(reference, results)
    ids = results[0][0]
    assert _differs(reference, ids, lambda r: setattr(r, "scaling", None)) > 0.1
    assert _differs(ReferenceModel(ck), ids, lambda r: setattr(r, "softcap", 0.0)) > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen3", "llama3", "smollm3", "gemma3", "phi3"])
def test_quantization_recipes_give_files_that_load(arch, tmp_path):
    """Q4_K_M and a recipe load and generate; a recipe's rules follow the GGUF names, so on Phi-3 the fused
    attn_qkv takes the recipe's base type (its attn_v rule has no tensor to apply to)."""
    import edgekit
    from edgekit.convert.tensor_quant import tensor_types

    files = convert(cached_random_checkpoint(arch), out=tmp_path, quant="q4_k_m,q4-balanced")
    for f in files:
        with edgekit.load(f.path, n_ctx=256) as m:
            assert len(m.generate("Hello there", max_tokens=4, temperature=0).tokens) == 4
    types = tensor_types(files[1].path)
    assert types["token_embd.weight"] == "Q8_0"
    if arch == "phi3":
        assert types["blk.0.attn_qkv.weight"] == "IQ4_NL" and "blk.0.attn_v.weight" not in types
    else:
        assert types["blk.0.attn_v.weight"] == "Q8_0"
