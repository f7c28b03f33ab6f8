"""edgekit.convert: Hugging Face checkpoint to GGUF."""
