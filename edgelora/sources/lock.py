"""``edgelora.lock``: the base model pinned file by file.

Format: JSON (the standard library reads and writes it; TOML would need a writer), one
object with sorted keys so diffs stay small::

    {
      "lock_version": 1,
      "base": {
        "source": "hf" | "local" | "gguf" | "embedded",
        "revision": "<40-hex commit, GGUF sha256, or digest of the file list>",
        "repo": "org/name",              # hf only
        "name": "smollm2-135m-instruct", # embedded only
        "files": {"config.json": "<sha256>", "model.safetensors": "<sha256>", ...}
      }
    }

The first build writes it; every later build checks the base against it and stops on any
difference. Delete the file (or run ``edgelora fetch``) to re-pin deliberately.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgelora.errors import BaseModelError, ConfigError, LockMismatch, NotInCacheError
from edgelora.util.files import atomic_write_json, delete_cached
from edgelora.util.hashing import sha256_file

LOCK_NAME = "edgelora.lock"
LOCK_VERSION = 1
_ENTRY_KEYS = ("source", "revision", "repo", "name", "files")


def lock_path(project_dir: str | Path) -> Path:
    return Path(project_dir) / LOCK_NAME


def read_lock(project_dir: str | Path) -> dict | None:
    """The lock's ``base`` entry, or None when the project has no lock yet."""
    p = lock_path(project_dir)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        entry = data["base"]
        if data.get("lock_version") != LOCK_VERSION or not isinstance(entry.get("files"), dict):
            raise ValueError("unsupported lock_version or no files table")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{p}: malformed lock file ({e}); delete it to re-pin") from None
    return entry


def write_lock(project_dir: str | Path, entry: dict) -> Path:
    """Write (atomically) the lock for a source's result dict; returns the lock path."""
    base = {k: entry[k] for k in _ENTRY_KEYS if entry.get(k) is not None}
    if "files" not in base or "source" not in base:
        raise ConfigError(f"{lock_path(project_dir)}: lock entry needs 'source' and 'files'")
    p = lock_path(project_dir)
    atomic_write_json(p, {"lock_version": LOCK_VERSION, "base": base})
    return p


def check_lock(project_dir: str | Path, base_dir: str | Path, files: dict[str, str] | None = None,
               *, source: str | None = None, revision: str | None = None,
               delete_bad: bool = False) -> dict:
    """Compare a base folder with the lock. Raises on the first difference.

    ``files`` are hashes already computed by the source (recomputed from ``base_dir`` when
    absent). ``delete_bad`` (the hf source) removes a file whose hash differs, so that the
    next ``edgelora fetch`` downloads it again instead of trusting it. Returns
    {"status": "unlocked"} when there is no lock, else {"status": "ok", "checked": n}.
    """
    entry = read_lock(project_dir)
    if entry is None:
        return {"status": "unlocked"}
    where = lock_path(project_dir)
    if source is not None and entry.get("source") != source:
        raise LockMismatch(f"{where}: base source expected {entry.get('source')}, got {source}")
    if revision is not None and entry.get("revision") not in (None, revision):
        raise LockMismatch(f"{where}: base revision expected {entry['revision']}, got {revision}")
    base_dir = Path(base_dir)
    files = dict(files or {})
    for rel in sorted(entry["files"]):
        p = base_dir / rel
        if not p.is_file():
            cls = NotInCacheError if source == "hf" else BaseModelError
            hint = "not in local cache; run `edgelora fetch`" if source == "hf" else "missing base file"
            raise cls(f"{p}: {hint} (pinned in {LOCK_NAME})")
    for rel in sorted(entry["files"]):
        want = entry["files"][rel]
        got = files.get(rel) or sha256_file(base_dir / rel)
        if got != want:
            if delete_bad:
                delete_cached(base_dir / rel)
            raise LockMismatch(f"{base_dir / rel}: sha256 expected {want}, got {got}"
                               + (" (deleted)" if delete_bad else ""))
    extra = sorted(set(files) - set(entry["files"]))
    if extra:
        raise LockMismatch(f"{base_dir / extra[0]}: not pinned in {where}; "
                           "delete the lock to re-pin deliberately")
    return {"status": "ok", "checked": len(entry["files"])}

