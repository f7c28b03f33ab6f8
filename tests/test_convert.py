"""The converter: types, metadata, config forms, shards, and what it refuses."""

from __future__ import annotations

import json
import shutil
import struct

import gguf
import numpy as np
import pytest

from edgekit.convert import convert
from edgekit.errors import (
    CorruptFile,
    DiskFull,
    MissingFiles,
    OutputExists,
    QuantizeError,
    UnsupportedModel,
)
from edgekit.gguf_meta import read_header
from edgekit.samples.checkpoints import random_qwen2_checkpoint


def kv(path, key):
    return read_header(path).metadata[key]


def tensor_types(path) -> dict[str, str]:
    return {t.name: gguf.GGMLQuantizationType(t.type).name for t in read_header(path).tensors}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, qwen2_vocab_gguf):
    return random_qwen2_checkpoint(tmp_path_factory.mktemp("ck") / "tiny-qwen2", qwen2_vocab_gguf)


@pytest.fixture(scope="module")
def all_types(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    types = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]
    return convert(ckpt, out=out, quant=",".join(types)), out


@pytest.mark.slow
def test_every_type_is_written_with_its_file_type(all_types):
    files, out = all_types
    assert [f.type for f in files] == ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"]
    for f in files:
        assert f.path.is_file() and f.path.stat().st_size == f.size
        assert f.path.name.endswith(f"-{f.type}.gguf")
        ftype = kv(f.path, "general.file_type")
        assert ftype == gguf.LlamaFileType[{"F32": "ALL_F32"}.get(f.type, "MOSTLY_" + f.type)].value
    # no temporary files are left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(f.path.name for f in files)


@pytest.mark.slow
def test_float_types_store_what_they_say(all_types):
    files, _ = all_types
    by_type = {f.type: f.path for f in files}
    assert tensor_types(by_type["F16"])["blk.0.attn_q.weight"] == "F16"
    assert tensor_types(by_type["BF16"])["blk.0.attn_q.weight"] == "BF16"
    assert tensor_types(by_type["F32"])["blk.0.attn_q.weight"] == "F32"
    # norms and biases stay F32, like llama.cpp's converter does
    assert tensor_types(by_type["Q4_0"])["blk.0.attn_norm.weight"] == "F32"
    assert tensor_types(by_type["Q4_0"])["blk.0.attn_q.bias"] == "F32"
    assert tensor_types(by_type["Q8_0"])["blk.0.ffn_down.weight"] == "Q8_0"


@pytest.mark.slow
def test_quantized_file_is_exactly_what_llama_quantize_makes(all_types, tmp_path):
    import llama_cpp

    files, _ = all_types
    by_type = {f.type: f.path for f in files}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    ref = tmp_path / "ref.gguf"
    # our bf16 source's base type is BF16: quantize that with llama.cpp directly
    assert llama_cpp.llama_model_quantize(str(by_type["BF16"]).encode(), str(ref).encode(), params) == 0
    assert ref.read_bytes() == by_type["Q4_K_M"].read_bytes()


@pytest.mark.slow
def test_checkpoint_is_read_once_for_many_types(ckpt, tmp_path, monkeypatch):
    import edgekit.convert.pipeline as pipeline

    calls = []
    real = pipeline.write_gguf
    # one pass that writes tensors (the vocabulary check writes a GGUF without any)
    monkeypatch.setattr(pipeline, "write_gguf", lambda *a, **k: (calls.append(1) if a[2] else None,
                                                                   real(*a, **k))[1])
    files = convert(ckpt, out=tmp_path, quant="q4_0,q8_0,q4_k_m")
    assert len(files) == 3 and len(calls) == 1


