"""An independent numpy forward pass of Hugging Face checkpoints: Qwen2, Llama (3.x), Qwen3, SmolLM3,
Gemma 3 (text) and Phi-3.

It reads the safetensors and config.json directly and follows transformers'
modeling code (RMSNorm, rotate-half RoPE, grouped-query attention, gated MLP,
and each architecture's twists), so the converter's output can be checked
against something that shares no code with llama.cpp, gguf or edgekit's
converter. Weights are held in float32; norms, softmax and RoPE angles are
computed in float64. It was checked against transformers itself once (see
docs/models.md); CI doesn't install torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.safetensors import WeightSet, read_f32

ARCHS = ("Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM", "SmolLM3ForCausalLM", "Gemma3ForCausalLM",
         "Phi3ForCausalLM")


def _rope_settings(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float]:
    """(theta, scaling, sliding-layer theta) from 4.x rope_theta/rope_scaling or 5.x rope_parameters."""
    local_theta = float(cfg.get("rope_local_base_freq", 10000.0))
    params = cfg.get("rope_parameters")
    if params and "full_attention" in params:  # 5.x Gemma 3: one set per layer type
        local_theta = float(params.get("sliding_attention", {}).get("rope_theta", local_theta))
        params = params["full_attention"]
    if params:
        theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        return theta, (None if rope_type == "default" else {**params, "rope_type": rope_type}), local_theta
    theta = float(cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        return theta, (None if rope_type == "default" else {**scaling, "rope_type": rope_type}), local_theta
    return theta, None, local_theta


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None,
                  max_position_embeddings: int, seq_len: int = 0,
                  original_max_position_embeddings: int | None = None) -> tuple[np.ndarray, float]:
    """Inverse frequencies and the attention (cos/sin) scale, as transformers computes them.

    ``head_dim`` is the rotary dimension; ``seq_len`` picks longrope's short or long factors.
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    inv_freq = 1.0 / theta**exponents
    if scaling is None:
        return inv_freq, 1.0
    kind = scaling["rope_type"]
    if kind == "longrope":
        original = int(scaling.get("original_max_position_embeddings") or original_max_position_embeddings)
        factor = scaling.get("factor") or max_position_embeddings / original
        attention_factor = scaling.get("attention_factor")
        if attention_factor is None:
            attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
        ext = np.asarray(scaling["long_factor" if seq_len > original else "short_factor"], dtype=np.float64)
        return 1.0 / (ext * theta**exponents), float(attention_factor)
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind == "llama3":
        low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
        original = int(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        llama = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * llama / factor + smooth * llama
        medium = ~(wavelen < original / high) & ~(wavelen > original / low)
        return np.where(medium, smoothed, llama), 1.0
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


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, offset: float = 0.0) -> np.ndarray:
    """RMSNorm over the last axis; Gemma scales by (1 + w), so its ``offset`` is 1."""
    x64 = x.astype(np.float64)
    normed = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    return (normed * (weight.astype(np.float64) + offset)).astype(np.float32)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)))).astype(np.float32)


