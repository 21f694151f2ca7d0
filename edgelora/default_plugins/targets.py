"""Built-in export target: Ollama (Modelfile + GGUF in the bundle)."""

from __future__ import annotations

from pathlib import Path

from edgelora import artifacts as A
from edgelora.hookspecs import hookimpl
from edgelora.registry import Target


def _export_ollama(ctx, staging: Path) -> dict[str, Path]:
    mf = ctx.need(A.MODELFILE)
    path = staging / "Modelfile"
    path.write_text(mf["text"], encoding="utf-8")
    return {"Modelfile": path}


@hookimpl
def edgelora_register_targets(register):
    register(Target("ollama", _export_ollama, install=None,
                    description="Ollama: Modelfile with an explicit Go TEMPLATE and stop list", default=True))
