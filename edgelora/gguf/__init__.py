"""GGUF export: architecture registry, tokenizer export, streaming converter, validation ladder."""
