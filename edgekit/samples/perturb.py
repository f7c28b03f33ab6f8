"""Real weights moved off their quantization grid, for fair quality measurements.

Weights taken from a quantized file sit exactly on its grid, which flatters that
type (and any type sharing the grid) when measuring. The quality table in
``docs/quantization.md`` is measured on weights perturbed this way.
"""

from __future__ import annotations

from pathlib import Path


def perturbed_f16(src_gguf: str | Path, dst: str | Path, noise: float = 0.05, seed: int = 0) -> Path:
    """Dequantize a GGUF to F16 and add Gaussian noise (``noise`` x each weight matrix's std).

    Weights taken from a quantized file sit exactly on its quantization grid, which
    flatters that type (and any type sharing the grid) when measuring. Noise at ~5%
    of each tensor's std moves them off it. 1-D tensors (norms) stay F32 and exact.
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    from edgekit.atomic import atomic_output

    src, dst = Path(src_gguf), Path(dst)
    reader = GGUFReader(str(src))
    arch = reader.get_field("general.architecture").contents()
    writer = GGUFWriter(None, arch)  # the path is given when the atomic output opens
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        value = 1 if field.name == "general.file_type" else field.contents()
        sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub)
    rng = np.random.default_rng(seed)
    arrays = []
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        if w.ndim >= 2:
            w = w + rng.normal(0.0, noise * float(w.std()), size=w.shape).astype(np.float32)
            w = w.astype(np.float16)
        arrays.append(w)
        ty = GGMLQuantizationType.F16 if w.dtype == np.float16 else GGMLQuantizationType.F32
        writer.add_tensor_info(t.name, w.shape, w.dtype, w.nbytes, ty)
    with atomic_output(dst) as tmp:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for w in arrays:
            writer.write_tensor_data(w)
        writer.close()
    return dst
