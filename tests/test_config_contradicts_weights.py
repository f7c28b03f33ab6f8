"""A config.json whose counts contradict the weights is refused at once, naming the field.

Before this check, a config claiming 100000 layers made `edgekit convert` map tensor
names for minutes; now the counts are compared with the safetensors headers first.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fixtures_checkpoints import with_config

from edgekit.convert import convert
from edgekit.errors import CorruptFile, UnsupportedModel


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_hidden_layers": 100000}, "num_hidden_layers=100000 but the weights have 2 layers"),
        ({"num_hidden_layers": 1}, "num_hidden_layers=1 but the weights have 2 layers"),
        ({"hidden_size": 96}, r"hidden_size=96 but model.embed_tokens.weight .*\[151936, 64\]"),
        ({"vocab_size": 200000}, r"vocab_size=200000 but model.embed_tokens.weight .*\[151936, 64\]"),
        ({"num_key_value_heads": 4}, "num_key_value_heads=4 with head_dim=16 but model.layers.0.self_attn.k_proj"),
        ({"num_attention_heads": 8}, "head_dim=8 but model.layers.0.self_attn"),
        ({"intermediate_size": 4096}, "intermediate_size=4096 but model.layers.0.mlp"),
        ({"head_dim": 32}, "head_dim=32 but model.layers.0.self_attn"),
    ],
)
def test_contradicting_count_is_refused_before_any_output(tiny_qwen2_dir, tmp_path, changes, message):
    bad = with_config(tiny_qwen2_dir, tmp_path / "bad", **changes)
    with pytest.raises(CorruptFile, match=message) as err:
        convert(bad, out=tmp_path / "out", quant="f16")
    assert "config.json says" in err.value.message and err.value.hint
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_hidden_layers": 0}, "num_hidden_layers=0; it must be between 1 and"),
        ({"vocab_size": 10**12}, "vocab_size=1000000000000; it must be between 1 and"),
        ({"hidden_size": -64}, "hidden_size=-64"),
        ({"num_attention_heads": "many"}, "malformed value"),
        ({"num_key_value_heads": 3}, "multiple of the KV heads"),
        ({"rope_theta": float("inf")}, "rope_theta=inf"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope scaling type 'dynamic'"),
        ({"rope_scaling": {"type": "yarn"}}, "lacks 'factor'"),
    ],
)
def test_impossible_value_is_refused_naming_the_key(tiny_qwen2_dir, tmp_path, changes, message):
    bad = with_config(tiny_qwen2_dir, tmp_path / "bad", **changes)
    with pytest.raises(UnsupportedModel, match=message):
        convert(bad, out=tmp_path / "out", quant="f16")
    assert not (tmp_path / "out").exists()


def test_cli_prints_one_line_for_a_layer_count_the_weights_lack(tiny_qwen2_dir, tmp_path):
    bad = with_config(tiny_qwen2_dir, tmp_path / "bad", num_hidden_layers=100000)
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    result = subprocess.run([sys.executable, "-m", "edgekit", "convert", str(bad), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "num_hidden_layers=100000 but the weights have 2 layers" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
