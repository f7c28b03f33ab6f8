"""edgekit.convert: Hugging Face checkpoint to GGUF (F32/F16/BF16 and llama.cpp's quantized types).

    from edgekit.convert import convert
    files = convert("owner/name", out="models", quant="q4_k_m,q8_0")
"""

from edgekit.convert.pipeline import ConvertedFile, convert, open_checkpoint
from edgekit.convert.quantize import QUANT_TYPES, quantize

__all__ = ["ConvertedFile", "QUANT_TYPES", "convert", "open_checkpoint", "quantize"]
