"""The test checkpoints are what they claim to be, and the numpy reference is right.

The tokenizer rebuilt from a GGUF vocabulary must tokenize exactly as
llama.cpp's own test vectors say; the SmolLM2 checkpoint recovered from its
GGUF, run through the reference, must still answer "Paris".
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from reference import ReferenceModel
from tokenizers import Tokenizer

from edgekit.convert.safetensors import WeightSet, read_f32, read_raw
from edgekit.samples.checkpoints import random_qwen2_checkpoint
from edgekit.samples.smollm2 import hf_name_from_gguf, unpermute_rope_rows

CHATML = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"

# Keys transformers writes for Qwen2ForCausalLM, by major version.
COMMON_KEYS = {
    "architectures", "attention_dropout", "bos_token_id", "eos_token_id", "hidden_act", "hidden_size",
    "initializer_range", "intermediate_size", "max_position_embeddings", "max_window_layers", "model_type",
    "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "sliding_window",
    "tie_word_embeddings", "transformers_version", "use_cache", "use_sliding_window", "vocab_size",
}
KEYS_4X = COMMON_KEYS | {"rope_scaling", "rope_theta", "torch_dtype"}
KEYS_5X = COMMON_KEYS | {"dtype", "layer_types", "pad_token_id", "rope_parameters"}


def llama_cpp_vectors(vocab_gguf) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors: inputs split by a marker line, one line of ids per input."""
    raw = open(f"{vocab_gguf}.inp", encoding="utf-8", newline="").read()
    inputs = raw.split("\n__ggml_vocab_test__\n")
    if inputs and inputs[-1] == "":
        inputs.pop()
    lines = open(f"{vocab_gguf}.out", encoding="utf-8").read().split("\n")
    outputs = [[int(t) for t in line.split()] for line in lines[: len(inputs)]]
    assert len(inputs) == len(outputs) > 40
    return list(zip(inputs, outputs, strict=True))


def test_qwen2_tokenizer_reproduces_llama_cpp_vectors(tiny_qwen2_dir, qwen2_vocab_gguf):
    tok = Tokenizer.from_file(str(tiny_qwen2_dir / "tokenizer.json"))
    for text, ids in llama_cpp_vectors(qwen2_vocab_gguf):
        assert tok.encode(text, add_special_tokens=False).ids == ids, repr(text)
    # Specials are single tokens; the [PAD] filler ids are not part of the tokenizer.
    assert tok.encode("<|im_start|>user<|im_end|>", add_special_tokens=False).ids == [151644, 872, 151645]
    assert tok.get_vocab_size() == 151646


def test_smollm2_tokenizer_matches_llama_cpp(smollm2_hf_dir, smollm2_gguf, qwen2_vocab_gguf):
    from llama_cpp import Llama

    tok = Tokenizer.from_file(str(smollm2_hf_dir / "tokenizer.json"))
    vocab = Llama(str(smollm2_gguf), vocab_only=True, verbose=False)
    texts = [text for text, _ in llama_cpp_vectors(qwen2_vocab_gguf)] + [CHATML, "x = 3.14159 * 1234567;\n\n\ty"]
    for text in texts:
        want = vocab.tokenize(text.encode(), add_bos=False, special=True)
        assert tok.encode(text, add_special_tokens=False).ids == want, repr(text)


