"""Shared fixtures. Heavy assets are fetched once per machine into a cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Keep every test away from the real user's data and cache dirs."""
    home = tmp_path_factory.mktemp("edgekit-home")
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def qwen2_vocab_gguf():
    from edgekit.bench.assets import qwen2_vocab

    return qwen2_vocab()


@pytest.fixture(scope="session")
def smollm2_gguf():
    from edgekit.bench.assets import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_gguf):
    """SmolLM2-135M-Instruct's real weights as an HF checkpoint, built once per machine."""
    from edgekit.bench.checkpoints import cached_smollm2_checkpoint

    return cached_smollm2_checkpoint()


from fixtures_checkpoints import *  # noqa
