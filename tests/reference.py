"""An independent numpy forward pass of Hugging Face Qwen2 / Llama checkpoints.

It reads the safetensors and config.json directly and follows transformers'
modeling code (RMSNorm, rotate-half RoPE, grouped-query attention, SiLU-gated
MLP), so the converter's output can be checked against something that shares
no code with llama.cpp or gguf. Weights are held in float32; norms, softmax and
RoPE angles are computed in float64.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.safetensors import WeightSet, read_f32


def _rope_settings(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either config format: 4.x rope_theta/rope_scaling or 5.x rope_parameters."""
    params = cfg.get("rope_parameters")
    if params:
        theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        return theta, (None if rope_type == "default" else {**params, "rope_type": rope_type})
    theta = float(cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        return theta, (None if rope_type == "default" else {**scaling, "rope_type": rope_type})
    return theta, None


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None,
                  max_position_embeddings: int) -> tuple[np.ndarray, float]:
    """Inverse frequencies and the attention (cos/sin) scale, as transformers computes them."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    inv_freq = 1.0 / theta**exponents
    if scaling is None:
        return inv_freq, 1.0
    kind = scaling["rope_type"]
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind != "yarn":
        raise NotImplementedError(f"rope type {kind!r} is not implemented in the reference")
    original = int(scaling.get("original_max_position_embeddings") or max_position_embeddings)
    beta_fast = float(scaling.get("beta_fast") or 32.0)
    beta_slow = float(scaling.get("beta_slow") or 1.0)
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolation_weight = 1.0 - ramp
    inv_freq = (inv_freq / factor) * (1.0 - extrapolation_weight) + inv_freq * extrapolation_weight
    return inv_freq, float(attention_factor)


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    normed = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    return (normed * weight).astype(np.float32)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class ReferenceModel:
    """Forward pass of a Qwen2ForCausalLM or LlamaForCausalLM checkpoint directory.

    ``logits(token_ids)`` returns float32 logits of shape ``[n_tokens, vocab]``
    for one sequence starting at position 0, with a causal mask.
    """

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.dir = Path(checkpoint_dir)
        cfg = json.loads((self.dir / "config.json").read_text(encoding="utf-8"))
        self.config = cfg
        arch = (cfg.get("architectures") or [""])[0]
        if arch not in ("Qwen2ForCausalLM", "LlamaForCausalLM"):
            raise NotImplementedError(f"reference forward pass has no {arch!r}")
        self.hidden = int(cfg["hidden_size"])
        self.n_layers = int(cfg["num_hidden_layers"])
        self.n_heads = int(cfg["num_attention_heads"])
        self.n_kv = int(cfg.get("num_key_value_heads") or self.n_heads)
        self.head_dim = int(cfg.get("head_dim") or self.hidden // self.n_heads)
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        theta, scaling = _rope_settings(cfg)
        self.inv_freq, self.rope_scale = rope_inv_freq(self.head_dim, theta, scaling,
                                                       int(cfg.get("max_position_embeddings", 2048)))
        files = sorted(self.dir.glob("model*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no model*.safetensors in {self.dir}")
        self.weights = WeightSet(files)
        self._cache: dict[str, np.ndarray] = {}
        self.tied = "lm_head.weight" not in self.weights
        if self.tied and cfg.get("tie_word_embeddings") is False:
            raise ValueError("config says tie_word_embeddings=false but there is no lm_head.weight")

    def w(self, name: str) -> np.ndarray:
        """One tensor as float32 (read once, then kept)."""
        if name not in self._cache:
            self._cache[name] = read_f32(self.weights[name])
        return self._cache[name]

    def _bias(self, name: str) -> np.ndarray | float:
        return self.w(name) if name in self.weights else 0.0

    def _rope_tables(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        angles = np.arange(n, dtype=np.float64)[:, None] * self.inv_freq[None, :]
        angles = np.concatenate([angles, angles], axis=-1)
        return np.cos(angles) * self.rope_scale, np.sin(angles) * self.rope_scale

    def _attention(self, i: int, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        n, d = x.shape[0], self.head_dim
        p = f"model.layers.{i}.self_attn."
        q = x @ self.w(p + "q_proj.weight").T + self._bias(p + "q_proj.bias")
        k = x @ self.w(p + "k_proj.weight").T + self._bias(p + "k_proj.bias")
        v = x @ self.w(p + "v_proj.weight").T + self._bias(p + "v_proj.bias")
        q = q.reshape(n, self.n_heads, d).transpose(1, 0, 2).astype(np.float64)
        k = k.reshape(n, self.n_kv, d).transpose(1, 0, 2).astype(np.float64)
        v = v.reshape(n, self.n_kv, d).transpose(1, 0, 2).astype(np.float64)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        group = self.n_heads // self.n_kv
        k = np.repeat(k, group, axis=0)
        v = np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = (probs @ v).transpose(1, 0, 2).reshape(n, self.n_heads * d).astype(np.float32)
        return out @ self.w(p + "o_proj.weight").T + self._bias(p + "o_proj.bias")

    def _mlp(self, i: int, x: np.ndarray) -> np.ndarray:
        p = f"model.layers.{i}.mlp."
        gate = x @ self.w(p + "gate_proj.weight").T
        up = x @ self.w(p + "up_proj.weight").T
        return (_silu(gate) * up) @ self.w(p + "down_proj.weight").T

    def hidden_states(self, token_ids: list[int] | np.ndarray) -> np.ndarray:
        """Final-normed hidden states ``[n_tokens, hidden]``."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("token_ids must be a non-empty 1-D sequence")
        x = self.w("model.embed_tokens.weight")[ids].astype(np.float32)
        cos, sin = self._rope_tables(len(ids))
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            h = _rms_norm(x, self.w(p + "input_layernorm.weight"), self.eps)
            x = x + self._attention(i, h, cos, sin)
            h = _rms_norm(x, self.w(p + "post_attention_layernorm.weight"), self.eps)
            x = x + self._mlp(i, h)
        return _rms_norm(x, self.w("model.norm.weight"), self.eps)

    def logits(self, token_ids: list[int] | np.ndarray) -> np.ndarray:
        """Logits ``[n_tokens, vocab]`` (float32)."""
        head = self.w("model.embed_tokens.weight") if self.tied else self.w("lm_head.weight")
        return (self.hidden_states(token_ids) @ head.T).astype(np.float32)

    def greedy(self, token_ids: list[int], n_new: int, stop: set[int] | None = None) -> list[int]:
        """Greedy continuation (recomputes the whole prefix each step; fine for a few tokens)."""
        ids = list(token_ids)
        out: list[int] = []
        for _ in range(n_new):
            head = self.w("model.embed_tokens.weight") if self.tied else self.w("lm_head.weight")
            nxt = int(np.argmax(self.hidden_states(ids)[-1] @ head.T))
            out.append(nxt)
            ids.append(nxt)
            if stop and nxt in stop:
                break
        return out
