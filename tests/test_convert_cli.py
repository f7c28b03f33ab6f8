"""`edgekit convert` as users run it: one-line errors, JSON summary, Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from interrupting import interrupt_when_ready

from edgekit.samples.checkpoints import random_qwen2_checkpoint


def run_cli(*args, env=None, **kw):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("EDGEKIT_DEBUG", None) if "EDGEKIT_DEBUG" not in (env or {}) else None
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, env=full_env,
                          timeout=300, **kw)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, qwen2_vocab_gguf):
    return random_qwen2_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", qwen2_vocab_gguf, layers=4, hidden=128,
                                   intermediate=512)


@pytest.mark.slow
def test_json_summary(ckpt, tmp_path):
    result = run_cli("convert", str(ckpt), "-q", "q8_0,q4_0", "-o", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert [o["type"] for o in outputs] == ["Q8_0", "Q4_0"]
    for o in outputs:
        data = open(o["path"], "rb").read()
        assert o["size"] == len(data)
        assert o["sha256"] == hashlib.sha256(data).hexdigest()


def _assert_one_error_line(result):
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr


def test_unsupported_architecture_is_one_line(ckpt, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ckpt.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "config.json").unlink()
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (bad / "config.json").write_text(json.dumps(config))
    result = run_cli("convert", str(bad), "-o", str(tmp_path / "out"))
    _assert_one_error_line(result)
    assert "GPTNeoXForCausalLM" in result.stderr and "Qwen2ForCausalLM" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_offline_hub_repo_not_cached_is_one_line(tmp_path):
    result = run_cli("convert", "someone/not-cached-model", "-o", str(tmp_path), env={"HF_HOME": str(tmp_path / "hf")})
    _assert_one_error_line(result)
    assert "local" in result.stderr.lower()


def test_debug_shows_traceback(tmp_path):
    result = run_cli("convert", str(tmp_path / "missing-dir"), env={"EDGEKIT_DEBUG": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode != 0
    assert "Traceback" in result.stderr


@pytest.mark.slow
def test_existing_output_is_refused_then_forced(ckpt, tmp_path):
    assert run_cli("convert", str(ckpt), "-q", "q8_0", "-o", str(tmp_path), "--quiet").returncode == 0
    _assert_one_error_line(run_cli("convert", str(ckpt), "-q", "q8_0", "-o", str(tmp_path), "--quiet"))
    assert run_cli("convert", str(ckpt), "-q", "q8_0", "-o", str(tmp_path), "--quiet", "--force").returncode == 0


# The real CLI in a child process. Before the second quantization starts (the first output is then complete and
# renamed into place), it says it is ready and waits for the test's SIGINT: no race with a fast machine
# finishing every type first, and no sleep standing in for "late enough".
_CONVERT_UNTIL_INTERRUPTED = """
import pathlib, sys, time
import edgekit.convert.pipeline as pipeline
from edgekit.cli import main
ready, sent, ckpt, out, types = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
real, calls = pipeline.quantize, []
def quantize(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        ready.write_text("ready")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the SIGINT ends this wait with KeyboardInterrupt
            time.sleep(0.01)
        sys.exit("no SIGINT came")
    return real(*args, **kwargs)
pipeline.quantize = quantize
sys.argv = ["edgekit", "convert", ckpt, "-q", types, "-o", out]
main()
"""


@pytest.mark.slow
def test_ctrl_c_exits_cleanly_and_leaves_nothing_partial(ckpt, tmp_path):
    out = tmp_path / "out"
    types = ["q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]

    def finished() -> list:
        return sorted(p.name for p in out.glob("*.gguf") if not p.name.startswith("."))

    done = interrupt_when_ready(_CONVERT_UNTIL_INTERRUPTED, ckpt, tmp_path, extra_args=[str(out), ",".join(types)],
                                waiting_for="the conversion never reached its second quantization")
    stderr = done.stderr
    assert done.returncode == 130, stderr
    assert "Interrupted" in stderr and "Traceback" not in stderr
    kept = finished()
    assert len(kept) == 1  # the output completed before Ctrl-C stays, whole
    assert sorted(p.name for p in out.iterdir()) == kept  # no temporary or partial file is left
    from edgekit.gguf_check import check

    for name in kept:
        check(out / name)  # each is a complete GGUF (raises CorruptFile otherwise)
