"""Run by :func:`edgekit._llama.extra_buffers_ok` in a subprocess: does a batched decode survive
with llama.cpp's extra weight buffers (AMX, repacked) on this CPU? Exit 0 if it does.

``python -m edgekit._llama_probe MODEL.gguf [--repack]``: with ``--repack``, the extra buffers stay
off and only the weights llama.cpp repacks go to its CPU_REPACK buffer (:func:`_llama.repack_overrides`). A crash (SIGSEGV, SIGILL) shows as a negative
return code in the parent, which then loads models without those buffers.
"""

from __future__ import annotations

import sys

from edgekit import _llama


def main(path: str, repack: bool = False) -> int:
    L = _llama.lib()
    mp = L.llama_model_default_params()
    mp.use_extra_bufts = not repack
    if repack:
        from edgekit.gguf_check import check

        overrides = _llama.RepackOverrides(_llama.repack_targets(check(path).matrices))
        mp.tensor_buft_overrides = overrides.pointer
    model = L.llama_model_load_from_file(path.encode(), mp)
    if not model:
        return 2
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 64, 32, 32
    cp.n_threads = cp.n_threads_batch = 1
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        return 2
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    tokens = [i % n_vocab for i in range(1, 17)]  # a batch: the matmul path that crashed, not the vector one
    arr = (L.llama_token * len(tokens))(*tokens)
    rc = _llama.decode(ctx, L.llama_batch_get_one(arr, len(tokens)))
    L.llama_free(ctx)
    L.llama_model_free(model)
    return 0 if rc == 0 else 3


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], "--repack" in sys.argv[2:]))
