"""``edgelora install``: verify a bundle, then put it into Ollama without ever leaving a
half-installed model.

Two ways in:

- the model store directly (``--store DIR``, ``$OLLAMA_MODELS``, or when no ``ollama``
  binary is on PATH): blobs and manifest written like ``ollama create`` would, atomically,
  under the store lock (see ``store.py``);
- ``ollama create`` with the bundle's Modelfile when the binary is present.

Either way the bundle is verified first (signature when a trust store is given, manifest,
every file, bounded GGUF header, llama-cpp-python load and probe replay), a rollback check
refuses a lower version or a reused version number with different content unless
``allow_downgrade``, and edgelora keeps a small record of what it installed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from edgelora.errors import ConversionError, InstallError
from edgelora.util.files import fsync_dir, human_bytes, sha256_bytes, write_new_file
from edgelora.bundle.manifest import compare_versions
from edgelora.host.modelfile_parse import MAX_MODELFILE, parse_modelfile
from edgelora.host.store import CONFIG_MEDIA, JOURNAL, LAYER_MEDIA, MANIFEST_MEDIA, Store, store_os_error, parse_model_name

MODELFILE = "Modelfile"


@dataclass
class Blob:
    kind: str                 # model, template, system, params, license, messages, config
    hex: str
    size: int
    source: Path | None = None   # a bundle file to copy (the GGUF)
    data: bytes | None = None    # small blobs built here

    def descriptor(self) -> dict:
        media = CONFIG_MEDIA if self.kind == "config" else LAYER_MEDIA[self.kind]
        return {"mediaType": media, "digest": f"sha256:{self.hex}", "size": self.size}


def _checkpoint(name: str) -> None:
    # Fault injection for the kill -9 tests: the process kills itself at a named point.
    if os.environ.get("EDGELORA_TEST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _small_blob(kind: str, data: bytes) -> Blob:
    return Blob(kind, sha256_bytes(data), len(data), data=data)


def _human_count(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}".rstrip("0").rstrip(".") + unit
    return str(n)


def _file_type_name(value) -> str:
    try:
        from gguf.constants import LlamaFileType

        return LlamaFileType(int(value)).name.replace("MOSTLY_", "").replace("ALL_", "")
    except (ValueError, TypeError, ImportError):
        return "unknown"


def _go_arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


def plan_blobs(root: Path, manifest: dict) -> tuple[list[Blob], Blob]:
    """The layers ``ollama create`` would make from the bundle's Modelfile, and the config blob."""
    from edgelora.gguf.reader import read_metadata

    files = {e["path"]: e for e in manifest["files"]}
    if MODELFILE not in files:
        raise InstallError(f"{manifest['name']}: the bundle has no Modelfile")
    if files[MODELFILE]["size"] > MAX_MODELFILE:
        raise InstallError(f"{MODELFILE}: larger than {MAX_MODELFILE} bytes")
    text = (root / MODELFILE).read_bytes().decode("utf-8", "strict")
    mf = parse_modelfile(text)
    target = os.path.normpath(mf.from_path).replace(os.sep, "/")
    if mf.from_path.startswith("/") or target not in files or not target.endswith(".gguf"):
        raise InstallError(f"{MODELFILE}: FROM {mf.from_path} is not a GGUF in the bundle")
    gguf = files[target]
    layers = [Blob("model", gguf["sha256"], gguf["size"], source=root / target)]
    if mf.template is not None:
        layers.append(_small_blob("template", mf.template.encode("utf-8")))
    if mf.system is not None:
        layers.append(_small_blob("system", mf.system.encode("utf-8")))
    for lic in mf.licenses:
        layers.append(_small_blob("license", lic.encode("utf-8")))
    if mf.parameters:
        layers.append(_small_blob("params", json.dumps(mf.parameters, sort_keys=True,
                                                       separators=(",", ":")).encode("utf-8")))
    if mf.messages:
        layers.append(_small_blob("messages", json.dumps(mf.messages, separators=(",", ":"),
                                                         ensure_ascii=False).encode("utf-8")))
    try:
        meta = read_metadata(root / target)
    except ConversionError as e:
        raise InstallError(str(e)) from e
    arch = str(meta.kv.get("general.architecture") or "unknown")
    n_params = sum(math.prod(shape) for _, shape, _, _ in meta.tensors)
    config = {"model_format": "gguf", "model_family": arch, "model_families": [arch],
              "model_type": _human_count(n_params), "file_type": _file_type_name(meta.kv.get("general.file_type")),
              "architecture": _go_arch(), "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{b.hex}" for b in layers]}}
    return layers, _small_blob("config", json.dumps(config, separators=(",", ":")).encode("utf-8"))


