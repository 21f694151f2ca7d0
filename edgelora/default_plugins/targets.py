"""Built-in export target: Ollama (Modelfile + GGUF in the bundle)."""

from __future__ import annotations

from pathlib import Path

from edgelora import artifacts as A
from edgelora.hookspecs import hookimpl
from edgelora.registry import Target


def _export_ollama(ctx, staging: Path) -> dict[str, Path]:
    """``Modelfile`` for the default quantization, ``Modelfile.<QUANT>`` for each other one
    (``edgelora install --quant QUANT`` installs it under its own tag)."""
    mf = ctx.need(A.MODELFILE)
    out = {}
    texts = mf.get("texts") or {mf.get("default"): mf["text"]}
    for quant, text in texts.items():
        arc = "Modelfile" if quant == mf.get("default", quant) or len(texts) == 1 else f"Modelfile.{quant}"
        path = staging / arc
        path.write_text(text, encoding="utf-8")
        out[arc] = path
    return out


@hookimpl
def edgelora_register_targets(register):
    register(Target("ollama", _export_ollama, install=None,
                    description="Ollama: Modelfile with an explicit Go TEMPLATE and stop list", default=True))
