"""Saving and restoring a model's KV cache (the prompt cache) to a file.

File layout: ``EKSTATE1`` magic, u32 header length, a JSON header (model
identity, KV types, the cached tokens), then llama.cpp's sequence state bytes.
The header is checked before llama.cpp sees the bytes, so a state from another
model or KV type is refused with a clear message instead of garbage output.
:meth:`Model.save_state` and :meth:`Model.load_state` move the bytes in and out
of llama.cpp; this module only writes and reads the file.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import CorruptFile, EdgekitError
from edgekit.gguf_check import model_identity

if TYPE_CHECKING:
    from edgekit.runtime.model import Model

MAGIC = b"EKSTATE1"
FORMAT = 1


def write(model: Model, path: Path, tokens: list[int], data: memoryview) -> Path:
    """Write ``tokens`` and llama.cpp's sequence state ``data`` (from :meth:`Model.save_state`) to ``path``."""
    from edgekit.atomic import atomic_output  # edgekit.convert is heavy; only saving needs it

    header = json.dumps({
        "format": FORMAT, "model": model_identity(model.path), "model_file": model.path.name, "n_ctx": model.n_ctx,
        "type_k": model.type_k, "type_v": model.type_v, "slots": model.slots, "tokens": tokens,
    }).encode()
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(header)) + header + struct.pack("<Q", len(data)))
        f.write(data)
    return path


def read_header(path: Path) -> tuple[dict, int]:
    """(header, offset of the state bytes) of a state file; raises CorruptFile if it isn't one."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:8] != MAGIC:
                raise CorruptFile(f"{path.name} is not an edgekit state file", "Pass a file written by save_state().")
            (hlen,) = struct.unpack("<I", head[8:])
            if hlen > os.path.getsize(path):
                raise CorruptFile(f"{path.name} is truncated")
            header = json.loads(f.read(hlen))
            return header, 12 + hlen
    except FileNotFoundError:
        raise EdgekitError(f"{path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"{path.name} has a damaged header: {exc}") from None


def read(model: Model, path: Path) -> tuple[list[int], Any]:
    """(tokens, state bytes) of a state file, checked against ``model`` before llama.cpp sees them."""
    header, offset = read_header(path)
    if header.get("model") != model_identity(model.path):
        raise EdgekitError(f"{path.name} was saved with another model ({header.get('model_file')})",
                           "Load the state into the model it was saved from.")
    kv = (header.get("type_k"), header.get("type_v"))
    if kv != (model.type_k, model.type_v):
        raise EdgekitError(f"{path.name} holds a {kv[0]}/{kv[1]} KV cache but the model uses "
                           f"{model.type_k}/{model.type_v}", f"Load the model with kv_cache='{kv[0]}/{kv[1]}'.")
    # llama.cpp writes a sequence's state with its context's stream count (one per slot) and refuses it in a
    # context with another (files written before the field was kept are left to llama.cpp)
    slots = header.get("slots")
    if slots is not None and slots != model.slots:
        raise EdgekitError(f"{path.name} was saved from a model with {slots} slot{'s' * (slots != 1)}, "
                           f"this one has {model.slots}", f"Load the model with slots={slots}.")
    tokens = [int(t) for t in header.get("tokens", [])]
    if len(tokens) >= model.n_ctx:
        raise EdgekitError(f"{path.name} holds {len(tokens)} tokens, more than the context of {model.n_ctx}",
                           f"Load the model with n_ctx above {len(tokens)}.")
    with open(path, "rb") as f:
        f.seek(offset)
        (n,) = struct.unpack("<Q", f.read(8))
        buf = (ctypes.c_uint8 * n)()
        if f.readinto(buf) != n:
            raise CorruptFile(f"{path.name} is truncated")
    return tokens, buf