def ollama_manifest_bytes(layers: list[Blob], config: Blob) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA, "config": config.descriptor(),
           "layers": [b.descriptor() for b in layers]}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


# ---- rollback protection ----------------------------------------------------------------------


def check_rollback(records: dict, manifest: dict, manifest_sha: str, *, allow_downgrade: bool) -> None:
    """Refuse a lower version of an installed bundle, or its version number reused for other content."""
    if allow_downgrade:
        return
    for key, rec in sorted(records.get("models", {}).items()):
        if not isinstance(rec, dict) or rec.get("bundle") != manifest["name"]:
            continue
        installed = str(rec.get("version"))
        cmp = compare_versions(manifest["version"], installed)
        if cmp < 0:
            raise InstallError(f"rollback refused: {manifest['name']} {installed} is installed as {key}; "
                               f"this bundle is the older {manifest['version']} (--allow-downgrade to force)")
        if cmp == 0 and rec.get("manifest_sha256") != manifest_sha:
            raise InstallError(f"version reuse refused: {manifest['name']} {installed} is installed as {key} "
                               f"with different content (manifest sha256 {str(rec.get('manifest_sha256'))[:16]}… "
                               f"vs {manifest_sha[:16]}…; --allow-downgrade to force)")


# ---- verification ------------------------------------------------------------------------------


def _verify(bundle: Path, *, trust, run_probes: bool, extract_to: Path, log) -> dict:
    from edgelora.host.verify import first_failure, verify_bundle

    log(f"verifying {bundle}")
    report = verify_bundle(bundle, trust=trust, run_probes=run_probes, extract_to=extract_to)
    if not report["ok"]:
        raise InstallError(f"{bundle}: verification failed, nothing installed: {first_failure(report)}")
    return report


def _model_name(name: str | None, manifest: dict) -> tuple[str, str]:
    wanted = name or (manifest.get("ollama") or {}).get("model") or f"{manifest['name']}:{manifest['version']}"
    return parse_model_name(str(wanted))


def install_record(manifest: dict, report: dict, name: str, tag: str, how: str, digests: list[str]) -> dict:
    return {"bundle": manifest["name"], "version": manifest["version"],
            "manifest_sha256": report["manifest_sha256"], "signed_by": report.get("signed_by"),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "via": how,
            "model": f"{name}:{tag}", "blobs": digests}


# ---- into the store -------------------------------------------------------------------------------


