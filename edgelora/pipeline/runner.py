"""Orders stages, runs them through the plugin hook, and skips unchanged ones.

A stage is skipped when the sha256 of (its name, version, the function that runs it
(module and name), its plugin and plugin version, the config keys it declares, and the content of every artifact it requires) equals the
key recorded after its last successful run, and the outputs recorded then are
still on disk with the same content. Like a build system, content decides, and
the file-content digests are memoised by (size, mtime) so unchanged multi-GB files
are not re-read on every build.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from edgelora.context import Context
from edgelora.errors import EdgeloraError, UsageError
from edgelora.util.files import atomic_write_json, sha256_json
from edgelora.util.hashing import sha256_file
from edgelora.registry import Stage


def order_stages(stages: Iterable[Stage], available: Iterable[str] = ()) -> list[Stage]:
    """Topological order by requires/produces; registration order breaks ties."""
    pending = list(stages)
    have = set(available)
    ordered: list[Stage] = []
    while pending:
        for st in pending:
            if all(r in have for r in st.requires):
                ordered.append(st)
                have.update(st.produces)
                pending.remove(st)
                break
        else:
            missing = {st.name: sorted(set(st.requires) - have) for st in pending}
            raise EdgeloraError(f"stages cannot be ordered: unmet requirements {missing}")
    return ordered


def select(stages: list[Stage], targets: Iterable[str]) -> list[Stage]:
    """The stages needed to run ``targets`` (and everything they require)."""
    by_product = {p: st for st in stages for p in st.produces}
    by_name = {st.name: st for st in stages}
    wanted: dict[str, Stage] = {}
    todo = [by_name[t] for t in targets]
    while todo:
        st = todo.pop()
        if st.name in wanted:
            continue
        wanted[st.name] = st
        todo.extend(by_product[r] for r in st.requires if r in by_product)
    return [st for st in stages if st.name in wanted]


class Fingerprints:
    """Content digests of artifact values, memoised on disk by (size, mtime_ns)."""

    def __init__(self, memo_path: Path):
        self.memo_path = memo_path
        try:
            self.memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            self.memo = {}
        self.dirty = False

    def file(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns]
        hit = self.memo.get(key)
        if hit and hit[:2] == stamp:
            return hit[2]
        digest = sha256_file(path)
        self.memo[key] = stamp + [digest]
        self.dirty = True
        return digest

    def of(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.of(v) for k, v in sorted(value.items())}
        if isinstance(value, (list, tuple)):
            return [self.of(v) for v in value]
        if isinstance(value, str) and value.startswith("/") and os.path.exists(value):
            p = Path(value)
            if p.is_dir():
                return {str(f.relative_to(p)): self.file(f) for f in sorted(p.rglob("*")) if f.is_file()}
            return self.file(p)
        return value

    def save(self) -> None:
        if self.dirty:
            atomic_write_json(self.memo_path, self.memo)
            self.dirty = False


def config_values(ctx: Context, keys: Iterable[str], fp: "Fingerprints") -> dict[str, Any]:
    """The values of ``keys``; a string naming an existing file (``export.calibration``,
    ``export.imatrix``, ...) also carries the file's fingerprint, so editing the file in place
    invalidates the stage like editing the config does."""

    def with_file_content(value):
        if isinstance(value, dict):
            return {k: with_file_content(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [with_file_content(v) for v in value]
        if isinstance(value, str) and value and "\n" not in value:
            try:
                path = ctx.config.resolve(value)
                if path.is_file():
                    return {"value": value, "file": fp.file(path.resolve())}
            except (OSError, ValueError):
                pass
        return value

    out = {}
    for key in keys:
        section, _, field_name = key.partition(".")
        values = ctx.config.section(section)
        out[key] = with_file_content(values[field_name] if field_name else values)
    return out


def run(ctx: Context, stages: list[Stage], pm, *, force: Iterable[str] = ()) -> Context:
    """Run ``stages`` in order; returns the context holding every artifact."""
    from edgelora.plugins import plugin_version

    force = set(force)
    unknown = sorted(force - set(ctx.registry.stages))
    if unknown:
        raise UsageError(f"--force {', '.join(unknown)}: no such stage (stages: {', '.join(ctx.registry.stages)})")
    cache_dir = ctx.work_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    fp = Fingerprints(cache_dir / "fingerprints.json")
    total = len(stages)
    for i, stage in enumerate(stages, 1):
        provider = ctx.registry.providers.get(("stages", stage.name), "?")
        record_path = cache_dir / f"{stage.name}.json"
        key = None
        if stage.cacheable:
            inputs = {r: fp.of(ctx.artifacts.get(r)) for r in stage.requires}
            key = sha256_json({
                "stage": stage.name, "version": stage.version,
                "code": f"{stage.run.__module__}.{stage.run.__qualname__}",
                "plugin": provider, "plugin_version": plugin_version(pm, provider),
                "config": config_values(ctx, stage.config_keys, fp), "inputs": inputs,
                "plugins": {f"{kind}:{name}": [p, plugin_version(pm, p)]
                            for (kind, name), p in sorted(ctx.registry.providers.items())
                            if kind in stage.plugin_kinds},
            })
            if stage.name not in force:
                cached = _load_record(record_path)
                if cached and cached.get("key") == key and _outputs_intact(fp, cached):
                    ctx = ctx.evolve(cached["artifacts"])
                    ctx.log(f"[{i}/{total}] {stage.name}: skipped, inputs and config unchanged")
                    continue
        ctx.log(f"[{i}/{total}] {stage.name}: running")
        t0 = time.monotonic()
        produced = pm.hook.edgelora_run_stage(stage=stage, context=ctx)
        if produced is None:
            raise EdgeloraError(f"stage {stage.name!r} ({provider}): no plugin ran it")
        missing = [p for p in stage.produces if p not in produced]
        if missing:
            raise EdgeloraError(
                f"stage {stage.name!r} ({provider}): expected artifacts {list(stage.produces)}, "
                f"got {sorted(produced)}")
        ctx = ctx.evolve(produced)
        ctx.log(f"[{i}/{total}] {stage.name}: done in {time.monotonic() - t0:.1f} s")
        if stage.cacheable:
            atomic_write_json(record_path, {
                "key": key, "artifacts": produced, "outputs": fp.of(produced)})
        fp.save()
    fp.save()
    return ctx


def _load_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _outputs_intact(fp: Fingerprints, record: dict) -> bool:
    try:
        return fp.of(record["artifacts"]) == record["outputs"]
    except (OSError, KeyError):
        return False


def _paths_in(value: Any) -> Iterable[Path]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _paths_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _paths_in(v)
    elif isinstance(value, str) and value.startswith("/"):
        yield Path(value)


# What `clean` removes when no record names it: model-sized files. Reports (json, md, png) stay.
HEAVY_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".dat", ".tar", ".npy")


def _leftover(name: str) -> bool:
    """A temporary of an interrupted atomic write (fsutil names them .NAME.*.partial/.staging/.old-PID)."""
    return name.startswith(".") and (name.endswith(".partial") or ".staging" in name or ".old-" in name)


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return path.lstat().st_size


def clean(work_dir: Path, *, dry_run: bool = False) -> dict:
    """Remove from ``work_dir/work`` the model files (GGUF, safetensors, ...) no stage's last
    recorded run names (earlier runs' GGUFs, old quantizations, finished runs' checkpoints) and the
    leftovers of interrupted writes. Kept: every path a record in ``cache/`` names, every report,
    the fetched base (``base/``), the records, and checkpoints while no finished training is
    recorded (``train --resume`` needs them). Returns {"removed": [paths], "bytes": freed}."""
    import shutil

    work = work_dir / "work"
    if not work.is_dir():
        return {"removed": [], "bytes": 0}
    keep: set[Path] = set()
    for record_path in sorted((work_dir / "cache").glob("*.json")):
        record = _load_record(record_path)
        if record and "artifacts" in record:
            keep |= {p.resolve() for p in _paths_in(record["artifacts"])}
    if not (work_dir / "cache" / "train.json").is_file():
        keep.add((work / "train" / "checkpoints").resolve())
    removed, freed = [], 0

    def sweep(folder: Path) -> None:
        nonlocal freed
        for entry in sorted(folder.iterdir()):
            real = entry.resolve()
            if real in keep or any(k in real.parents for k in keep):
                continue
            is_dir = entry.is_dir() and not entry.is_symlink()
            if is_dir and not _leftover(entry.name):
                sweep(entry)
                if not dry_run and not any(entry.iterdir()):
                    entry.rmdir()
                continue
            if not (_leftover(entry.name) or entry.suffix.lower() in HEAVY_SUFFIXES):
                continue
            removed.append(str(entry))
            freed += _size(entry)
            if not dry_run:
                shutil.rmtree(entry) if is_dir else entry.unlink()

    sweep(work)
    return {"removed": removed, "bytes": freed}
