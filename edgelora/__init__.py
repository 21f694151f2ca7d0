"""edgelora: a fine-tuned LLM, carried to an air-gapped Ollama host as a verified bundle."""

__version__ = "0.1.0"
