"""Write ``dist/<name>-<version>/`` and ``dist/<name>-<version>.tar``, atomically.

Layout: the caller's files, README.md, manifest.json (every file but itself and SHA256SUMS,
with size and sha256, plus provenance), SHA256SUMS (``sha256sum -c`` format, covering the
manifest too). Files are hashed after they are placed in the staging folder, so the manifest
describes the bytes that ship, not the bytes the caller meant to ship.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from pathlib import Path

from edgelora.util.files import atomic_dir, atomic_path, sha256_bytes
from edgelora.util.hashing import sha256_file
from edgelora.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
SIGNATURE = "manifest.sig"
README = "README.md"
MODEL_SIGNATURE = "model.sig"  # OpenSSF model-signing format, over every other file (edgelora.bundle.ossf_signature)
RESERVED = {MANIFEST, SUMS, SIGNATURE, MODEL_SIGNATURE}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_COMPONENT_BAD = re.compile(r"[\x00-\x1f\x7f\\]")


def check_relpath(path) -> str | None:
    """Why ``path`` is not a clean relative bundle path, or None if it is."""
    if not isinstance(path, str) or not path:
        return "empty or not a string"
    if len(path) > 1024:
        return "longer than 1024 characters"
    if path.startswith("/"):
        return "absolute"
    if _COMPONENT_BAD.search(path):
        return "contains a backslash or control character"
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' component"
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            return "has a component longer than 255 bytes"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def _place(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _check_modelfiles(staging: Path, arcnames: set[str]) -> None:
    # A FROM path that does not exist makes Ollama try to pull it from the network.
    for arc in arcnames:
        if not arc.rsplit("/", 1)[-1].startswith("Modelfile"):
            continue
        folder = arc.rsplit("/", 1)[0] if "/" in arc else ""
        for line in (staging / arc).read_text(encoding="utf-8").split("\n"):
            if line[:5].upper() == "FROM ":
                target = line[5:].strip()
                rel = os.path.normpath(os.path.join(folder, target)).replace(os.sep, "/")
                if target.startswith("/") or rel not in arcnames:
                    raise BundleError(f"{arc}: FROM {target} does not name a file in the bundle")


def _refuse_version_reuse(final: Path, manifest: dict, replace: bool) -> None:
    old = final / MANIFEST
    if replace or not old.is_file():
        return
    try:
        old_files = json.loads(old.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        old_files = None
    if old_files != manifest["files"]:
        raise BundleError(f"{final}: already holds {manifest['name']} {manifest['version']} with different files; "
                          "bump [project] version, or rebuild with --force bundle to replace it")


def sums_text(entries: list[tuple[str, str]]) -> str:
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(entries))


def write_bundle(*, dist_dir, name: str, version: str, files: dict, manifest_extra: dict | None = None,
                 readme_text: str | None = None, signing_key=None, model_signing_key=None,
                 replace: bool = False) -> dict:
    """Write the bundle folder and its tar; returns {dir, tar, manifest, tar_sha256}.

    ``signing_key`` (a path to an Ed25519 PEM private key, see ``edgelora keygen``) adds
    manifest.sig, a signature over the exact bytes of manifest.json. ``model_signing_key`` (an
    ECDSA P-256/384/521 PEM key) adds model.sig, the OpenSSF model-signing signature over every
    other file of the folder, written last. A bundle already in ``dist_dir`` under the same name
    and version with other content is not replaced unless ``replace`` (two different models must
    never carry one version number).
    """
    private_key = None
    if signing_key:
        from edgelora.bundle.signing import load_private_key

        private_key = load_private_key(signing_key)
    ec_key = None
    if model_signing_key:
        from edgelora.bundle.ossf_signature import load_ec_private_key

        ec_key = load_ec_private_key(model_signing_key)
    dist_dir = Path(dist_dir)
    for field, value in (("name", name), ("version", version)):
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            raise BundleError(f"bundle {field}: {value!r} must be 1-128 of [A-Za-z0-9._+-], not starting with a symbol")
    extra = dict(manifest_extra or {})
    clash = {"schema_version", "name", "version", "files"} & extra.keys()
    if clash:
        raise BundleError(f"manifest_extra: may not set {sorted(clash)}")
    sources: dict[str, Path] = {}
    folded: dict[str, str] = {}
    for arc, src in files.items():
        why = check_relpath(arc)
        if why:
            raise BundleError(f"bundle file {arc!r}: path {why}")
        if arc in RESERVED or (arc == README and readme_text is not None):
            raise BundleError(f"bundle file {arc}: name is reserved for edgelora")
        if arc.casefold() in folded:
            raise BundleError(f"bundle file {arc}: collides with {folded[arc.casefold()]} on case-insensitive disks")
        folded[arc.casefold()] = arc
        src = Path(src)
        if not src.is_file():
            raise BundleError(f"bundle file {arc}: source {src} is not a regular file")
        sources[arc] = src
    stem = f"{name}-{version}"
    final = dist_dir / stem
    with atomic_dir(final) as staging:
        for arc, src in sources.items():
            _place(src, staging / arc)
        if readme_text is not None:
            (staging / README).write_text(readme_text, encoding="utf-8", newline="\n")
            sources[README] = staging / README
        _check_modelfiles(staging, set(sources))
        entries = []
        for arc in sorted(sources):
            path = staging / arc
            entries.append({"path": arc, "size": path.stat().st_size, "sha256": sha256_file(path)})
        manifest = {"schema_version": SCHEMA_VERSION, "name": name, "version": version, "files": entries, **extra}
        try:
            manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
                              + "\n").encode("utf-8")
        except (TypeError, ValueError) as e:
            raise BundleError(f"manifest_extra: not JSON-serialisable: {e}") from e
        if len(manifest_bytes) > (1 << 20):
            raise BundleError(f"manifest.json: {len(manifest_bytes)} bytes exceeds the 1 MiB limit verify enforces")
        _refuse_version_reuse(final, manifest, replace)
        (staging / MANIFEST).write_bytes(manifest_bytes)
        if private_key is not None:
            from edgelora.bundle.signing import sign_manifest

            (staging / SIGNATURE).write_bytes(sign_manifest(manifest_bytes, private_key))
        sums = [(e["path"], e["sha256"]) for e in entries] + [(MANIFEST, sha256_bytes(manifest_bytes))]
        (staging / SUMS).write_text(sums_text(sums), encoding="utf-8", newline="\n")
        if ec_key is not None:
            from edgelora.bundle.ossf_signature import sign_folder

            (staging / MODEL_SIGNATURE).write_bytes(sign_folder(staging, ec_key, model_name=stem))
    tar_path = dist_dir / f"{stem}.tar"
    members = ([MANIFEST, SUMS] + ([SIGNATURE] if private_key is not None else [])
               + ([MODEL_SIGNATURE] if ec_key is not None else []) + [e["path"] for e in entries])
    with atomic_path(tar_path) as tmp:
        _write_tar(tmp, final, stem, members)
    return {"dir": str(final), "tar": str(tar_path), "manifest": manifest,
            "tar_sha256": sha256_file(tar_path)}


def _write_tar(tmp: Path, folder: Path, stem: str, members: list[str]) -> None:
    # Regular files only, normalised owner/mode/time: the tar depends on content alone.
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for arc in members:
            path = folder / arc
            info = tarfile.TarInfo(f"{stem}/{arc}")
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            with open(path, "rb") as f:
                tar.addfile(info, f)