def test_tokenizer_config(tiny_qwen2_dir, qwen2_vocab_gguf):
    cfg = json.loads((tiny_qwen2_dir / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|endoftext|>"
    assert cfg["add_bos_token"] is False
    assert "<|im_start|>" in cfg["chat_template"]
    assert cfg["added_tokens_decoder"]["151645"]["content"] == "<|im_end|>"
    assert cfg["added_tokens_decoder"]["151645"]["special"] is True
    gen = json.loads((tiny_qwen2_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643]


def test_tiny_checkpoint_4x(tiny_qwen2_dir):
    names = {p.name for p in tiny_qwen2_dir.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors"} <= names
    cfg = json.loads((tiny_qwen2_dir / "config.json").read_text())
    assert set(cfg) == KEYS_4X
    assert cfg["torch_dtype"] == "bfloat16" and cfg["rope_theta"] == 1e6 and cfg["rope_scaling"] is None
    assert cfg["tie_word_embeddings"] is True and cfg["vocab_size"] == 151936
    ws = WeightSet([tiny_qwen2_dir / "model.safetensors"])
    assert "lm_head.weight" not in ws
    assert ws["model.embed_tokens.weight"].shape == (151936, 64)
    assert ws["model.layers.1.self_attn.k_proj.weight"].shape == (32, 64)  # 2 kv heads x 16
    assert {ref.dtype for ref in ws.tensors.values()} == {"BF16"}
    assert len(ws.names()) == 1 + 2 * 12 + 1
    for bias in ("q_proj", "k_proj", "v_proj"):
        assert np.abs(read_f32(ws[f"model.layers.0.self_attn.{bias}.bias"])).min() > 0
    norm = read_f32(ws["model.layers.0.post_attention_layernorm.weight"])
    assert 0.02 < np.std(norm) < 0.5 and abs(float(np.mean(norm)) - 1) < 0.1


@pytest.mark.parametrize("style", ["4.x", "5.x"])
def test_yarn_config(tmp_path, qwen2_vocab_gguf, style):
    ck = random_qwen2_checkpoint(tmp_path / "m", qwen2_vocab_gguf, layers=1, config_style=style, yarn=4.0,
                                 rope_theta=5e5, max_position_embeddings=4096)
    cfg = json.loads((ck / "config.json").read_text())
    if style == "4.x":
        assert set(cfg) == KEYS_4X
        rope = cfg["rope_scaling"]
        assert rope["type"] == "yarn" and cfg["rope_theta"] == 5e5
    else:
        assert set(cfg) == KEYS_5X
        rope = cfg["rope_parameters"]
        assert rope["rope_theta"] == 5e5
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0
    assert rope["original_max_position_embeddings"] == 4096


@pytest.mark.slow
def test_sharded_5x_checkpoint_same_values(tmp_path, tiny_qwen2_dir, qwen2_vocab_gguf):
    ck = random_qwen2_checkpoint(tmp_path / "m", qwen2_vocab_gguf, config_style="5.x", shards=3)
    cfg = json.loads((ck / "config.json").read_text())
    assert set(cfg) == KEYS_5X
    assert cfg["dtype"] == "bfloat16" and cfg["rope_parameters"] == {"rope_theta": 1e6, "rope_type": "default"}
    assert not (ck / "model.safetensors").exists()
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    sharded = WeightSet([ck / f for f in files])
    assert index["metadata"]["total_size"] == sharded.nbytes
    for name, file in index["weight_map"].items():
        assert sharded[name].file.name == file
    # Values come from (seed, name), so sharding changes nothing.
    single = WeightSet([tiny_qwen2_dir / "model.safetensors"])
    assert sorted(single.names()) == sorted(sharded.names())
    for name in single.names():
        assert np.array_equal(read_raw(single[name]), read_raw(sharded[name])), name
    # Rebuilding unsharded removes the stale shards.
    random_qwen2_checkpoint(ck, qwen2_vocab_gguf, layers=1)
    assert sorted(p.name for p in ck.glob("model*")) == ["model.safetensors"]


def test_untied_f16_checkpoint(tmp_path, qwen2_vocab_gguf):
    ck = random_qwen2_checkpoint(tmp_path / "m", qwen2_vocab_gguf, layers=1, dtype="f16", tied=False,
                                 vocab_size=151646)
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["torch_dtype"] == "float16"
    ws = WeightSet([ck / "model.safetensors"])
    assert ws["lm_head.weight"].shape == (151646, 64) and ws["lm_head.weight"].dtype == "F16"
    logits = ReferenceModel(ck).logits([9707, 1879])
    assert logits.shape == (2, 151646)


def test_reference_is_causal_and_not_degenerate(tiny_qwen2_dir):
    model = ReferenceModel(tiny_qwen2_dir)
    ids = [9707, 11, 1879, 0, 358, 1079, 264, 1273, 315, 279]
    full = model.logits(ids)
    short = model.logits(ids[:4])
    assert full.dtype == np.float32 and full.shape == (10, 151936)
    np.testing.assert_allclose(short, full[:4], rtol=0, atol=1e-4)
    # Peaky enough to compare top-1, and each position's prediction differs.
    top2 = np.sort(full, axis=-1)[:, -2:]
    assert np.median(top2[:, 1] - top2[:, 0]) > 0.05
    assert len(set(full.argmax(-1).tolist())) >= 5
    # Position matters (RoPE + attention): same token after a different prefix changes its logits.
    assert np.abs(model.logits([1879, 0])[1] - model.logits([0])[0]).max() > 0.1


def test_unpermute_inverts_llama_cpp_permute():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3 * 8, 5)).astype(np.float32)
    # convert_hf_to_gguf.py's LlamaModel.permute, written out for 3 heads of dim 8.
    permuted = w.reshape(3, 2, 4, 5).swapaxes(1, 2).reshape(w.shape)
    assert not np.array_equal(permuted, w)
    assert np.array_equal(unpermute_rope_rows(permuted, 3), w)


def test_gguf_names_map_to_hf():
    assert hf_name_from_gguf("blk.7.attn_output.weight") == "model.layers.7.self_attn.o_proj.weight"
    assert hf_name_from_gguf("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_name_from_gguf("token_embd.weight") == "model.embed_tokens.weight"
    with pytest.raises(ValueError):
        hf_name_from_gguf("blk.0.attn_qkv.weight")


@pytest.mark.slow
def test_smollm2_checkpoint_answers_paris(smollm2_hf_dir):
    cfg = json.loads((smollm2_hf_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["intermediate_size"]) == (30, 576, 9, 3, 1536)
    assert cfg["tie_word_embeddings"] is True and cfg["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5
    tok = Tokenizer.from_file(str(smollm2_hf_dir / "tokenizer.json"))
    ids = tok.encode(CHATML, add_special_tokens=False).ids
    assert ids[0] == 1 and ids.count(2) == 1  # <|im_start|>, <|im_end|>
    out = ReferenceModel(smollm2_hf_dir).greedy(ids, 6, stop={2})
    assert "Paris" in tok.decode(out)


def test_cached_checkpoint_is_built_once_and_never_half_written(tmp_path, monkeypatch):
    from edgekit.samples import assets
    from edgekit.samples.checkpoints import cached_checkpoint

    monkeypatch.setattr(assets, "CACHE", tmp_path)
    calls = []

    def failing(d):
        (d / "config.json").write_text("{}")
        raise KeyboardInterrupt

    def build(d):
        calls.append(d)
        (d / "config.json").write_text("{}")
        return d

    with pytest.raises(KeyboardInterrupt):
        cached_checkpoint("m", failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.lock"]  # nothing half-written is left
    out = cached_checkpoint("m", build)
    assert (out / ".done").exists() and (out / "config.json").read_text() == "{}"
    assert cached_checkpoint("m", build) == out and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.lock", out.name])