class ReferenceModel:
    """Forward pass of a checkpoint directory of one of :data:`ARCHS`.

    ``logits(token_ids)`` returns float32 logits of shape ``[n_tokens, vocab]``
    for one sequence starting at position 0, with a causal mask.
    """

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.dir = Path(checkpoint_dir)
        cfg = json.loads((self.dir / "config.json").read_text(encoding="utf-8"))
        self.config = cfg
        arch = (cfg.get("architectures") or [""])[0]
        if arch not in ARCHS:
            raise NotImplementedError(f"reference forward pass has no {arch!r}")
        self.arch = arch
        self.gemma = arch == "Gemma3ForCausalLM"
        self.hidden = int(cfg["hidden_size"])
        self.n_layers = int(cfg["num_hidden_layers"])
        self.n_heads = int(cfg["num_attention_heads"])
        self.n_kv = int(cfg.get("num_key_value_heads") or self.n_heads)
        self.head_dim = int(cfg.get("head_dim") or self.hidden // self.n_heads)
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.norm_offset = 1.0 if self.gemma else 0.0
        self.q_scale = (float(cfg.get("query_pre_attn_scalar", 256)) if self.gemma else self.head_dim) ** -0.5
        params = cfg.get("rope_parameters") or {}
        partial = float(params.get("partial_rotary_factor") or cfg.get("partial_rotary_factor") or 1.0)
        self.rotary_dim = int(self.head_dim * partial)
        self.theta, self.scaling, self.local_theta = _rope_settings(cfg)
        self.max_pos = int(cfg.get("max_position_embeddings", 2048))
        # Per layer: does it rotate, and does it see only a sliding window (Gemma 3) of keys?
        n = self.n_layers
        self.use_rope = [True] * n
        if arch == "SmolLM3ForCausalLM":
            interval = int(cfg.get("no_rope_layer_interval", 4))
            self.use_rope = [bool(x) for x in cfg.get("no_rope_layers") or
                             [int((i + 1) % interval != 0) for i in range(n)]]
        self.window = [None] * n
        if self.gemma and cfg.get("sliding_window"):
            types = cfg.get("layer_types") or [
                "sliding_attention" if (i + 1) % int(cfg.get("sliding_window_pattern", 6)) else "full_attention"
                for i in range(n)]
            self.window = [int(cfg["sliding_window"]) if t == "sliding_attention" else None for t in types]
        self.softcap = float(cfg.get("final_logit_softcapping") or 0.0) if self.gemma else 0.0
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

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return _rms_norm(x, self.w(name), self.eps, self.norm_offset)

    def _rope_tables(self, n: int, layer: int) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.use_rope[layer]:
            return None
        if self.window[layer] is not None:  # Gemma 3's local layers: their own base, never scaled
            inv_freq, scale = rope_inv_freq(self.rotary_dim, self.local_theta, None, self.max_pos)
        else:
            inv_freq, scale = rope_inv_freq(self.rotary_dim, self.theta, self.scaling, self.max_pos, seq_len=n,
                                            original_max_position_embeddings=self.config.get(
                                                "original_max_position_embeddings"))
        angles = np.arange(n, dtype=np.float64)[:, None] * inv_freq[None, :]
        angles = np.concatenate([angles, angles], axis=-1)
        return np.cos(angles) * scale, np.sin(angles) * scale

    def _qkv(self, i: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = f"model.layers.{i}.self_attn."
        q_rows, kv_rows = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        if p + "qkv_proj.weight" in self.weights:  # Phi-3: one fused projection, q then k then v
            qkv = x @ self.w(p + "qkv_proj.weight").T
            return qkv[:, :q_rows], qkv[:, q_rows:q_rows + kv_rows], qkv[:, q_rows + kv_rows:]
        q = x @ self.w(p + "q_proj.weight").T + self._bias(p + "q_proj.bias")
        k = x @ self.w(p + "k_proj.weight").T + self._bias(p + "k_proj.bias")
        v = x @ self.w(p + "v_proj.weight").T + self._bias(p + "v_proj.bias")
        return q, k, v

    def _attention(self, i: int, x: np.ndarray) -> np.ndarray:
        n, d, r = x.shape[0], self.head_dim, self.rotary_dim
        p = f"model.layers.{i}.self_attn."
        q, k, v = self._qkv(i, x)
        q = q.reshape(n, self.n_heads, d)
        k = k.reshape(n, self.n_kv, d)
        if p + "q_norm.weight" in self.weights:  # Qwen3, Gemma 3: RMS norm per head, before rope
            q = self._norm(q, p + "q_norm.weight")
            k = self._norm(k, p + "k_norm.weight")
        q = q.transpose(1, 0, 2).astype(np.float64)
        k = k.transpose(1, 0, 2).astype(np.float64)
        v = v.reshape(n, self.n_kv, d).transpose(1, 0, 2).astype(np.float64)
        tables = self._rope_tables(n, i)
        if tables is not None:  # rotate the first rotary_dim dims of each head (all but Phi-3's partial rope)
            cos, sin = tables
            q = np.concatenate([q[..., :r] * cos + _rotate_half(q[..., :r]) * sin, q[..., r:]], axis=-1)
            k = np.concatenate([k[..., :r] * cos + _rotate_half(k[..., :r]) * sin, k[..., r:]], axis=-1)
        group = self.n_heads // self.n_kv
        k = np.repeat(k, group, axis=0)
        v = np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) * self.q_scale
        pos = np.arange(n)
        visible = pos[None, :] <= pos[:, None]
        if self.window[i] is not None:  # transformers' sliding window: kv_idx > q_idx - sliding_window
            visible &= pos[None, :] > pos[:, None] - self.window[i]
        scores = np.where(visible, scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = (probs @ v).transpose(1, 0, 2).reshape(n, self.n_heads * d).astype(np.float32)
        return out @ self.w(p + "o_proj.weight").T + self._bias(p + "o_proj.bias")

    def _mlp(self, i: int, x: np.ndarray) -> np.ndarray:
        p = f"model.layers.{i}.mlp."
        if p + "gate_up_proj.weight" in self.weights:  # Phi-3: gate rows first, then up
            gate, up = np.split(x @ self.w(p + "gate_up_proj.weight").T, 2, axis=-1)
        else:
            gate = x @ self.w(p + "gate_proj.weight").T
            up = x @ self.w(p + "up_proj.weight").T
        act = _gelu_tanh(gate) if self.gemma else _silu(gate)
        return (act * up) @ self.w(p + "down_proj.weight").T

    def hidden_states(self, token_ids: list[int] | np.ndarray) -> np.ndarray:
        """Final-normed hidden states ``[n_tokens, hidden]``."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("token_ids must be a non-empty 1-D sequence")
        x = self.w("model.embed_tokens.weight")[ids].astype(np.float32)
        if self.gemma:
            x = x * np.float32(math.sqrt(self.hidden))
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            h = self._attention(i, self._norm(x, p + "input_layernorm.weight"))
            if self.gemma:  # sandwich norms: each branch is normed before it joins the residual
                x = x + self._norm(h, p + "post_attention_layernorm.weight")
                h = self._mlp(i, self._norm(x, p + "pre_feedforward_layernorm.weight"))
                x = x + self._norm(h, p + "post_feedforward_layernorm.weight")
            else:
                x = x + h
                x = x + self._mlp(i, self._norm(x, p + "post_attention_layernorm.weight"))
        return self._norm(x, "model.norm.weight")

    def _head(self, hidden: np.ndarray) -> np.ndarray:
        head = self.w("model.embed_tokens.weight") if self.tied else self.w("lm_head.weight")
        logits = hidden @ head.T
        if self.softcap:
            logits = np.tanh(logits / self.softcap) * self.softcap
        return logits.astype(np.float32)

    def logits(self, token_ids: list[int] | np.ndarray) -> np.ndarray:
        """Logits ``[n_tokens, vocab]`` (float32)."""
        return self._head(self.hidden_states(token_ids))

    def greedy(self, token_ids: list[int], n_new: int, stop: set[int] | None = None) -> list[int]:
        """Greedy continuation (recomputes the whole prefix each step; fine for a few tokens)."""
        ids = list(token_ids)
        out: list[int] = []
        for _ in range(n_new):
            nxt = int(np.argmax(self._head(self.hidden_states(ids)[-1:])[0]))
            out.append(nxt)
            ids.append(nxt)
            if stop and nxt in stop:
                break
        return out
