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

from edgelora.errors import ConversionError, DiskFullError, InstallError
from edgelora.util.files import fsync_dir, human_bytes, sha256_bytes, write_new_file
from edgelora.bundle.manifest import compare_versions
from edgelora.host.modelfile_parse import from_target, read_bundle_modelfile
from edgelora.host.store import CONFIG_MEDIA, JOURNAL, LAYER_MEDIA, MANIFEST_MEDIA, Store, parse_model_name, store_os_error

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


def plan_blobs(root: Path, manifest: dict, modelfile: str = MODELFILE) -> tuple[list[Blob], Blob]:
    """The layers ``ollama create`` would make from one of the bundle's Modelfiles, and the
    config blob. ``root`` is verify's private copy: parsed exactly as verify parsed it."""
    from edgelora.gguf.reader import read_metadata

    files = {e["path"]: e for e in manifest["files"]}
    if modelfile not in files:
        raise InstallError(f"{manifest['name']}: the bundle has no {modelfile}")
    mf = read_bundle_modelfile(root, modelfile, files[modelfile])
    target = from_target(modelfile, mf, files)
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
        meta = read_metadata(root / target, arrays=False)
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


def check_rollback(records: dict, manifest: dict, manifest_sha: str, *, allow_downgrade: bool,
                   model: str | None = None) -> None:
    """Refuse a lower version, or a version number reused for other content, of what is
    installed: compared with every install of the same bundle, and with whatever bundle is
    installed now under the model name being replaced (``model``, case-insensitive as Ollama
    treats names), so ``--name`` cannot put an older model over a newer one."""
    if allow_downgrade:
        return
    target = model.casefold() if model else None
    for key, rec in sorted(records.get("models", {}).items()):
        if not isinstance(rec, dict):
            continue
        same_bundle = rec.get("bundle") == manifest["name"]
        names = [key] + [str(a) for a in rec.get("aliases") or []]
        same_model = target is not None and any(n.casefold() == target for n in names)
        if not (same_bundle or same_model):
            continue
        installed = str(rec.get("version"))
        what = f"{rec.get('bundle')} {installed} is installed as {key}"
        cmp = compare_versions(manifest["version"], installed)
        if cmp < 0:
            raise InstallError(f"rollback refused: {what}; this bundle is the older {manifest['name']} "
                               f"{manifest['version']} (--allow-downgrade to force)")
        if cmp == 0 and rec.get("manifest_sha256") != manifest_sha:
            raise InstallError(f"version reuse refused: {what} with different content (manifest sha256 "
                               f"{str(rec.get('manifest_sha256'))[:16]}… vs {manifest_sha[:16]}…; "
                               "--allow-downgrade to force)")


# ---- verification ------------------------------------------------------------------------------


def _verify(bundle: Path, *, trust, run_probes: bool, extract_to: Path, log, allow_failed_gate: bool = False) -> dict:
    from edgelora.host.verify import first_failure, verify_bundle

    log(f"verifying {bundle}")
    report = verify_bundle(bundle, trust=trust, run_probes=run_probes, extract_to=extract_to,
                           allow_failed_gate=allow_failed_gate)
    if not report["ok"]:
        raise InstallError(f"{bundle}: verification failed, nothing installed: {first_failure(report)}")
    return report


def _model_name(name: str | None, manifest: dict, quant_tag: str | None = None) -> tuple[str, str]:
    if name:
        return parse_model_name(name)
    wanted = (manifest.get("ollama") or {}).get("model") or f"{manifest['name']}:{manifest['version']}"
    model, tag = parse_model_name(str(wanted))
    return parse_model_name(f"{model}:{tag}-{quant_tag}" if quant_tag else f"{model}:{tag}")


def install_record(manifest: dict, report: dict, name: str, tag: str, how: str, digests: list[str]) -> dict:
    return {"bundle": manifest["name"], "version": manifest["version"],
            "manifest_sha256": report["manifest_sha256"], "signed_by": report.get("signed_by"),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "via": how,
            "model": f"{name}:{tag}", "blobs": digests}


# ---- into the store -------------------------------------------------------------------------------


