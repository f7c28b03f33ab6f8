"""Shared fixtures. Heavy assets are fetched once per machine into a cache."""

from __future__ import annotations

import os
import signal

import pytest

pytest_plugins = ["fixtures_checkpoints"]  # the Hugging Face checkpoint fixtures

# A shell without job control starts a background command with SIGINT ignored, and an ignored signal is
# inherited by every process it starts: the Ctrl-C tests' children would never see their Ctrl-C. A handler
# is not inherited (exec resets it to the default), so installing Python's own gives them the default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _extra_buffers_verdict():
    """Decide once per session whether llama.cpp's extra weight buffers (AMX) are safe on this CPU.

    edgekit probes that in a subprocess per user cache; the tests isolate the cache per test, so
    without this every CLI subprocess would probe again. tests/test_runtime.py tests the probe itself.
    """
    if "EDGEKIT_EXTRA_BUFFERS" in os.environ:
        yield
        return
    from edgekit import _llama
    from edgekit.samples.assets import smollm2_gguf

    if _llama.build_has_amx():
        path = smollm2_gguf()
        from edgekit.gguf_check import check

        ok = _llama.extra_buffers_ok(path, check(path).tensor_types)
        os.environ["EDGEKIT_EXTRA_BUFFERS"] = "1" if ok else "0"
        # and keep the plain buffers when they're off; tests/test_weight_buffers.py covers repacking
        os.environ.setdefault("EDGEKIT_REPACK", "0")
    yield
    os.environ.pop("EDGEKIT_EXTRA_BUFFERS", None)


@pytest.fixture(scope="session", autouse=True)
def _session_prompt_cache(tmp_path_factory):
    """Models that module- and session-scoped fixtures load (before a test's own EDGEKIT_HOME exists) keep
    their persistent prompt cache in a temporary dir of the session, never in the user's cache dir."""
    old = os.environ.get("EDGEKIT_PROMPT_CACHE")
    os.environ["EDGEKIT_PROMPT_CACHE"] = str(tmp_path_factory.mktemp("prompt-cache"))
    yield
    if old is None:
        os.environ.pop("EDGEKIT_PROMPT_CACHE", None)
    else:
        os.environ["EDGEKIT_PROMPT_CACHE"] = old


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Keep every test away from the real user's data and cache dirs (the prompt cache's "auto" dir
    is then under the test's EDGEKIT_HOME)."""
    home = tmp_path_factory.mktemp("edgekit-home")
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    monkeypatch.delenv("EDGEKIT_PROMPT_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def qwen2_vocab_gguf():
    from edgekit.samples.assets import qwen2_vocab

    return qwen2_vocab()


@pytest.fixture(scope="session")
def smollm2_gguf():
    from edgekit.samples.assets import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_gguf):
    """SmolLM2-135M-Instruct's real weights as an HF checkpoint, built once per machine."""
    from edgekit.samples.smollm2 import cached_smollm2_checkpoint

    return cached_smollm2_checkpoint()


@pytest.fixture(scope="session")
def smollm2_perturbed_f16(smollm2_gguf):
    """SmolLM2-135M as F16 with 5% Gaussian noise (off its Q4_1 grid), built once per machine."""
    import fcntl

    from edgekit.samples.assets import CACHE
    from edgekit.samples.perturb import perturbed_f16

    out = CACHE / "smollm2-perturbed" / "SmolLM2-135M-perturbed5.F16.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            perturbed_f16(smollm2_gguf, out, noise=0.05, seed=0)
    return out
