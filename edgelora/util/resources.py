"""Where the shipped templates live (repository top level, or installed share dir)."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]  # the edgelora package folder



def templates_dir() -> Path:
    for candidate in (_PKG.parent / "templates", _PKG / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("edgelora templates folder not found; install edgelora from its source tree")


def modelfile_template() -> Path:
    for candidate in (_PKG.parent / "Modelfile.j2", _PKG / "templates" / "Modelfile.j2"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("Modelfile.j2 not found; install edgelora from its source tree")
