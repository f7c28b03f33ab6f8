"""Per-tensor quantization: apply a recipe (or one plain type) with llama.cpp's own quantizer.

llama.cpp's ``llama_model_quantize`` takes a NULL-terminated array of
``{regex, ggml_type}`` overrides (``tt_overrides``) plus explicit types for the
token embedding and the output. We resolve every tensor's type ourselves (see
:mod:`edgekit.convert.recipes`), pass one exact-name override per tensor and
set ``pure`` so llama.cpp's own mixture logic never second-guesses the recipe.
This keeps llama.cpp's multi-threaded kernels, metadata handling and alignment.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgekit.convert.quantize import QUANT_TYPES, quant_type
from edgekit.errors import QuantizeError
from edgekit.gguf_meta import read_header
from edgekit.llama_facts import ggml_type_name
from edgekit.progress import ProgressFn, report

__all__ = ["quantize_with_recipe", "quantize_plain", "tensor_types"]

# The recipe's "base" type as a llama.cpp file type; it only sets general.file_type,
# because every tensor gets an explicit override.
_FTYPE_OF_TYPE = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}


def tensor_types(path: str | Path) -> dict[str, str]:
    """Return ``{tensor name: ggml type name}`` of a GGUF file."""
    return {t.name: ggml_type_name(t.type) for t in read_header(path).tensors}


def _tensor_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str], int]:
    """(name -> shape in ggml order, name -> type name, block count) of a GGUF."""
    header = read_header(path)
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in header.tensors}
    types = {t.name: ggml_type_name(t.type) for t in header.tensors}
    n_layer = int(header.arch_key("block_count", 0) or 0)
    if not n_layer:
        n_layer = 1 + max((int(m.group(1)) for n in shapes if (m := re.match(r"blk\.(\d+)\.", n))), default=-1)
    return shapes, types, n_layer


def _run_llama_quantize(src: Path, dst: Path, ftype_name: str, overrides: dict[str, str] | None,
                        threads: int | None, progress: ProgressFn | None = None) -> None:
    """llama.cpp's quantizer into a temp file beside ``dst``, renamed into place when complete."""
    from edgekit.atomic import atomic_output
    from edgekit.convert.quantize import quantize

    kwargs: dict = {}
    if overrides is not None:
        special = ("token_embd.weight", "output.weight")
        kwargs = {
            "pure": True,
            "overrides": [("^" + re.escape(n) + "$", t) for n, t in overrides.items() if n not in special],
            "token_embedding_type": overrides.get("token_embd.weight"),
            "output_tensor_type": overrides.get("output.weight"),
        }
    with atomic_output(dst) as tmp:
        quantize(src, tmp, ftype_name, threads=threads, progress=progress, stage=f"quantize {dst.name}", **kwargs)


def quantize_with_recipe(src_gguf: str | Path, dst: str | Path, recipe: str,
                         progress: ProgressFn | None = None, threads: int | None = None,
                         max_kld: float | None = None) -> Path:
    """Quantize an F16/BF16/F32 GGUF with a named recipe from :data:`edgekit.convert.recipes.RECIPES`.

    ``recipe="auto"`` picks the fastest measured recipe within ``max_kld``
    (default :data:`~edgekit.convert.recipes.DEFAULT_MAX_KLD`).

    Every tensor gets the type the recipe resolves for it (after falling back when
    a type's block doesn't divide the row). The result is written to a temp file
    and renamed onto ``dst`` atomically. Returns ``dst``.
    """
    from edgekit.convert.recipes import get_recipe, resolve_types

    src, dst = Path(src_gguf), Path(dst)
    rec = get_recipe(recipe, max_kld=max_kld)
    if not src.is_file():
        raise QuantizeError(f"{src} does not exist.", "Convert the checkpoint to an F16 GGUF first.")
    report(progress, "quantize", 0, 1)
    shapes, types, n_layer = _tensor_shapes(src)
    bad = sorted({t for t in types.values() if t not in ("F32", "F16", "BF16")})
    if bad:
        raise QuantizeError(f"{src} holds already-quantized tensors ({', '.join(bad)}); recipes need F16/BF16/F32 input.",
                            "Quantize from the F16 GGUF that `edgekit convert -q f16` writes.")
    plan = resolve_types(rec, shapes, n_layer)
    base = _FTYPE_OF_TYPE.get(rec.base, rec.base)
    _run_llama_quantize(src, dst, base if base.lower() in QUANT_TYPES else "Q4_0", plan, threads, progress)
    report(progress, "quantize", 1, 1)
    return dst


def quantize_plain(src_gguf: str | Path, dst: str | Path, qtype: str, threads: int | None = None) -> Path:
    """Quantize with one llama.cpp ftype (e.g. ``"Q4_K_M"``) using llama.cpp's own mixture rules."""
    _run_llama_quantize(Path(src_gguf), Path(dst), quant_type(qtype).name, None, threads)
    return Path(dst)
