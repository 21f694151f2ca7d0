"""What the CLI calls: choose ``ollama create`` or the model store, then install, list or
uninstall."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from edgelora.util.files import fsync_dir
from edgelora.errors import DiskFullError, InstallError, VerifyError
from edgelora.host.installer import install_into_store
from edgelora.host.ollama_create import install_with_ollama, state_store
from edgelora.host.store import Store, default_store, parse_model_name


def _choose(store) -> tuple[str, Store, str | None]:
    if store is not None:
        return "store", Store(store), None
    if os.environ.get("OLLAMA_MODELS"):
        return "store", Store(default_store()), None
    ollama = shutil.which("ollama")
    if ollama:
        return "ollama", state_store(), ollama
    return "store", Store(default_store()), None


def install_bundle(bundle, *, name: str | None = None, store=None, allow_downgrade: bool = False, trust=None,
                   run_probes: bool = True, lock_timeout: float = 60.0, log=print, allow_failed_gate: bool = False,
                   quant: str | None = None, latest: bool = True) -> dict:
    """Verify ``bundle`` and install it as NAME:TAG (and NAME:latest unless ``latest=False``).

    ``quant``: install the bundle's ``Modelfile.<QUANT>`` (its own tag) instead of the default.
    ``allow_failed_gate``: accept a bundle built with ``--no-gate`` whose gates failed."""
    bundle = Path(bundle)
    if bundle.is_symlink():
        raise InstallError(f"{bundle}: symlink refused; pass the real folder or .tar")
    if not bundle.exists():
        raise InstallError(f"{bundle}: no such bundle folder or .tar file")
    if trust is not None and not isinstance(trust, list):
        from edgelora.bundle.signing import load_trust

        trust = load_trust(trust)
    if name is not None:
        parse_model_name(name)
    how, target, ollama = _choose(store)
    try:
        if how == "ollama":
            return install_with_ollama(bundle, ollama, name=name, allow_downgrade=allow_downgrade, trust=trust,
                                       run_probes=run_probes, lock_timeout=lock_timeout, log=log,
                                       allow_failed_gate=allow_failed_gate, quant=quant, latest=latest)
        return install_into_store(bundle, target, name=name, allow_downgrade=allow_downgrade, trust=trust,
                                  run_probes=run_probes, lock_timeout=lock_timeout, log=log,
                                  allow_failed_gate=allow_failed_gate, quant=quant, latest=latest)
    except DiskFullError:
        raise
    except VerifyError as e:
        raise InstallError(f"{bundle}: {e}; nothing installed") from e


def list_installed(store=None) -> list[dict]:
    how, target, _ = _choose(store)
    if not target.records_path.is_file():
        return []
    rows = []
    for key, rec in sorted(target.load_records()["models"].items()):
        row = {"model": key, **{k: rec.get(k) for k in ("bundle", "version", "installed_at", "via", "signed_by")}}
        if how == "store":
            name, tag = parse_model_name(key)
            path = target.manifest_path(name, tag)
            row["present"] = path.is_file()
        rows.append(row)
    return rows


def _remove_model(how: str, target: Store, ollama, key: str, rec: dict, *, strict: bool) -> None:
    """Remove one installed NAME:TAG; its blobs go only when no manifest names them. An alias
    (``strict=False``) that now names another model is left alone."""
    n, t = key.split(":", 1)
    if how == "ollama":
        proc = subprocess.run([ollama, "rm", key], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 and "not found" not in (proc.stderr or "").lower() and strict:
            raise InstallError(f"ollama rm {key} failed: {(proc.stderr or '').strip()[-200:]}")
        return
    path = target.manifest_path(n, t)
    recorded = {d for d in rec.get("blobs") or [] if isinstance(d, str)}
    if path.is_symlink():
        raise InstallError(f"{path}: symlink refused; not removing through it")
    if path.is_file():
        if target.manifest_digests(target.read_manifest(path)) != recorded:
            if not strict:
                return
            raise InstallError(f"{path}: changed since edgelora installed {key}; not removing it")
        path.unlink()
        fsync_dir(path.parent, strict=True)
        target.remove_empty_dirs(path.parent)
    # manifest gone (e.g. `ollama rm`) or just removed: drop the blobs nothing names
    for hex_digest in recorded - target.referenced_blobs():
        if re.fullmatch(r"[0-9a-f]{64}", hex_digest):
            with contextlib.suppress(FileNotFoundError):
                target.blob_path(hex_digest).unlink()


def uninstall(model: str, store=None, *, lock_timeout: float = 60.0, log=print) -> list[str]:
    """Remove models edgelora installed (``NAME`` = every tag of it); blobs another manifest
    still names are kept."""
    how, target, ollama = _choose(store)
    name, _, tag = model.partition(":")
    parse_model_name(model)
    with target.lock(timeout=lock_timeout, log=log):
        records = target.load_records()

        def matches(k: str) -> bool:
            return k.split(":", 1)[0] == name and (not tag or k.split(":", 1)[1] == tag)

        keys = [k for k in records["models"] if matches(k)]
        # NAME:latest is an alias in the record of the version it points at
        alias_only = [(k, a) for k, rec in records["models"].items() if k not in keys
                      for a in (rec.get("aliases") or []) if isinstance(a, str) and tag and matches(a)]
        if not keys and not alias_only:
            raise InstallError(f"{model}: not installed by edgelora in {target.root} (see `edgelora list`)")
        staging = target.new_staging()
        removed = []
        try:
            for key, alias in alias_only:
                _remove_model(how, target, ollama, alias, records["models"][key], strict=False)
                records["models"][key]["aliases"].remove(alias)
                removed.append(alias)
                target.write_records(records, staging)
            for key in keys:
                rec = records["models"][key]
                for alias in [a for a in rec.get("aliases") or [] if isinstance(a, str)]:
                    _remove_model(how, target, ollama, alias, rec, strict=False)
                    removed.append(alias)
                _remove_model(how, target, ollama, key, rec, strict=True)
                del records["models"][key]
                removed.append(key)
                target.write_records(records, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for key in removed:
        log(f"uninstalled {key}")
    return removed