def _stage_blob(blob: Blob, staging: Path) -> Path:
    staged = staging / f"blob-{blob.hex}"
    if blob.data is not None:
        write_new_file(staged, blob.data)
        return staged
    # verify's private copy, written and hashed by this process moments ago under the lock:
    # a rename, not a second read of the bundle
    os.rename(blob.source, staged)
    with open(staged, "rb") as f:
        os.fsync(f.fileno())
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
    modelfile: str = MODELFILE
    aliases: list = None   # tags written: [tag] and "latest" unless --no-latest


def verify_and_plan(bundle: Path, records_store, staging: Path, *, name, trust, run_probes, allow_downgrade,
                    log, allow_failed_gate: bool = False, quant: str | None = None,
                    latest: bool = True) -> CheckedBundle:
    """Verify ``bundle`` into a private copy under ``staging``, check rollback against the
    install records in ``records_store`` (for NAME:latest too, when it will move), and plan
    the Ollama blobs from the chosen Modelfile: every check either install path must pass
    before it changes anything."""
    report = _verify(bundle, trust=trust, run_probes=run_probes, extract_to=staging / "extract", log=log,
                     allow_failed_gate=allow_failed_gate)
    _checkpoint("verified")
    root = Path(report["root"])
    manifest = report["manifest"]
    modelfile, quant_tag = choose_modelfile(root, manifest, quant)
    name_, tag = _model_name(name, manifest, quant_tag)
    records = records_store.load_records()
    aliases = [tag] + (["latest"] if latest and tag != "latest" else [])
    for t in aliases:
        check_rollback(records, manifest, report["manifest_sha256"], allow_downgrade=allow_downgrade,
                       model=f"{name_}:{t}")
    layers, config = plan_blobs(root, manifest, modelfile)
    return CheckedBundle(report, root, manifest, name_, tag, records, layers, config, modelfile, aliases)


def take_aliases(records: dict, key: str, aliases: list[str]) -> None:
    """``aliases`` (NAME:latest) now name ``key``'s model: drop them from other records."""
    wanted = {a.casefold() for a in aliases}
    for other, rec in records.get("models", {}).items():
        if other != key and isinstance(rec, dict) and isinstance(rec.get("aliases"), list):
            rec["aliases"] = [a for a in rec["aliases"] if str(a).casefold() not in wanted]


def choose_modelfile(root: Path, manifest: dict, quant: str | None) -> tuple[str, str | None]:
    """(Modelfile to install, tag suffix): ``Modelfile`` by default, ``Modelfile.<QUANT>`` for
    ``--quant`` (a tag of its own unless it is the default's quantization)."""
    from edgelora.host.modelfile_parse import is_bundle_modelfile

    files = {e["path"]: e for e in manifest["files"]}
    if MODELFILE not in files:
        raise InstallError(f"{manifest['name']}: the bundle has no {MODELFILE}")
    default_gguf = from_target(MODELFILE, read_bundle_modelfile(root, MODELFILE, files[MODELFILE]), files)
    default_quant = default_gguf.rsplit(".", 2)[-2] if default_gguf.count(".") >= 2 else None
    if quant is None or (default_quant and quant.casefold() == default_quant.casefold()):
        return MODELFILE, None
    choices = {a.split(".", 1)[1].casefold(): a for a in files if is_bundle_modelfile(a) and a != MODELFILE}
    if quant.casefold() not in choices:
        have = sorted([default_quant or "default"] + [a.split(".", 1)[1] for a in choices.values()])
        raise InstallError(f"--quant {quant}: the bundle has no Modelfile.{quant} (quantizations: {', '.join(have)})")
    arc = choices[quant.casefold()]
    return arc, arc.split(".", 1)[1].lower()


