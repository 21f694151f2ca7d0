"""The GGUF architectures edgelora ships, by name: what the default plugin registers, and what
the library functions use when called without a plugin registry."""

from __future__ import annotations

from edgelora.gguf.architectures import LLAMA, Architecture
from edgelora.gguf.families import GEMMA2, GEMMA3, PHI3, QWEN2, QWEN3


def builtin_architectures() -> dict[str, Architecture]:
    return {a.name: a for a in (LLAMA, QWEN2, QWEN3, GEMMA2, GEMMA3, PHI3)}
