"""Built-in GGUF architectures."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def edgelora_register_architectures(register):
    from ..gguf.architectures import LLAMA

    register(LLAMA)
