"""Rope scaling as llama.cpp expects it: GGUF keys, and the frequency-factor tensors some types need.

- ``linear`` and ``yarn``: a scaling type and factor (and YaRN's original context).
- ``llama3`` (Llama 3.1+): no key; a ``rope_freqs`` tensor of per-frequency divisors,
  computed as transformers computes Llama 3's inverse frequencies (``inv_freq / inv_freq_llama3``).
- ``longrope`` (Phi-3, Phi-4-mini): the short and long factor tensors, the original
  context (llama.cpp picks the long factors when its context exceeds it), and the
  attention factor that scales cos/sin.
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from edgekit.convert.hparams import HParams
from edgekit.errors import UnsupportedModel


def llama3_freq_factors(hp: HParams) -> np.ndarray:
    """Divisors of each rotary frequency (n_rot/2 values) that turn the base frequencies into Llama 3's."""
    s = hp.rope_scaling
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    original = s["original_max_position_embeddings"]
    inv_freq = 1.0 / hp.rope_theta ** (np.arange(0, hp.n_rot, 2, dtype=np.float64) / hp.n_rot)
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    scaled = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return (inv_freq / scaled).astype(np.float32)


def longrope_attention_factor(hp: HParams) -> float:
    """The cos/sin scale: the config's ``attention_factor``, else transformers' default for the context ratio."""
    s = hp.rope_scaling
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    original = s["original_max_position_embeddings"]
    factor = float(s.get("factor") or hp.n_ctx_train / original)
    return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))


def rope_tensors(hp: HParams) -> dict[str, np.ndarray]:
    """Extra GGUF tensors the scaling type needs (F32), by GGUF name."""
    kind = hp.rope_scaling.get("rope_type")
    names = gguf.TENSOR_NAMES
    if kind == "llama3":
        return {names[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight": llama3_freq_factors(hp)}
    if kind == "longrope":
        out = {}
        for key, tensor in (("long_factor", gguf.MODEL_TENSOR.ROPE_FACTORS_LONG),
                            ("short_factor", gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT)):
            values = hp.rope_scaling[key]
            if len(values) != hp.n_rot // 2:
                raise UnsupportedModel(
                    f"config.json: rope_scaling.{key} has {len(values)} values but the {hp.n_rot} rotary "
                    f"dimensions need {hp.n_rot // 2}", "Use the config.json that transformers saved with these weights.")
            out[names[tensor] + ".weight"] = np.asarray(values, dtype=np.float32)
        return out
    return {}


def write_rope_keys(writer: gguf.GGUFWriter, hp: HParams) -> None:
    """The rope scaling keys for the config's scaling type (nothing for none and for llama3)."""
    scaling = hp.rope_scaling
    kind = scaling.get("rope_type")
    if kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(scaling["factor"])
        writer.add_rope_scaling_orig_ctx_len(scaling.get("original_max_position_embeddings", hp.n_ctx_train))
    elif kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    elif kind == "longrope":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        writer.add_rope_scaling_orig_ctx_len(scaling["original_max_position_embeddings"])
        writer.add_rope_scaling_attn_factors(longrope_attention_factor(hp))
