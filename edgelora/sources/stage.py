"""The fetch-base stage: resolve the pinned base through its registered source; check edgelora.lock."""

from __future__ import annotations

from pathlib import Path

from edgelora import artifacts as A
from edgelora.errors import ConfigError


def fetch_base(ctx, download: bool = False) -> dict:
    from edgelora.sources.lock import check_lock, read_lock, write_lock

    cfg = ctx.config.base
    source = ctx.registry.sources.get(cfg.source)
    if source is None:
        raise ConfigError(f"edgelora.toml: [base] source {cfg.source!r} is not registered "
                          f"(known: {', '.join(sorted(ctx.registry.sources))})")
    dest = ctx.work_dir / "base" / cfg.source
    result = source.fetch(cfg, ctx.project_dir, dest, download=download)
    entry = {k: v for k, v in result.items() if k != "path"}
    entry.setdefault("source", cfg.source)
    entry.setdefault("revision", "")
    if read_lock(ctx.project_dir) is None:
        write_lock(ctx.project_dir, entry)
        ctx.log(f"  pinned {len(entry['files'])} base files in edgelora.lock")
    else:
        check_lock(ctx.project_dir, Path(result["path"]), result["files"], source=entry["source"],
                   revision=entry["revision"], delete_bad=entry["source"] == "hf")
    return {A.BASE: {"path": str(Path(result["path"]).resolve()), "files": result["files"],
                     "source": entry["source"], "revision": entry["revision"]}}