def _stage_blob(blob: Blob, staging: Path, *, from_tar: bool) -> Path:
    from edgelora.util.hashing import copy_hashed

    staged = staging / f"blob-{blob.hex}"
    if blob.data is not None:
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(blob.data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return staged
    if from_tar:
        # extracted into this staging folder and hashed by verify moments ago, under the lock:
        # a rename, not a second copy
        os.rename(blob.source, staged)
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        return staged
    src = os.open(blob.source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        dst = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            read, digest = copy_hashed(src, dst, blob.size)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    if read != blob.size or digest != blob.hex:
        raise InstallError(f"{blob.source}: changed since it was verified (sha256 {digest}, expected {blob.hex})")
    return staged


def _stage_file(staging: Path, name: str, data: bytes) -> Path:
    tmp = staging / name
    write_new_file(tmp, data)
    return tmp


@dataclass
class CheckedBundle:
    """A verified bundle, the model name it installs as, and what the store will hold for it."""
    report: dict
    root: Path
    manifest: dict
    name: str
    tag: str
    records: dict
    layers: list
    config: object


def verify_and_plan(bundle: Path, records_store, staging: Path, *, name, trust, run_probes, allow_downgrade,
                    log) -> CheckedBundle:
    """Verify ``bundle`` (extracting a .tar under ``staging``), check rollback against the
    install records in ``records_store``, and plan the Ollama blobs from its Modelfile: every
    check either install path must pass before it changes anything."""
    report = _verify(bundle, trust=trust, run_probes=run_probes, extract_to=staging / "extract", log=log)
    root = Path(report["root"])
    manifest = report["manifest"]
    name_, tag = _model_name(name, manifest)
    records = records_store.load_records()
    check_rollback(records, manifest, report["manifest_sha256"], allow_downgrade=allow_downgrade)
    layers, config = plan_blobs(root, manifest)
    return CheckedBundle(report, root, manifest, name_, tag, records, layers, config)


def install_into_store(bundle: Path, store: Store, *, name=None, allow_downgrade=False, trust=None,
                       run_probes=True, lock_timeout=60.0, log=print) -> dict:
    from_tar = bundle.is_file()
    if from_tar and store.free_bytes() < bundle.stat().st_size:
        raise InstallError(f"disk full: need {human_bytes(bundle.stat().st_size)}, have "
                           f"{human_bytes(store.free_bytes())} free in {store.root} (to unpack {bundle.name})")
    with store.lock(timeout=lock_timeout, log=log):
        staging = store.new_staging()
        committed = False
        missing: list[Blob] = []
        try:
            checked = verify_and_plan(bundle, store, staging, name=name, trust=trust, run_probes=run_probes,
                                      allow_downgrade=allow_downgrade, log=log)
            report, manifest, records = checked.report, checked.manifest, checked.records
            name_, tag, layers, config = checked.name, checked.tag, checked.layers, checked.config
            blobs = layers + [config]
            missing = [b for b in blobs if not store.blob_ok(b.hex, b.size)]
            block = store.block_size()
            need = sum(-(-b.size // block) * block for b in missing if not (from_tar and b.source)) + 4 * block
            if need > store.free_bytes():
                raise InstallError(f"disk full: need {human_bytes(need)}, have {human_bytes(store.free_bytes())} "
                                   f"free in {store.root}")
            staged = [(b, _stage_blob(b, staging, from_tar=from_tar)) for b in missing]
            _checkpoint("blobs-staged")
            manifest_path = store.manifest_path(name_, tag)
            store._real_dirs(manifest_path.parent)
            old_digests: set[str] = set()
            if manifest_path.is_symlink():
                raise InstallError(f"{manifest_path}: symlink refused; never written through")
            if manifest_path.is_file():
                with contextlib.suppress(InstallError):
                    old_digests = store.manifest_digests(store.read_manifest(manifest_path))
            # The journal names every blob that may end up unnamed if we die from here on (ours,
            # before the manifest names them; the replaced version's, after): whoever takes the
            # lock next deletes those no manifest names.
            _stage_file(staging, JOURNAL, json.dumps(sorted({b.hex for b, _ in staged} | old_digests)).encode())
            for b, path in staged:
                os.replace(path, store.blob_path(b.hex))
            fsync_dir(store.blobs, strict=True)
            _checkpoint("blobs-moved")
            digests = [b.hex for b in blobs]
            records["models"][f"{name_}:{tag}"] = install_record(manifest, report, name_, tag, "store", digests)
            staged_manifest = _stage_file(staging, "manifest.json", ollama_manifest_bytes(layers, config))
            staged_records = _stage_file(staging, "installs.json",
                                         (json.dumps(records, indent=2, sort_keys=True) + "\n").encode())
            # the commit point: both files are complete on disk; two renames cannot run out of space
            os.replace(staged_manifest, manifest_path)
            fsync_dir(manifest_path.parent, strict=True)
            committed = True
            _checkpoint("manifest-committed")
            os.replace(staged_records, store.records_path)
            fsync_dir(store.own, strict=True)
            (staging / JOURNAL).unlink()
            garbage = old_digests - store.referenced_blobs()
            for hex_digest in garbage:
                with contextlib.suppress(FileNotFoundError):
                    store.blob_path(hex_digest).unlink()
        except OSError as e:
            if not committed:
                store.clean_stale()
            need = sum(b.size for b in missing) or (bundle.stat().st_size if from_tar else 0)
            raise store_os_error(e, f"installing {bundle.name}", store, need) from e
        except BaseException:
            if not committed:
                store.clean_stale()
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log(f"installed {name_}:{tag} into {store.root} ({len(missing)} new blob(s), {len(blobs) - len(missing)} reused)")
    return {"model": f"{name_}:{tag}", "store": str(store.root), "manifest": str(manifest_path), "via": "store",
            "version": manifest["version"], "new_blobs": len(missing), "reused_blobs": len(blobs) - len(missing),
            "removed_blobs": len(garbage), "verify": {k: v for k, v in report.items() if k != "manifest"}}