@pytest.mark.slow
def test_metadata_and_hparams(all_types, ckpt):
    files, _ = all_types
    path = files[1].path
    config = json.loads((ckpt / "config.json").read_text())
    assert kv(path, "general.architecture") == "qwen2"
    assert kv(path, "general.name")
    assert kv(path, "general.size_label")
    assert kv(path, "edgekit.converter").startswith("edgekit ")
    assert kv(path, "qwen2.context_length") == 32768
    assert kv(path, "qwen2.block_count") == config["num_hidden_layers"]
    assert kv(path, "qwen2.attention.head_count_kv") == config["num_key_value_heads"]
    assert kv(path, "qwen2.rope.freq_base") == pytest.approx(1e6)
    assert kv(path, "tokenizer.ggml.pre") == "qwen2"
    tokens = kv(path, "tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"]
    assert tokens[kv(path, "tokenizer.ggml.eot_token_id")] == "<|im_end|>"
    assert tokens[kv(path, "tokenizer.ggml.eos_token_id")] == "<|endoftext|>"
    assert "<|im_start|>" in kv(path, "tokenizer.chat_template")
    assert "output.weight" not in tensor_types(path)  # tied embeddings


@pytest.mark.slow
def test_name_license_and_default_filename(qwen2_vocab_gguf, tmp_path):
    ck = random_qwen2_checkpoint(tmp_path / "SmolThing-Chat", qwen2_vocab_gguf)
    (ck / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A model\n")
    [f] = convert(ck, out=tmp_path / "o", quant="q8_0")
    assert kv(f.path, "general.license") == "apache-2.0"
    assert kv(f.path, "general.basename") == "SmolThing"
    assert kv(f.path, "general.finetune") == "Chat"
    assert f.path.name == f"SmolThing-{kv(f.path, 'general.size_label')}-Q8_0.gguf"


@pytest.mark.slow
@pytest.mark.parametrize("style", ["4.x", "5.x"])
def test_both_config_forms_and_yarn(qwen2_vocab_gguf, tmp_path, style):
    ck = random_qwen2_checkpoint(tmp_path / "m", qwen2_vocab_gguf, config_style=style, yarn=4.0, rope_theta=5e5)
    [f] = convert(ck, out=tmp_path, quant="f16")
    assert kv(f.path, "qwen2.rope.freq_base") == pytest.approx(5e5)
    assert kv(f.path, "qwen2.rope.scaling.type") == "yarn"
    assert kv(f.path, "qwen2.rope.scaling.factor") == pytest.approx(4.0)
    assert kv(f.path, "qwen2.rope.scaling.original_context_length") > 0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_sharded_untied_and_other_dtypes(qwen2_vocab_gguf, tmp_path, dtype):
    ck = random_qwen2_checkpoint(tmp_path / "m", qwen2_vocab_gguf, dtype=dtype, tied=False, shards=3)
    assert (ck / "model.safetensors.index.json").is_file()
    [f] = convert(ck, out=tmp_path, quant="f32")
    types = tensor_types(f.path)
    assert "output.weight" in types
    # values survive exactly in F32 whatever the source float type
    from edgekit.convert.safetensors import WeightSet, read_f32

    weights = WeightSet(sorted(ck.glob("*.safetensors")))
    header = read_header(f.path)
    info = next(t for t in header.tensors if t.name == "blk.1.ffn_down.weight")
    data = np.fromfile(f.path, np.float32, info.n_elements, offset=header.data_offset + info.offset)
    expected = read_f32(weights["model.layers.1.mlp.down_proj.weight"])
    np.testing.assert_array_equal(data.reshape(expected.shape), expected)


# --- refusals -------------------------------------------------------------------------------------------


def test_unsupported_architecture_lists_supported(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    config = json.loads((bad / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match="MambaForCausalLM") as err:
        convert(bad, out=tmp_path)
    assert "Qwen2ForCausalLM" in err.value.hint and "LlamaForCausalLM" in err.value.hint


def test_pickle_weights_are_never_loaded(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(UnsupportedModel, match="never unpickles"):
        convert(bad, out=tmp_path)


def test_missing_tokenizer_is_named(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "tokenizer.json").unlink()
    with pytest.raises(MissingFiles, match="tokenizer.json"):
        convert(bad, out=tmp_path / "o")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_unknown_type_lists_known_ones(ckpt, tmp_path):
    with pytest.raises(QuantizeError, match="q9_9") as err:
        convert(ckpt, out=tmp_path, quant="q9_9")
    assert "Q4_K_M" in err.value.hint


def _corrupt_copy(ckpt, tmp_path, mutate):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    path = bad / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    data = mutate(data, header, n)
    path.write_bytes(bytes(data))
    return bad


def _with_header(data, header, n):
    blob = json.dumps(header).encode()
    blob += b" " * (n - len(blob)) if len(blob) <= n else b""
    return bytearray(struct.pack("<Q", len(blob))) + blob + data[8 + n :]


@pytest.mark.parametrize(
    "case, mutate, pattern",
    [
        ("header length", lambda d, h, n: bytearray(struct.pack("<Q", 10**12)) + d[8:], "header length"),
        ("truncated", lambda d, h, n: d[: len(d) // 2], "outside|truncated"),
        (
            "offsets",
            lambda d, h, n: _with_header(
                d, {**h, "model.norm.weight": {**h["model.norm.weight"], "data_offsets": [0, 10**10]}}, n
            ),
            "model.norm.weight",
        ),
        (
            "shape",
            lambda d, h, n: _with_header(
                d, {**h, "model.norm.weight": {**h["model.norm.weight"], "shape": [3]}}, n
            ),
            "model.norm.weight.*do not match",
        ),
        (
            "dtype",
            lambda d, h, n: _with_header(
                d, {**h, "model.norm.weight": {**h["model.norm.weight"], "dtype": "F32"}}, n
            ),
            "model.norm.weight.*do not match",
        ),
    ],
)
def test_corrupt_safetensors_names_file_and_tensor(ckpt, tmp_path, case, mutate, pattern):
    bad = _corrupt_copy(ckpt, tmp_path, mutate)
    with pytest.raises(CorruptFile, match=pattern) as err:
        convert(bad, out=tmp_path / "o", quant="f16")
    assert "model.safetensors" in err.value.message
    assert list((tmp_path / "o").glob("*")) == []  # nothing, not even a hidden partial file


@pytest.mark.slow
def test_existing_output_needs_force(ckpt, tmp_path):
    [f] = convert(ckpt, out=tmp_path, quant="q8_0")
    with pytest.raises(OutputExists):
        convert(ckpt, out=tmp_path, quant="q8_0")
    [again] = convert(ckpt, out=tmp_path, quant="q8_0", force=True)
    assert again.path == f.path


@pytest.mark.slow
def test_full_disk_is_refused_before_writing(ckpt, tmp_path, monkeypatch):
    import edgekit.atomic as atomic

    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskFull, match="free"):
        convert(ckpt, out=tmp_path, quant="f16")
    assert list(tmp_path.iterdir()) == []


def test_disk_filling_up_mid_write_leaves_nothing(ckpt, tmp_path, monkeypatch):
    import errno

    import edgekit.convert.writer as writer

    real = writer._convert_chunk

    def failing(plan, rows):
        if plan.name == "blk.1.ffn_up.weight":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(plan, rows)

    monkeypatch.setattr(writer, "_convert_chunk", failing)
    with pytest.raises(DiskFull):
        convert(ckpt, out=tmp_path, quant="f16,q4_0")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_leaves_no_partial_file(ckpt, tmp_path):
    def interrupt(stage, done, total):
        if stage == "convert" and done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(ckpt, out=tmp_path, quant="q8_0", progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_pre_tokenizer_is_read_from_its_definition_in_either_spelling():
    from edgekit.convert.vocab import BYTE_LEVEL_REGEX, detect_pre

    def tok(*pre):
        return {"model": {"type": "BPE"}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": list(pre)}}

    hf_style = tok({"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True})
    split_style = tok(
        {"type": "Split", "pattern": {"Regex": r"\p{N}"}, "behavior": "Isolated", "invert": False},
        {"type": "Split", "pattern": {"Regex": BYTE_LEVEL_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
    )
    assert detect_pre(hf_style) == detect_pre(split_style) == "smollm"
    odd = tok({"type": "Split", "pattern": {"Regex": r"\w+"}, "behavior": "Isolated", "invert": False})
    with pytest.raises(UnsupportedModel, match="no llama.cpp equivalent"):
        detect_pre(odd)


def test_bulk_packed_metadata_is_gguf_pys_byte_for_byte(tmp_path):
    """The writer packs big arrays in bulk, and once per conversion (the vocabulary check's GGUF, then the
    model's): each file is byte for byte what gguf-py's own writer makes of the same metadata."""
    from edgekit.convert.writer import write_gguf

    n = 5000  # past the bulk threshold
    tokens = [f"t{i}" if i % 3 else f"\u00fc\u2581{i}\U0001f999" for i in range(n)]
    types, scores = [1 + i % 6 for i in range(n)], [-i / 3 for i in range(n)]
    merges = [f"t{i} t{i + 1}" for i in range(n)]

    def setup(writer):
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_scores(scores)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(1)

    ref = gguf.GGUFWriter(tmp_path / "ref.gguf", "llama")
    setup(ref)
    ref.write_header_to_file()
    ref.write_kv_data_to_file()
    ref.write_ti_data_to_file()
    ref.close()
    packed: dict = {}
    for name in ("check.gguf", "model.gguf"):
        write_gguf(tmp_path / name, setup, [], "llama", packed=packed)
        assert (tmp_path / name).read_bytes() == (tmp_path / "ref.gguf").read_bytes(), name
    assert len(packed) == 4  # the four arrays, packed once


def test_fast_bf16_to_f16_matches_numpy_for_every_bit_pattern():
    from edgekit.convert.safetensors import bf16_to_f16, bf16_to_f32

    words = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    with np.errstate(over="ignore"):
        expected = bf16_to_f32(words).astype(np.float16)
    got = bf16_to_f16(words)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint16), expected[~nan].view(np.uint16))
    rows = bf16_to_f16(words.reshape(256, 256))  # row chunks of a tensor are 2-D
    assert rows.shape == (256, 256) and np.array_equal(rows.reshape(-1).view(np.uint16), got.view(np.uint16))


@pytest.mark.slow
def test_chat_template_from_jinja_file(ckpt, tmp_path):
    src = tmp_path / "jinja"
    shutil.copytree(ckpt, src)
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    (src / "chat_template.jinja").write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    [f] = convert(src, out=tmp_path / "o", quant="q8_0")
    assert kv(f.path, "tokenizer.chat_template").startswith("{% for m in messages %}")


@pytest.mark.slow
def test_recipes_and_auto_through_convert(ckpt, tmp_path):
    """The tiny checkpoint (2 layers, rows of 64 or 128: no K-quant fits) through two recipes, types by hand."""
    files = convert(ckpt, out=tmp_path, quant="auto,q4-fast")
    assert [f.type for f in files] == ["Q4-BEST", "Q4-FAST"]  # auto is q4-best at the default KLD budget
    roles = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    q4_best = {"token_embd.weight": "Q8_0",
               **{f"blk.1.{r}.weight": "Q8_0" for r in roles},  # the last layer (of 2) is "@last"
               "blk.0.attn_q.weight": "Q5_0", "blk.0.attn_k.weight": "Q8_0", "blk.0.attn_v.weight": "Q8_0",
               "blk.0.attn_output.weight": "Q5_0", "blk.0.ffn_gate.weight": "IQ4_NL", "blk.0.ffn_up.weight": "Q5_0",
               "blk.0.ffn_down.weight": "IQ4_NL"}  # Q4_K needs rows of 256: its fallback
    q4_fast = {"token_embd.weight": "Q8_0", **{f"blk.{i}.{r}.weight": "IQ4_NL" for i in (0, 1) for r in roles}}
    for f, want in zip(files, (q4_best, q4_fast), strict=True):
        assert f.path.name.endswith(f"-{f.type}.gguf")
        got = tensor_types(f.path)
        assert {n: got[n] for n in want} == want
        assert {t for n, t in got.items() if n not in want} == {"F32"}  # norms and biases
