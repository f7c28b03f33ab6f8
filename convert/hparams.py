"""Read config.json, in the forms transformers 4.x and 5.x write, into one record, and check it.

Every number here comes from a file, so nothing is trusted: :func:`read_hparams`
refuses counts that are not positive or don't fit GGUF's 32-bit fields, and
:func:`check_against_weights` compares them with the tensor shapes in the
safetensors headers before any work proportional to them is done (a config
claiming 100000 layers must fail at once, not after minutes of name mapping).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import gguf

from edgekit.errors import CorruptFile, UnsupportedModel

# GGUF stores these counts as uint32; llama.cpp reads several into int32.
MAX_COUNT = 2**31 - 1
# Every rope scaling type edgekit can write; each architecture declares the ones its llama.cpp graph runs.
ROPE_SCALING_TYPES = ("yarn", "linear", "llama3", "longrope")
_CONFIG_HINT = "Use the config.json that transformers saved with these weights."


@dataclass(frozen=True)
class HParams:
    """The hyperparameters the GGUF needs, independent of the config's vintage."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx_train: int
    rope_theta: float
    rms_eps: float
    vocab_size: int
    tied_embeddings: bool
    dtype: str | None
    rope_scaling: dict = field(default_factory=dict)
    n_rot: int = 0  # rotary dimensions per head (head_dim unless partial_rotary_factor < 1)
    rope_theta_swa: float | None = None  # the sliding-window layers' own rope base (Gemma 3)
    sliding_window: int = 0  # 0: no sliding-window attention
    swa_layers: tuple[bool, ...] = ()  # per layer: does it use the sliding window?
    logit_softcap: float = 0.0  # Gemma's final_logit_softcapping (0: none)


def _rope(config: dict) -> tuple[float, dict, float | None]:
    """Return (theta, scaling, sliding-window theta) from 4.x ``rope_theta``/``rope_scaling`` or 5.x ``rope_parameters``.

    5.x writes Gemma 3's two rotary embeddings as ``rope_parameters`` per layer type
    (``full_attention``, ``sliding_attention``); 4.x as ``rope_theta`` and ``rope_local_base_freq``.
    """
    params = config.get("rope_parameters")
    theta_swa = config.get("rope_local_base_freq")
    if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
        local = params.get("sliding_attention")
        if isinstance(local, dict):
            if (local.get("rope_type") or "default") != "default":
                raise UnsupportedModel(f"config.json: rope_parameters.sliding_attention has rope_type "
                                       f"{local.get('rope_type')!r}; edgekit supports only the default there")
            theta_swa = local.get("rope_theta", theta_swa)
        params = params["full_attention"]
    if isinstance(params, dict) and "rope_theta" in params:
        theta = float(params["rope_theta"])
        kind = params.get("rope_type") or params.get("type") or "default"
        scaling = dict(params) if kind not in ("default", None) else {}
    else:
        theta = float(config.get("rope_theta", 10000.0))
        scaling = dict(config.get("rope_scaling") or {})
    if scaling:
        scaling["rope_type"] = scaling.get("rope_type") or scaling.get("type")
        if scaling["rope_type"] == "su":  # Phi-3's first name for longrope
            scaling["rope_type"] = "longrope"
        kind = scaling["rope_type"]
        if kind not in (None, "default", *ROPE_SCALING_TYPES):
            raise UnsupportedModel(f"config.json: rope scaling type {kind!r} is not supported",
                                   f"Supported: {', '.join(ROPE_SCALING_TYPES)}.")
        if kind in ("yarn", "linear", "llama3"):
            scaling["factor"] = float(scaling["factor"])
            if not (math.isfinite(scaling["factor"]) and scaling["factor"] > 0):
                raise UnsupportedModel(f"config.json says rope scaling factor={scaling['factor']}; it must be positive")
        if kind == "longrope" and "original_max_position_embeddings" not in scaling:
            # Phi-3 keeps it at the top level of config.json
            scaling["original_max_position_embeddings"] = config.get("original_max_position_embeddings")
        if kind in ("llama3", "longrope") and scaling.get("original_max_position_embeddings") is None:
            raise UnsupportedModel(f"config.json: rope scaling type {kind!r} needs original_max_position_embeddings",
                                   _CONFIG_HINT)
        if "original_max_position_embeddings" in scaling:
            scaling["original_max_position_embeddings"] = _count(
                "original_max_position_embeddings", scaling["original_max_position_embeddings"])
        if kind == "llama3":
            for key, default in (("low_freq_factor", 1.0), ("high_freq_factor", 4.0)):
                scaling[key] = _positive(f"rope_scaling.{key}", scaling.get(key, default))
            if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
                raise UnsupportedModel(
                    f"config.json says rope_scaling.high_freq_factor={scaling['high_freq_factor']} and "
                    f"low_freq_factor={scaling['low_freq_factor']}; the high one must be larger", _CONFIG_HINT)
        if kind == "longrope":
            for key in ("long_factor", "short_factor"):
                values = scaling.get(key)
                if not isinstance(values, list) or not values or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                        for v in values):
                    raise UnsupportedModel(f"config.json: rope_scaling.{key} must be a list of positive numbers",
                                           _CONFIG_HINT)
    return theta, scaling, None if theta_swa is None else float(theta_swa)


