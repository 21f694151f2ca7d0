"""What plugins register: small frozen dataclasses holding plain functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    """One pipeline step.

    ``run(context) -> dict`` returns the artifacts named in ``produces``.
    ``config_keys`` are the config sections (``"train"``) or fields
    (``"export.quantize"``) whose values, with the content of the required
    artifacts and ``version``, decide whether a cached result is still valid.
    """

    name: str
    run: Callable[[Any], dict[str, Any]]
    requires: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    version: str = "1"
    cacheable: bool = True
    description: str = ""
    plugin_kinds: tuple[str, ...] = ()  # registries ("targets") whose entries' plugins and versions also key the cache


@dataclass(frozen=True)
class Source:
    """A base-model source: ``fetch(config, project_dir, dest_dir, download) -> dict``.

    The result holds ``path`` (a directory with config.json, safetensors and
    tokenizer files), ``files`` ({relative path: sha256}), ``source`` and
    ``revision``. ``download`` is true only under ``edgelora fetch``.
    """

    name: str
    fetch: Callable[..., dict[str, Any]]
    description: str = ""
    check: Callable[..., list[str]] | None = None
    """Optional ``check(base_config, project_dir) -> [problem]``: the ``[base]`` fields this
    source needs, checked by ``plan`` (one line each, naming the field)."""
    locate: Callable[..., Any] | None = None
    """Optional ``locate(base_config, project_dir) -> Path | None``: what ``plan`` can inspect
    without fetching — a model folder (config.json, tokenizer) or a ``.gguf`` file (its header);
    None: nothing until ``edgelora fetch``/``build`` ran."""


@dataclass(frozen=True)
class Target:
    """An export target.

    ``export(context, staging_dir: Path) -> dict[str, Path]`` writes files into
    ``staging_dir`` and returns {bundle-relative path: file}; they go into the
    manifest like every other file. It runs in its own process with a time limit
    (``[export] target_timeout_s``), so it must be a module-level function; the
    context it gets holds the config, ``project_dir``, the artifacts so far and
    ``log``. Writing anywhere but ``staging_dir`` fails the target
    (see :mod:`edgelora.bundle.targets`).

    ``install(bundle_dir: Path, root: Path) -> dict`` (optional) installs a verified
    bundle's files for this target under ``root`` (``/`` on a real host, a scratch
    folder in tests) and returns ``{"installed": [paths]}``; ``uninstall(bundle_dir,
    root) -> dict`` removes exactly what ``install`` wrote. ``default`` targets run in
    every build; the others when named in ``[export] targets``.
    """

    name: str
    export: Callable[[Any, Path], dict[str, Path]]
    install: Callable[..., dict[str, Any]] | None = None
    description: str = ""
    default: bool = False
    uninstall: Callable[..., dict[str, Any]] | None = None


@dataclass
class Registry:
    """Everything the loaded plugins registered, with the plugin that provided it."""

    stages: dict[str, Stage] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    architectures: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    providers: dict[tuple[str, str], str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # plugin name -> version
    failed: dict[str, str] = field(default_factory=dict)    # plugin name -> why it was dropped

    def listing(self) -> list[dict[str, str]]:
        rows = []
        for kind in ("stages", "sources", "architectures", "targets"):
            for name, obj in getattr(self, kind).items():
                rows.append({
                    "kind": kind[:-1],
                    "name": name,
                    "plugin": self.providers[(kind, name)],
                    "description": getattr(obj, "description", "") or "",
                })
        return rows
