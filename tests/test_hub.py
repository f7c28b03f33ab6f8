"""The converter's source resolution against a local server that speaks the Hub's file endpoints.

Everything goes through the real huggingface_hub client, pointed at tests/hub_server.py
with HF_ENDPOINT and an isolated HF_HOME.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_server import FakeHub  # tests/ is on sys.path (pytest rootdir-style import)

from edgekit.convert.source import NEEDED_PATTERNS, Source, parse_repo_id, resolve_source
from edgekit.errors import HubUnreachable, MissingFiles, SourceError, UnsupportedModel

HF_VARS = ("HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
           "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_ETAG_TIMEOUT")

# "Fails fast" means no retry loop: huggingface_hub's retries with backoff take minutes. A bound this
# generous separates the two on any CI machine, however slow or loaded.
RETRYING_FOR_MINUTES = 60


def _tiny_checkpoint(out: Path) -> dict[str, bytes]:
    """A tiny but convertible Llama checkpoint: trained byte-level BPE, random f16 weights."""
    import numpy as np
    from safetensors.numpy import save
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300,
                            min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save(str(out / "tokenizer.json"))
    vocab, eos = tok.get_vocab_size(), tok.token_to_id("<|endoftext|>")
    hidden, inter, heads, kv = 64, 128, 4, 2
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": 1, "num_attention_heads": heads,
              "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 256,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
              "torch_dtype": "float16", "bos_token_id": eos, "eos_token_id": eos}
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    kv_dim = kv * hidden // heads
    p = "model.layers.0."
    tensors = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": np.ones(hidden, np.float16),
               p + "input_layernorm.weight": np.ones(hidden, np.float16),
               p + "post_attention_layernorm.weight": np.ones(hidden, np.float16),
               p + "self_attn.q_proj.weight": w(hidden, hidden), p + "self_attn.k_proj.weight": w(kv_dim, hidden),
               p + "self_attn.v_proj.weight": w(kv_dim, hidden), p + "self_attn.o_proj.weight": w(hidden, hidden),
               p + "mlp.gate_proj.weight": w(inter, hidden), p + "mlp.up_proj.weight": w(inter, hidden),
               p + "mlp.down_proj.weight": w(hidden, inter)}
    return {
        "config.json": json.dumps(config).encode(),
        "tokenizer.json": (out / "tokenizer.json").read_bytes(),
        "tokenizer_config.json": json.dumps({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}).encode(),
        "model.safetensors": save(tensors),
        "README.md": b"---\nlicense: apache-2.0\n---\n# tiny\n",
        "LICENSE": b"Apache License 2.0\n",
    }


@pytest.fixture(scope="module")
def ckpt_files(tmp_path_factory) -> dict[str, bytes]:
    return _tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"))


# Files a real repo carries that the converter must not fetch.
NOT_NEEDED = {
    "pytorch_model.bin": b"\x80\x04 pickle, must never be fetched",
    "training_args.bin": b"\x80\x04 pickle",
    "original/consolidated.00.pth": b"\x80\x04 pickle",
    "onnx/model.safetensors": b"not needed either",
    "big-unrelated.gguf": b"\0" * 300_000,
    ".gitattributes": b"*.safetensors filter=lfs\n",
}


@pytest.fixture
def hub(ckpt_files, tmp_path, monkeypatch):
    """A fake Hub with owner/name (+ a v1 tag), an isolated HF cache, and HF_ENDPOINT pointing at it."""
    for var in HF_VARS:
        monkeypatch.delenv(var, raising=False)
    with FakeHub(tmp_path / "hub-data") as server:
        server.main_commit = server.add_repo("owner/name", {**ckpt_files, **NOT_NEEDED})
        v1_config = json.loads(ckpt_files["config.json"]) | {"_v1": True}
        server.v1_commit = server.add_repo("owner/name", {**ckpt_files, "config.json": json.dumps(v1_config)},
                                           revision="v1")
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "3")
        yield server


EXPECTED = {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors", "README.md", "LICENSE"}


def _files(source: Source) -> set[str]:
    return {p.relative_to(source.path).as_posix() for p in source.path.rglob("*") if p.is_file()}


# -- downloading ----------------------------------------------------------------------------------


def test_downloads_only_the_needed_files(hub, ckpt_files, tmp_path):
    source = resolve_source("owner/name")

    assert source.repo_id == "owner/name"
    assert source.url == f"{hub.url}/owner/name"
    assert source.commit == hub.main_commit
    assert source.path.is_relative_to(tmp_path / "hf-home" / "hub")  # HF_HOME read at call time
    assert _files(source) == EXPECTED
    for name in EXPECTED:
        assert (source.path / name).read_bytes() == ckpt_files[name]
    assert sorted(hub.downloaded()) == sorted(EXPECTED)
    # Pickles are not even asked about.
    assert not [r for r in hub.requests if ".bin" in r.path or ".pth" in r.path]


def test_hf_hub_cache_wins_over_hf_home(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    source = resolve_source("owner/name")
    assert source.path.is_relative_to(tmp_path / "elsewhere")
    assert not (tmp_path / "hf-home").exists()


def test_revision_tag_and_commit_are_honoured(hub):
    tagged = resolve_source("owner/name@v1")
    assert tagged.revision == "v1" and tagged.commit == hub.v1_commit
    assert json.loads((tagged.path / "config.json").read_text())["_v1"] is True

    pinned = resolve_source(f"owner/name@{hub.main_commit}")
    assert pinned.commit == hub.main_commit
    assert "_v1" not in json.loads((pinned.path / "config.json").read_text())


def test_progress_reports_downloaded_bytes(hub, ckpt_files):
    events: list[tuple[str, int, int]] = []
    resolve_source("owner/name", progress=lambda *event: events.append(event))
    assert events and {stage for stage, _, _ in events} == {"download"}
    total = sum(len(ckpt_files[name]) for name in EXPECTED)
    assert events[-1] == ("download", total, total)
    assert all(t == total and 0 <= done <= t for _, done, t in events)  # the total is known from the start
    dones = [done for _, done, _ in events]
    assert dones == sorted(dones)

    events.clear()
    resolve_source("owner/name", progress=lambda *event: events.append(event))
    assert events == []  # all cached: nothing to show


def test_hf_token_is_sent_to_the_hub_but_not_to_the_cdn(hub, ckpt_files, monkeypatch):
    hub.add_repo("owner/private", ckpt_files, private_token="hf_secret")
    with pytest.raises(SourceError, match="not found") as err:
        resolve_source("owner/private")
    assert "HF_TOKEN" in err.value.hint

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.clear()
    source = resolve_source("owner/private")
    assert (source.path / "model.safetensors").read_bytes() == ckpt_files["model.safetensors"]
    hub_side = [r for r in hub.requests if not r.path.startswith("/cdn/")]
    cdn_side = [r for r in hub.requests if r.path.startswith("/cdn/")]
    assert hub_side and all(r.headers.get("authorization") == "Bearer hf_secret" for r in hub_side)
    assert cdn_side and all("authorization" not in r.headers for r in cdn_side)  # signed URL, no token leak


def test_gated_and_rejected_tokens_say_what_to_do(hub, ckpt_files, monkeypatch):
    hub.add_repo("owner/gated", ckpt_files, private_token="hf_member", gated=True)
    with pytest.raises(SourceError, match="gated repo and no Hugging Face token is set") as err:
        resolve_source("owner/gated")
    assert "HF_TOKEN" in err.value.hint and f"{hub.url}/owner/gated" in err.value.hint

    monkeypatch.setenv("HF_TOKEN", "hf_outsider")
    with pytest.raises(SourceError, match="gated repo and the token in HF_TOKEN has no access"):
        resolve_source("owner/gated")

    monkeypatch.setenv("HF_TOKEN", "not-a-token")
    with pytest.raises(SourceError, match="rejected the token") as err:
        resolve_source("owner/name")
    assert "HF_TOKEN" in err.value.hint


def test_missing_repo_and_revision_are_source_errors(hub):
    with pytest.raises(SourceError, match="owner/absent was not found on the Hugging Face Hub"):
        resolve_source("owner/absent")
    with pytest.raises(SourceError, match="revision 'v9' was not found in owner/name"):
        resolve_source("owner/name@v9")


def test_bin_only_repo_is_refused_without_downloading(hub, ckpt_files):
    hub.add_repo("owner/pickled", {"config.json": ckpt_files["config.json"],
                                   "tokenizer.json": ckpt_files["tokenizer.json"],
                                   "pytorch_model.bin": b"\x80\x04 pickle"})
    hub.clear()
    with pytest.raises(UnsupportedModel, match="only PyTorch .bin weights .*never unpickles") as err:
        resolve_source("owner/pickled")
    assert "safetensors" in err.value.hint
    assert hub.downloaded() == []


def test_repo_with_nothing_to_convert(hub):
    hub.add_repo("owner/gguf-only", {"model-Q4_K_M.gguf": b"GGUF", "README.md": b"# gguf"})
    hub.clear()
    with pytest.raises(MissingFiles, match=r"has no config.json and no \*.safetensors weights") as err:
        resolve_source("owner/gguf-only")
    assert "model-Q4_K_M.gguf" in err.value.hint
    assert hub.downloaded() == []


# -- offline and unreachable ----------------------------------------------------------------------


def test_offline_mode_uses_the_cache(hub, monkeypatch):
    first = resolve_source("owner/name")
    tagged = resolve_source("owner/name@v1")
    hub.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported
    assert resolve_source("owner/name") == first
    assert resolve_source("owner/name@v1").commit == tagged.commit
    assert hub.requests == []

    with pytest.raises(HubUnreachable, match="not in the Hugging Face cache .* HF_HUB_OFFLINE is set"):
        resolve_source("owner/other")
    assert hub.requests == []


def test_unreachable_hub_falls_back_to_the_cache(hub):
    first = resolve_source("owner/name")
    hub.stop()
    assert resolve_source("owner/name") == first


def test_unreachable_hub_and_not_cached_fails_fast_with_alternatives(hub):
    hub.stop()
    start = time.monotonic()
    with pytest.raises(HubUnreachable) as err:
        resolve_source("owner/name")
    assert time.monotonic() - start < RETRYING_FOR_MINUTES
    assert err.value.message == "can't reach the Hugging Face Hub for owner/name (connection refused)"
    assert "local checkpoint directory" in err.value.hint and "HF_HUB_OFFLINE=1" in err.value.hint


@pytest.mark.slow
def test_hub_that_never_answers_times_out_fast(hub, monkeypatch):
    # A socket that accepts connections (backlog) but never answers: a hung Hub or proxy.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
        start = time.monotonic()
        with pytest.raises(HubUnreachable, match=r"for owner/name \(no answer within 1 s\)"):
            resolve_source("owner/name")
        assert time.monotonic() - start < RETRYING_FOR_MINUTES  # the message pins the 1 s timeout itself


def test_hub_server_errors_count_as_unreachable(hub):
    hub.fail_status = 503
    with pytest.raises(HubUnreachable, match="HTTP 503"):
        resolve_source("owner/name")


# -- interrupted downloads ------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def test_interrupted_download_is_never_taken_as_complete(hub, ckpt_files, monkeypatch, tmp_path):
    def interrupt(stage: str, done: int, total: int) -> None:
        if done > 0:  # bytes have arrived, none written yet: stop here, like Ctrl-C
            raise _Interrupt

    with pytest.raises(_Interrupt):
        resolve_source("owner/name", progress=interrupt)
    cache = tmp_path / "hf-home" / "hub"
    assert not list(cache.rglob("*.incomplete"))  # no half-written blob left behind

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachable, match="cached copy of owner/name is incomplete"):
        resolve_source("owner/name")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    source = resolve_source("owner/name")  # finishes the download
    assert _files(source) == EXPECTED
    assert (source.path / "model.safetensors").read_bytes() == ckpt_files["model.safetensors"]


@pytest.mark.slow
def test_dropped_connection_is_retried_and_the_file_is_intact(hub, ckpt_files):
    size = len(ckpt_files["model.safetensors"])
    hub.cut_after["model.safetensors"] = size * 2 // 3  # the first GET drops after 2/3 of the file
    source = resolve_source("owner/name")
    assert (source.path / "model.safetensors").read_bytes() == ckpt_files["model.safetensors"]
    cdn_gets = [r for r in hub.requests if r.method == "GET" and r.path.startswith("/cdn/")]
    assert len(cdn_gets) == 2


# -- local paths and parsing ----------------------------------------------------------------------


def test_local_directory_is_returned_as_is(tmp_path, hub):
    source = resolve_source(tmp_path)
    assert source == Source(path=tmp_path.resolve())
    assert hub.requests == []

    snapshot = resolve_source("owner/name").path
    again = resolve_source(str(snapshot))  # a snapshot dir in the HF cache keeps its repo id
    assert (again.repo_id, again.commit) == ("owner/name", hub.main_commit)


def test_bad_sources_are_source_errors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(SourceError, match="is a file, not a checkpoint directory"):
        resolve_source(tmp_path / "model.safetensors")
    for bad in ("./missing/dir", str(tmp_path / "missing"), "not a repo", "a/b/c", "owner/na--me"):
        with pytest.raises(SourceError, match="neither an existing directory nor a Hugging Face repo id"):
            resolve_source(bad)


def test_parse_repo_id():
    assert parse_repo_id("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", None)
    assert parse_repo_id("owner/name@refs/pr/3") == ("owner/name", "refs/pr/3")
    assert parse_repo_id("https://huggingface.co/owner/name") == ("owner/name", None)
    assert parse_repo_id("https://huggingface.co/owner/name/tree/v1") == ("owner/name", "v1")
    for bad in ("name", "owner/", "/name", "owner/name@", "own er/name", "owner/name.git"):
        assert parse_repo_id(bad) is None, bad


def test_needed_patterns_cover_the_converter_inputs():
    from huggingface_hub.utils import filter_repo_objects

    names = ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "chat_template.jinja", "LICENSE.txt", "pytorch_model.bin", "flax_model.msgpack"]
    kept = set(filter_repo_objects(names, allow_patterns=list(NEEDED_PATTERNS)))
    assert kept == set(names) - {"pytorch_model.bin", "flax_model.msgpack"}


# -- the CLI, end to end --------------------------------------------------------------------------


def _cli(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in HF_VARS}
    env |= env_extra
    return subprocess.run([sys.executable, "-m", "edgekit", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_cli_convert_from_the_hub(hub, tmp_path):
    out = tmp_path / "out"
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "cli-hf-home"), "HF_HUB_ETAG_TIMEOUT": "3"}
    done = _cli(["convert", "owner/name", "-q", "f16", "-o", str(out), "--quiet"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    [gguf_file] = out.glob("*.gguf")
    assert gguf_file.read_bytes()[:4] == b"GGUF"
    assert "Traceback" not in done.stderr

    import gguf

    fields = gguf.GGUFReader(gguf_file).fields
    text = {k: bytes(f.parts[f.data[0]]).decode("utf-8", "replace") for k, f in fields.items()
            if k.startswith("general.") and f.types and f.types[0] == gguf.GGUFValueType.STRING}
    assert any("owner/name" in v for v in text.values()), text  # the source repo is recorded


def test_cli_convert_with_the_hub_down_prints_one_error_line(hub, tmp_path):
    hub.stop()
    out = tmp_path / "out"
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "cli-hf-home")}
    start = time.monotonic()
    done = _cli(["convert", "owner/name", "-q", "f16", "-o", str(out)], env, tmp_path)
    assert time.monotonic() - start < RETRYING_FOR_MINUTES + 30  # plus a CLI start-up on a slow machine
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: can't reach the Hugging Face Hub for owner/name"), lines
    assert "HF_HUB_OFFLINE=1" in lines[0] and "Traceback" not in done.stderr
    assert not out.exists()  # refused before any output directory is made
    assert not list(tmp_path.rglob("*.gguf*"))
