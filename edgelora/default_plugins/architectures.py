"""Built-in GGUF architectures."""

from __future__ import annotations

from edgelora.hookspecs import hookimpl


@hookimpl
def edgelora_register_architectures(register):
    from edgelora.gguf.builtin import builtin_architectures

    # one entry each: llama, qwen2, qwen3, gemma2, gemma3, phi3
    for arch in builtin_architectures().values():
        register(arch)
