"""Where the shipped templates live: the repository's top level (source tree, editable
install) or ``edgelora/_shipped/`` inside an installed wheel (copied there by setup.py)."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]  # the edgelora package folder
_SHIPPED = _PKG / "_shipped"


def repo_root() -> Path:
    """The source tree's top (where pyproject.toml is, in a checkout or editable install)."""
    return _PKG.parent


def templates_dir() -> Path:
    for candidate in (_PKG.parent / "templates", _SHIPPED / "templates"):
        if (candidate / "bundle_README.md.j2").is_file():
            return candidate
    raise FileNotFoundError(f"edgelora templates folder not found (looked in {_PKG.parent / 'templates'} and "
                            f"{_SHIPPED / 'templates'}); reinstall edgelora")


def modelfile_template() -> Path:
    for candidate in (_PKG.parent / "Modelfile.j2", _SHIPPED / "Modelfile.j2"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Modelfile.j2 not found (looked in {_PKG.parent} and {_SHIPPED}); reinstall edgelora")
