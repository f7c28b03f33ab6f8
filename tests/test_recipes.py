"""Quantization recipes: one table, per-tensor types resolved with fallbacks, written as declared."""

from __future__ import annotations

import pytest

from edgekit.convert.recipes import RECIPES, Measured, Recipe, get_recipe, is_recipe, pick_auto, resolve_types
from edgekit.errors import QuantizeError


@pytest.fixture(scope="module")
def f16(smollm2_perturbed_f16):
    return smollm2_perturbed_f16


@pytest.fixture(scope="module")
def quantized(f16, tmp_path_factory):
    """Recipe name -> GGUF quantized from the perturbed F16 (each made once per module)."""
    from edgekit.convert.tensor_quant import quantize_with_recipe

    d, made = tmp_path_factory.mktemp("recipes"), {}

    def get(name):
        if name not in made:
            made[name] = quantize_with_recipe(f16, d / f"{name}.gguf", name)
        return made[name]

    return get


# SmolLM2-like shapes (ggml order: row length first); hidden 576 is not a multiple of 256.
SHAPES = {
    "token_embd.weight": (576, 49152),
    "output_norm.weight": (576,),
    **{f"blk.{i}.{n}.weight": s for i in range(8) for n, s in (
        ("attn_q", (576, 576)), ("attn_k", (576, 192)), ("attn_v", (576, 192)), ("attn_output", (576, 576)),
        ("ffn_gate", (576, 1536)), ("ffn_up", (576, 1536)), ("ffn_down", (1536, 576)), ("attn_norm", (576,)))},
}


def test_k_quants_fall_back_where_rows_are_not_multiples_of_256():
    rec = Recipe("t", "", base="Q4_K", rules=(("attn_v", ("Q6_K",)), ("ffn_up", ("Q5_K", "IQ4_NL"))))
    plan = resolve_types(rec, SHAPES, n_layer=8)
    assert plan["blk.0.ffn_down.weight"] == "Q4_K"  # 1536 = 6 x 256 fits
    assert plan["blk.0.attn_q.weight"] == "Q5_0"  # llama.cpp's own fallback for Q4_K
    assert plan["blk.0.attn_v.weight"] == "Q8_0"  # ... and for Q6_K
    assert plan["blk.0.ffn_up.weight"] == "IQ4_NL"  # the rule's next preference
    assert "output_norm.weight" not in plan and "blk.0.attn_norm.weight" not in plan


def test_edge_layer_selectors():
    rec = Recipe("t", "", base="IQ4_NL", rules=(("*@first", ("Q8_0",)), ("ffn_down@last", ("Q6_K",))))
    plan = resolve_types(rec, SHAPES, n_layer=8)  # edge = max(1, 8 // 8) = 1 layer
    assert {t for n, t in plan.items() if n.startswith("blk.0.")} == {"Q8_0"}
    assert plan["blk.7.ffn_down.weight"] == "Q6_K" and plan["blk.7.ffn_up.weight"] == "IQ4_NL"
    assert plan["blk.3.ffn_down.weight"] == "IQ4_NL"
    assert plan["token_embd.weight"] == "IQ4_NL"


def test_names_and_errors():
    assert is_recipe("q4-best") and is_recipe("AUTO") and not is_recipe("q4_k_m")
    with pytest.raises(QuantizeError, match="Unknown recipe"):
        get_recipe("q3-nonsense")
    assert get_recipe("auto").name == "q4-best"  # the default budget (KLD 0.05), as the README says


def test_auto_is_the_fastest_recipe_within_the_kld_budget(monkeypatch):
    import edgekit.convert.recipes as recipes

    def measured(kld: float, speed: float) -> Measured:
        return Measured(bpw=5.0, size_ratio_q4_k_m=1.0, tg_ratio_f16=speed, kld=kld, top1=0.8)

    table = [Recipe("fast", "", "Q4_0", measured=measured(0.20, 2.0)),
             Recipe("mid", "", "Q4_0", measured=measured(0.04, 1.5)),
             Recipe("tie", "", "Q4_0", measured=measured(0.03, 1.5)),
             Recipe("exact", "", "Q8_0", measured=measured(0.01, 1.0)),
             Recipe("unmeasured", "", "Q2_K")]
    monkeypatch.setattr(recipes, "RECIPES", {r.name: r for r in table})
    assert pick_auto(1.0) == "fast"
    assert pick_auto(0.05) == "tie"  # as fast as "mid", and more accurate
    assert pick_auto(0.02) == "exact"
    assert pick_auto(0.001) == "exact"  # nothing within the budget: the most accurate one
    assert get_recipe("auto", max_kld=1.0).name == "fast"


# What each recipe gives SmolLM2-135M's tensors (30 layers: the last 3 are "@last"; rows of 576 take no
# K-quant, ffn_down's rows of 1536 do), read off the recipe table by hand. Norms stay F32.
_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
SMOLLM2_TYPES = {
    "q4-fast": {"token_embd": "Q8_0", **dict.fromkeys(_ROLES, "IQ4_NL"), "ffn_down": "Q4_K"},
    "q4-balanced": {"token_embd": "Q8_0", **dict.fromkeys(_ROLES, "IQ4_NL"), "attn_v": "Q8_0", "ffn_down": "Q4_K"},
    "q4-best": {"token_embd": "Q8_0", "attn_q": "Q5_0", "attn_k": "Q8_0", "attn_v": "Q8_0", "attn_output": "Q5_0",
                "ffn_gate": "IQ4_NL", "ffn_up": "Q5_0", "ffn_down": "Q4_K", "@last": "Q8_0"},
    "q5-best": {"token_embd": "Q5_1", **dict.fromkeys(_ROLES, "Q5_0"), "attn_k": "Q8_0", "attn_v": "Q8_0",
                "ffn_down": "Q6_K"},
}


def _expected_type(recipe: str, name: str) -> str:
    want = SMOLLM2_TYPES[recipe]
    if name.endswith("_norm.weight"):
        return "F32"
    parts = name.split(".")
    if name.startswith("blk.") and int(parts[1]) >= 27 and "@last" in want:
        return want["@last"]
    return want[parts[-2]]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_write_the_types_they_declare(quantized, name):
    from edgekit.convert.tensor_quant import tensor_types

    out = quantized(name)
    written = tensor_types(out)
    assert len(written) == 1 + 30 * 9 + 1  # token_embd, 9 tensors per block, output_norm
    assert written == {n: _expected_type(name, n) for n in written}
    assert not list(out.parent.glob(".*.tmp"))


@pytest.mark.slow
def test_q4_best_is_no_larger_than_q4_k_m(f16, quantized, tmp_path):
    """The quality table's size claim, measured: q4-best's file is no larger than llama.cpp's Q4_K_M."""
    from edgekit.convert.tensor_quant import quantize_plain

    q4_k_m = quantize_plain(f16, tmp_path / "Q4_K_M.gguf", "Q4_K_M")
    assert quantized("q4-best").stat().st_size <= q4_k_m.stat().st_size


def test_quantized_input_is_refused(smollm2_gguf, tmp_path):
    from edgekit.convert.tensor_quant import quantize_with_recipe

    with pytest.raises(QuantizeError, match="already-quantized"):
        quantize_with_recipe(smollm2_gguf, tmp_path / "x.gguf", "q4-fast")
    assert not (tmp_path / "x.gguf").exists()