def _count(key: str, value: object) -> int:
    """A count from config.json: an integer in 1..MAX_COUNT, or a clear refusal naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UnsupportedModel(f"config.json says {key}={value!r}, which is not a number", _CONFIG_HINT)
    number = int(value)
    if not 1 <= number <= MAX_COUNT:
        raise UnsupportedModel(f"config.json says {key}={value}; it must be between 1 and {MAX_COUNT}", _CONFIG_HINT)
    return number


def _positive(key: str, value: object) -> float:
    number = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(number) and number > 0):
        raise UnsupportedModel(f"config.json says {key}={value}; it must be a positive number", _CONFIG_HINT)
    return number


def _layer_pattern(config: dict, n_layer: int) -> tuple[bool, ...]:
    """Which layers use the sliding window: ``layer_types``, else every layer but each ``sliding_window_pattern``-th."""
    types = config.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n_layer or not set(types) <= {"sliding_attention", "full_attention"}:
            raise UnsupportedModel(f"config.json: layer_types must list 'sliding_attention' or 'full_attention' "
                                   f"for each of the {n_layer} layers", _CONFIG_HINT)
        return tuple(t == "sliding_attention" for t in types)
    period = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6
    period = _count("sliding_window_pattern", period)
    return tuple((i + 1) % period != 0 for i in range(n_layer))


def read_hparams(config: dict, sliding_window: bool = False) -> HParams:
    """Build :class:`HParams` from a parsed config.json; refuse missing, malformed or impossible values.

    ``sliding_window``: the architecture has sliding-window layers (read their size and pattern).
    """
    if not isinstance(config, dict):
        raise UnsupportedModel(f"config.json holds a {type(config).__name__}, not an object", _CONFIG_HINT)
    try:
        n_embd = _count("hidden_size", config["hidden_size"])
        n_head = _count("num_attention_heads", config["num_attention_heads"])
        n_head_kv = _count("num_key_value_heads", config.get("num_key_value_heads") or n_head)
        if n_head % n_head_kv:
            raise UnsupportedModel(
                f"config.json says num_attention_heads={n_head} and num_key_value_heads={n_head_kv}; "
                "the heads must be a multiple of the KV heads", _CONFIG_HINT)
        head_dim = _count("head_dim", config.get("head_dim") or n_embd // n_head)
        theta, scaling, theta_swa = _rope(config)
        params = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
        partial = float(params.get("partial_rotary_factor") or config.get("partial_rotary_factor") or 1.0)
        if not 0 < partial <= 1:
            raise UnsupportedModel(f"config.json says partial_rotary_factor={partial}; it must be in (0, 1]",
                                   _CONFIG_HINT)
        n_rot = int(head_dim * partial)
        n_layer = _count("num_hidden_layers", config["num_hidden_layers"])
        window, swa_layers = 0, ()
        if sliding_window and config.get("sliding_window"):
            window = _count("sliding_window", config["sliding_window"])
            swa_layers = _layer_pattern(config, n_layer)
        softcap = config.get("final_logit_softcapping")
        return HParams(
            n_layer=n_layer,
            n_embd=n_embd,
            n_ff=_count("intermediate_size", config["intermediate_size"]),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ctx_train=_count("max_position_embeddings", config.get("max_position_embeddings") or 2048),
            rope_theta=_positive("rope_theta", theta),
            rms_eps=_positive("rms_norm_eps", config.get("rms_norm_eps", 1e-6)),
            vocab_size=_count("vocab_size", config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            dtype=config.get("dtype") or config.get("torch_dtype"),
            rope_scaling=scaling,
            n_rot=n_rot,
            rope_theta_swa=None if theta_swa is None else _positive("rope_local_base_freq", theta_swa),
            sliding_window=window,
            swa_layers=swa_layers,
            logit_softcap=_positive("final_logit_softcapping", softcap) if softcap else 0.0,
        )
    except KeyError as exc:
        raise UnsupportedModel(f"config.json lacks {exc.args[0]!r}", _CONFIG_HINT) from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise UnsupportedModel(f"config.json has a malformed value ({exc})", _CONFIG_HINT) from exc


def _refuse(claim: str, found: str) -> CorruptFile:
    return CorruptFile(f"config.json says {claim} but {found}", _CONFIG_HINT)


def count_blocks(names, block_pattern: str, hp: HParams) -> int:
    """The number of layers the weights hold; refuse a config.json whose layer count differs.

    Works from the tensor names alone (bounded by the file), never from ``hp.n_layer``.
    """
    pattern = re.compile(block_pattern)
    found = {int(m.group(1)) for m in map(pattern.match, names) if m}
    n_blocks = len(found)
    if found != set(range(n_blocks)):
        gap = min(set(range(n_blocks)) - found)
        raise CorruptFile(f"the weights have {n_blocks} layers but no layer {gap} (the highest is {max(found)})",
                          "The weights are incomplete; download all shards again.")
    if hp.n_layer != n_blocks:
        raise _refuse(f"num_hidden_layers={hp.n_layer}", f"the weights have {n_blocks} layers")
    return n_blocks


def _expected_shapes(hp: HParams, fused_ffn: bool = False) -> dict[gguf.MODEL_TENSOR, tuple[tuple[int, str], ...]]:
    """Each weight's shape (PyTorch order: out, in) as the config implies it, with the config keys behind each dim.

    ``fused_ffn``: ``ffn_up`` holds the gate and up projections stacked (Phi-3's ``gate_up_proj``).
    """
    T = gguf.MODEL_TENSOR
    embd = (hp.n_embd, f"hidden_size={hp.n_embd}")
    vocab = (hp.vocab_size, f"vocab_size={hp.vocab_size}")
    ff = (hp.n_ff, f"intermediate_size={hp.n_ff}")
    q = (hp.n_head * hp.head_dim, f"num_attention_heads={hp.n_head} with head_dim={hp.head_dim}")
    kv = (hp.n_head_kv * hp.head_dim, f"num_key_value_heads={hp.n_head_kv} with head_dim={hp.head_dim}")
    qkv = ((hp.n_head + 2 * hp.n_head_kv) * hp.head_dim,
           f"num_attention_heads={hp.n_head} and num_key_value_heads={hp.n_head_kv} with head_dim={hp.head_dim}")
    head = (hp.head_dim, f"head_dim={hp.head_dim}")
    up = (2 * hp.n_ff, f"intermediate_size={hp.n_ff} (twice, gate and up fused)") if fused_ffn else ff
    return {
        T.TOKEN_EMBD: (vocab, embd), T.OUTPUT: (vocab, embd), T.OUTPUT_NORM: (embd,),
        T.ATTN_NORM: (embd,), T.FFN_NORM: (embd,), T.ATTN_POST_NORM: (embd,), T.FFN_POST_NORM: (embd,),
        T.ATTN_Q: (q, embd), T.ATTN_K: (kv, embd), T.ATTN_V: (kv, embd), T.ATTN_OUT: (embd, q),
        T.ATTN_QKV: (qkv, embd), T.ATTN_Q_NORM: (head,), T.ATTN_K_NORM: (head,),
        T.FFN_GATE: (ff, embd), T.FFN_UP: (up, embd), T.FFN_DOWN: (embd, ff),
    }


def check_shapes(hp: HParams, refs, name_map: gguf.TensorNameMap, fused_ffn: bool = False) -> None:
    """Refuse at once when a tensor's shape contradicts config.json, naming the config key.

    ``refs`` are the checkpoint's :class:`~edgekit.convert.safetensors.TensorRef` objects; tensors the
    map doesn't know are left to the planner. Biases are checked against the weight's first dimension.
    """
    expected = _expected_shapes(hp, fused_ffn)
    # The embedding first: a wrong hidden_size or vocab_size is named there, not in some later layer.
    for ref in sorted(refs, key=lambda r: "embed" not in r.name):
        found = name_map.get_type_and_name(ref.name, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in expected:
            continue
        dims = expected[found[0]]
        if found[1].endswith(".bias"):
            dims = dims[:1]
        wrong = [label for (size, label), actual in zip(dims, ref.shape, strict=False) if size != actual]
        if len(ref.shape) != len(dims):
            wrong = wrong or [" and ".join(label for _, label in dims)]
        if wrong:
            raise _refuse(" and ".join(wrong), f"{ref.name} in {ref.file.name} has shape {list(ref.shape)}")
    if hp.head_dim % 2 or hp.n_rot % 2:
        raise UnsupportedModel(f"config.json implies head_dim={hp.head_dim} with {hp.n_rot} rotary dimensions; "
                               "rotary embeddings need an even size", _CONFIG_HINT)
