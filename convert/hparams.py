"""Read config.json, in the forms transformers 4.x and 5.x write, into one record."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekit.errors import UnsupportedModel


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


def _rope(config: dict) -> tuple[float, dict]:
    """Return (theta, scaling) from 4.x ``rope_theta``/``rope_scaling`` or 5.x ``rope_parameters``."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta = float(params["rope_theta"])
        kind = params.get("rope_type") or params.get("type") or "default"
        scaling = dict(params) if kind not in ("default", None) else {}
    else:
        theta = float(config.get("rope_theta", 10000.0))
        scaling = dict(config.get("rope_scaling") or {})
    if scaling:
        scaling["rope_type"] = scaling.get("rope_type") or scaling.get("type")
    return theta, scaling


def read_hparams(config: dict) -> HParams:
    """Build :class:`HParams` from a parsed config.json."""
    try:
        n_embd = int(config["hidden_size"])
        n_head = int(config["num_attention_heads"])
        theta, scaling = _rope(config)
        return HParams(
            n_layer=int(config["num_hidden_layers"]),
            n_embd=n_embd,
            n_ff=int(config["intermediate_size"]),
            n_head=n_head,
            n_head_kv=int(config.get("num_key_value_heads") or n_head),
            head_dim=int(config.get("head_dim") or n_embd // n_head),
            n_ctx_train=int(config.get("max_position_embeddings") or 2048),
            rope_theta=theta,
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            vocab_size=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            dtype=config.get("dtype") or config.get("torch_dtype"),
            rope_scaling=scaling,
        )
    except KeyError as exc:
        raise UnsupportedModel(
            f"config.json lacks {exc.args[0]!r}", "Use the config.json that transformers saved with the model."
        ) from exc
    except (TypeError, ValueError) as exc:
        raise UnsupportedModel(f"config.json has a malformed value ({exc})") from exc
