"""The generation core: loading a model (``load``), the ``Model`` and its engine thread, sampling, text
streaming, speculative decoding and its draft model, saved KV-cache files, chat templates, tool calls and
``Chat`` sessions. It stands on the ground modules of :mod:`edgekit` (errors, llama.cpp's handles, GGUF
checks, the planner, the store) and imports nothing above it (docs/architecture.md)."""
