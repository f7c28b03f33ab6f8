"""The README's first command: the offline demo of the main job, end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_converts_both_checkpoints_and_answers_paris(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edgekit", "demo", "--workdir", str(tmp_path), "--no-bench", "--quiet"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.rglob("*.gguf"))
    assert written == ["SmolLM2-135M-Q4_K_M.gguf", "SmolLM2-135M-Q8_0.gguf",
                       "qwen2.5-0.5B-Q4_K_M.gguf", "qwen2.5-0.5B-Q8_0.gguf"]
    assert "RANDOM weights" in result.stdout
    # the answer's wording is greedy text, which may differ between CPUs' kernels; that it is Paris doesn't
    [answer] = [line for line in result.stdout.splitlines() if line.startswith("assistant: ")]
    assert "Paris" in answer