def install_into_store(bundle: Path, store: Store, *, name=None, allow_downgrade=False, trust=None,
                       run_probes=True, lock_timeout=60.0, log=print, allow_failed_gate=False, quant=None,
                       latest=True) -> dict:
    with store.lock(timeout=lock_timeout, log=log):
        staging = store.new_staging()
        committed = False
        missing: list[Blob] = []
        try:
            checked = verify_and_plan(bundle, store, staging, name=name, trust=trust, run_probes=run_probes,
                                      allow_downgrade=allow_downgrade, log=log, allow_failed_gate=allow_failed_gate,
                                      quant=quant, latest=latest)
            report, manifest, records = checked.report, checked.manifest, checked.records
            name_, tag, layers, config = checked.name, checked.tag, checked.layers, checked.config
            blobs = layers + [config]
            missing = [b for b in blobs if not store.blob_ok(b.hex, b.size)]
            block = store.block_size()
            # the GGUF is renamed from verify's private copy; only the small blobs take new space
            need = sum(-(-b.size // block) * block for b in missing if b.source is None) + 4 * block
            if need > store.free_bytes():
                raise DiskFullError(f"disk full: need {human_bytes(need)}, have {human_bytes(store.free_bytes())} "
                                    f"free in {store.root}")
            staged = [(b, _stage_blob(b, staging)) for b in missing]
            _checkpoint("blobs-staged")
            paths = [store.manifest_path(name_, t) for t in checked.aliases]  # NAME:TAG, then NAME:latest
            store._real_dirs(paths[0].parent)
            old_digests: set[str] = set()
            for path in paths:
                if path.is_symlink():
                    raise InstallError(f"{path}: symlink refused; never written through")
                if path.is_file():
                    with contextlib.suppress(InstallError):
                        old_digests |= store.manifest_digests(store.read_manifest(path))
            # The journal names every blob that may end up unnamed if we die from here on (ours,
            # before the manifest names them; the replaced version's, after): whoever takes the
            # lock next deletes those no manifest names. It also carries the install record: a
            # crash after the manifest commit and before the record is written is rolled
            # forward by the next lock holder (store.clean_stale).
            digests = [b.hex for b in blobs]
            key = f"{name_}:{tag}"
            record = install_record(manifest, report, name_, tag, "store", digests)
            record["aliases"] = [f"{name_}:{t}" for t in checked.aliases[1:]]
            record["modelfile"] = checked.modelfile
            _stage_file(staging, JOURNAL, json.dumps({"blobs": sorted({b.hex for b, _ in staged} | old_digests),
                                                      "record": {"key": key, "value": record}}).encode())
            for b, path in staged:
                os.replace(path, store.blob_path(b.hex))
            fsync_dir(store.blobs, strict=True)
            _checkpoint("blobs-moved")
            take_aliases(records, key, record["aliases"])
            records["models"][key] = record
            body = ollama_manifest_bytes(layers, config)
            staged_manifests = [_stage_file(staging, f"manifest-{i}.json", body) for i in range(len(paths))]
            staged_records = _stage_file(staging, "installs.json",
                                         (json.dumps(records, indent=2, sort_keys=True) + "\n").encode())
            # the commit point: every file is complete on disk; renames cannot run out of space
            os.replace(staged_manifests[0], paths[0])
            fsync_dir(paths[0].parent, strict=True)
            committed = True
            _checkpoint("manifest-committed")
            for staged_manifest, path in zip(staged_manifests[1:], paths[1:]):
                os.replace(staged_manifest, path)
                fsync_dir(path.parent, strict=True)
            os.replace(staged_records, store.records_path)
            fsync_dir(store.own, strict=True)
            (staging / JOURNAL).unlink()
            garbage = old_digests - store.referenced_blobs()
            for hex_digest in garbage:
                with contextlib.suppress(FileNotFoundError):
                    store.blob_path(hex_digest).unlink()
            manifest_path = paths[0]
        except OSError as e:
            if not committed:
                store.clean_stale()
            need = sum(b.size for b in missing if b.source is None) + 4 * store.block_size()
            raise store_os_error(e, f"installing {bundle.name}", store, need) from e
        except BaseException:
            if not committed:
                store.clean_stale()
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log(f"installed {name_}:{tag} into {store.root} ({len(missing)} new blob(s), {len(blobs) - len(missing)} reused)")
    return {"model": f"{name_}:{tag}", "store": str(store.root), "manifest": str(manifest_path), "via": "store",
            "aliases": checked.aliases[1:] and [f"{name_}:{t}" for t in checked.aliases[1:]], "version": manifest["version"], "new_blobs": len(missing), "reused_blobs": len(blobs) - len(missing),
            "removed_blobs": len(garbage), "verify": {k: v for k, v in report.items() if k != "manifest"}}
