"""Quantization recipes: named per-tensor type mixtures, declared in ONE table (:data:`RECIPES`).

A recipe maps tensor roles to ggml types. Selectors name a role
(``token_embd``, ``output``, ``attn_q``, ``attn_k``, ``attn_v``, ``attn_output``,
``ffn_gate``, ``ffn_up``, ``ffn_down``), optionally restricted to the edge layers
with ``@first``, ``@last`` or ``@edge`` (the first / last ``max(1, n_layer // 8)``
blocks). The first matching rule wins; tensors no rule matches get ``base``.

Each rule lists types in order of preference. A type whose block doesn't divide
the tensor's row (K-quants need rows that are multiples of 256; hidden 896 and
576 aren't) is skipped for the next one; if none fits, llama.cpp's own fallback
table applies, then F16. With a tied embedding there is no ``output.weight``:
``token_embd`` is also the output projection, so its type drives both quality
and decode speed.

``measured`` holds the numbers of the quality table that ``bench/studies/quality.py``
measures (SmolLM2-135M, weights perturbed off the Q4_1 grid, F16 reference, 1785
tokens of edgekit's eval text at ctx 512); :func:`pick_auto` uses them, with this device's own
speed table (``edgekit convert --tune``, :func:`edgekit.profile.read_recipe_speeds`) when there is one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgekit.errors import QuantizeError
from edgekit.llama_facts import block_size

__all__ = ["Recipe", "Measured", "RECIPES", "is_recipe", "get_recipe", "resolve_types", "pick_auto",
           "DEFAULT_MAX_KLD"]


@dataclass(frozen=True)
class Measured:
    """One row of the quality table (SmolLM2-135M, perturbed weights, vs F16)."""

    bpw: float  # bits per weight over all tensors
    size_ratio_q4_k_m: float  # file size / Q4_K_M's
    tg_ratio_f16: float  # decode tok/s / F16's, same run
    kld: float  # mean KL divergence vs F16
    top1: float  # same top token as F16, fraction


@dataclass(frozen=True)
class Recipe:
    """A named mixture: ``rules`` are (selector, preferred types), first match wins."""

    name: str
    summary: str
    base: str
    rules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    measured: Measured | None = None


# THE table. Types are ggml type names (gguf.GGMLQuantizationType).
RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("q4-fast", "IQ4_NL everywhere, Q4_K ffn_down, Q8_0 embedding/output: Q4_0's size, faster, half its KLD.",
           base="IQ4_NL",
           rules=(("token_embd", ("Q8_0",)), ("output", ("Q8_0",)), ("ffn_down", ("Q4_K", "IQ4_NL"))),
           measured=Measured(bpw=5.46, size_ratio_q4_k_m=0.870, tg_ratio_f16=1.70, kld=0.1542, top1=0.7714)),
    Recipe("q4-balanced", "q4-fast plus Q8_0 attn_v (the most sensitive small tensor).",
           base="IQ4_NL",
           rules=(("token_embd", ("Q8_0",)), ("output", ("Q8_0",)), ("attn_v", ("Q8_0",)),
                  ("ffn_down", ("Q4_K", "IQ4_NL"))),
           measured=Measured(bpw=5.55, size_ratio_q4_k_m=0.886, tg_ratio_f16=1.69, kld=0.1035, top1=0.7961)),
    Recipe("q4-best", "Mixed 4/5/8-bit: beats Q4_K_M on KLD and speed at no larger size.",
           base="IQ4_NL",
           rules=(("token_embd", ("Q8_0",)), ("output", ("Q8_0",)), ("*@last", ("Q8_0",)),
                  ("attn_v", ("Q8_0",)), ("attn_k", ("Q8_0",)), ("ffn_down", ("Q4_K", "IQ4_NL")),
                  ("ffn_up", ("Q5_0",)), ("attn_q", ("Q5_0",)), ("attn_output", ("Q5_0",))),
           measured=Measured(bpw=6.26, size_ratio_q4_k_m=0.998, tg_ratio_f16=1.40, kld=0.0491, top1=0.8633)),
    Recipe("q5-best", "Q5_0 with Q6_K ffn_down, Q8_0 attn_k/v and Q5_1 embedding/output: smallest KLD under Q4_K_M's size.",
           base="Q5_0",
           rules=(("token_embd", ("Q5_1",)), ("output", ("Q6_K", "Q5_1")), ("attn_v", ("Q8_0",)), ("attn_k", ("Q8_0",)),
                  ("ffn_down", ("Q6_K", "Q5_0"))),
           measured=Measured(bpw=6.08, size_ratio_q4_k_m=0.968, tg_ratio_f16=1.17, kld=0.0477, top1=0.8527)),
)}

DEFAULT_MAX_KLD = 0.05

# llama.cpp's fallback when a 256-block type doesn't fit a row (src/llama-quant.cpp)
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}
_ROLES = ("token_embd", "output", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_NAME = re.compile(r"^(?:blk\.(\d+)\.)?([a-z_]+)\.weight$")


def is_recipe(name: str) -> bool:
    """True if ``name`` is a recipe (or ``auto``) rather than a plain llama.cpp type."""
    return name.lower() in RECIPES or name.lower() == "auto"


def get_recipe(name: str, max_kld: float | None = None) -> Recipe:
    """The recipe called ``name``; ``auto`` resolves through :func:`pick_auto` (with this device's speed table)."""
    key = name.lower()
    if key == "auto":
        from edgekit.profile import read_recipe_speeds

        key = pick_auto(DEFAULT_MAX_KLD if max_kld is None else max_kld, read_recipe_speeds())
    if key not in RECIPES:
        raise QuantizeError(f"Unknown recipe {name!r}.", f"Use one of: auto, {', '.join(RECIPES)}.")
    return RECIPES[key]


def _fit(prefs: tuple[str, ...], row: int) -> str:
    for ty in prefs:
        if row % block_size(ty) == 0:
            return ty
    ty = _FALLBACK.get(prefs[-1], prefs[-1])
    return ty if row % block_size(ty) == 0 else "F16"


def _selects(selector: str, role: str, layer: int | None, n_layer: int) -> bool:
    what, _, where = selector.partition("@")
    if what not in ("*", role):
        return False
    if not where:
        return True
    if layer is None:
        return False
    edge = max(1, n_layer // 8)
    first, last = layer < edge, layer >= n_layer - edge
    return {"first": first, "last": last, "edge": first or last}.get(where, False)


def resolve_types(recipe: Recipe, shapes: dict[str, tuple[int, ...]], n_layer: int) -> dict[str, str]:
    """Type of every quantizable tensor (2-D ``*.weight`` with a known role) under ``recipe``.

    ``shapes`` are in ggml order (row length first). Other tensors (norms, biases)
    are left out and stay as they are.
    """
    plan: dict[str, str] = {}
    for name, shape in shapes.items():
        m = _NAME.match(name)
        if not m or len(shape) < 2 or m.group(2) not in _ROLES:
            continue
        layer = int(m.group(1)) if m.group(1) is not None else None
        role = m.group(2)
        prefs = next((types for sel, types in recipe.rules if _selects(sel, role, layer, n_layer)), (recipe.base,))
        plan[name] = _fit(prefs, int(shape[0]))
    return plan


def pick_auto(max_kld: float = DEFAULT_MAX_KLD, speeds: dict[str, float] | None = None) -> str:
    """The fastest measured recipe whose KLD is within ``max_kld`` (the most accurate one if none is).

    Speed is this device's decode tokens/s from ``speeds`` ({recipe: tok/s}, the table
    ``edgekit convert --tune`` stores) for the candidates it covers; without it, the quality
    table's decode speed relative to F16 (measured on the project's machine). KLD breaks ties.
    """
    rows = [r for r in RECIPES.values() if r.measured is not None]
    if not rows:
        return next(iter(RECIPES))
    within = [r for r in rows if r.measured.kld <= max_kld]
    if not within:
        return min(rows, key=lambda r: r.measured.kld).name
    timed = [r for r in within if speeds and speeds.get(r.name)]
    if timed:
        return max(timed, key=lambda r: (speeds[r.name], -r.measured.kld)).name  # type: ignore[index]
    return max(within, key=lambda r: (r.measured.tg_ratio_f16, -r.measured.kld)).name
