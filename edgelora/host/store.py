"""Ollama's on-disk model store, written the way Ollama itself would leave it.

Layout (shared/reference/ollama.md)::

    <store>/blobs/sha256-<64 hex>                                   layer and config blobs
    <store>/manifests/registry.ollama.ai/library/<name>/<tag>        image manifest (JSON)
    <store>/edgelora/lock, installs.json, staging/                    edgelora's own corner

Every write is staged under ``<store>/edgelora/staging`` (same filesystem), fsynced, then
renamed into place; blobs first, the manifest last, because Ollama deletes blobs no manifest
names when its server starts, and a manifest naming a missing blob is a broken model. One
lock file serialises edgelora installs; whoever takes it removes staging left by a killed
run, and the blobs that run had moved into ``blobs/`` but never named in a manifest.
Nothing is ever written through a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path

from edgelora.errors import InstallError
from edgelora.util.files import fsync_dir, read_regular, reject_duplicate_keys, write_new_file

REGISTRY = ("registry.ollama.ai", "library")
MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA = {k: f"application/vnd.ollama.image.{k}" for k in
               ("model", "template", "system", "params", "license", "messages", "adapter")}
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,79}")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,79}")
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
MAX_OLLAMA_MANIFEST = 1 << 20
MAX_MANIFESTS = 100_000
JOURNAL = "added-blobs.json"


class _AllBlobs:
    """Stands for "every blob": ``x in ALL_BLOBS`` is always true, ``s - ALL_BLOBS`` empty."""

    def __contains__(self, item) -> bool:
        return True

    def __rsub__(self, other):
        return set()


ALL_BLOBS = _AllBlobs()


def parse_model_name(text: str) -> tuple[str, str]:
    name, _, tag = text.partition(":")
    tag = tag or "latest"
    if not NAME_RE.fullmatch(name) or not TAG_RE.fullmatch(tag):
        raise InstallError(f"model name {text!r}: expected NAME[:TAG] of letters, digits, '.', '_', '-'")
    return name, tag


def default_store() -> Path:
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env) if env else Path.home() / ".ollama" / "models"



def store_os_error(e: OSError, what: str, store: "Store | None" = None, need: int = 0) -> InstallError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and store is not None:
        from edgelora.host.private_copy import disk_full_message

        return InstallError(disk_full_message(need, store.free_bytes(), store.root, what, e.strerror or ""))
    if e.errno == errno.EROFS:
        return InstallError(f"{store.root if store else what}: read-only file system; nothing was installed")
    if e.errno in (errno.EACCES, errno.EPERM):
        return InstallError(f"{e.filename or what}: permission denied; nothing was installed")
    return InstallError(f"{what}: {e.strerror or e}")


class Store:
    def __init__(self, root, *, layout: bool = True):
        self.root = Path(root)
        self.layout = layout  # False: only edgelora's corner (lock, records) when Ollama owns the store
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.own = self.root / "edgelora"
        self.staging_root = self.own / "staging"
        self.records_path = self.own / "installs.json"

    # -- paths --------------------------------------------------------------------------

    def blob_path(self, hex_digest: str) -> Path:
        return self.blobs / f"sha256-{hex_digest}"

    def manifest_path(self, name: str, tag: str) -> Path:
        return self.manifests.joinpath(*REGISTRY, name, tag)

    def ensure_dirs(self) -> None:
        """Create the store folders, refusing any symlink on the way."""
        if self.root.is_symlink():
            raise InstallError(f"{self.root}: store root is a symlink; pass the real path")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            dirs = (self.blobs, self.manifests.joinpath(*REGISTRY)) if self.layout else ()
            for d in (*dirs, self.staging_root):
                self._real_dirs(d)
        except OSError as e:
            raise store_os_error(e, f"cannot create the store folders in {self.root}", self) from e

    def _real_dirs(self, path: Path) -> None:
        rel = path.relative_to(self.root)
        cur = self.root
        for part in rel.parts:
            cur = cur / part
            if cur.is_symlink():
                raise InstallError(f"{cur}: symlink inside the model store refused; never written through")
            if not cur.exists():
                with contextlib.suppress(FileExistsError):  # another install may create it first
                    cur.mkdir()
            if cur.is_symlink():
                raise InstallError(f"{cur}: symlink inside the model store refused; never written through")
            if not cur.is_dir():
                raise InstallError(f"{cur}: expected a folder")

    def free_bytes(self) -> int:
        try:
            st = os.statvfs(self.root if self.root.exists() else self.root.parent)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def block_size(self) -> int:
        try:
            return os.statvfs(self.root).f_frsize or 4096
        except OSError:
            return 4096

    # -- lock -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, timeout: float = 60.0, log=None):
        """Exclusive edgelora lock on the store; waits up to ``timeout`` s, naming the holder."""
        self.ensure_dirs()
        path = self.own / "lock"
        fd = self._open_lock(path)
        try:
            deadline = time.monotonic() + timeout
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = self._holder(fd)
                    if time.monotonic() >= deadline:
                        raise InstallError(f"{path}: another install holds the store lock ({holder}); "
                                           "try again when it finishes") from None
                    if log and not told:
                        log(f"waiting for the store lock held by {holder}")
                        told = True
                    time.sleep(0.1)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode(), 0)
            self.clean_stale(log=log)
            yield self
        finally:
            os.close(fd)  # closing releases the flock

    def _open_lock(self, path: Path) -> int:
        """The lock file, never through a link, a FIFO or a hard link placed in the store (the
        holder line is written into it: it must be edgelora's own file)."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            if path.is_symlink():
                raise InstallError(f"{path}: symlink refused; never written through") from None
            raise store_os_error(e, f"cannot open the lock {path}", self) from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"has {st.st_nlink} hard links"
            raise InstallError(f"{path}: {what}; refusing to write through it (remove it)")
        return fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown holder"
        except OSError:
            return "unknown holder"

    # -- staging and crash recovery ------------------------------------------------------------

    def new_staging(self) -> Path:
        path = self.staging_root / f"{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir()
        return path

    def clean_stale(self, *, log=None) -> None:
        """Under the lock: remove what a killed install left (its staging, and the blobs it
        had moved in but no manifest names)."""
        if not self.staging_root.is_dir():
            return
        stale = [p for p in self.staging_root.iterdir()]
        if not stale:
            return
        referenced = None
        for folder in stale:
            try:
                raw = read_regular(folder / JOURNAL, 8 << 20)
                journal = json.loads(raw) if raw is not None else []
            except (OSError, ValueError):
                journal = []
            # older journals are a bare list of blobs
            added = journal.get("blobs") if isinstance(journal, dict) else journal
            if isinstance(journal, dict) and isinstance(journal.get("record"), dict):
                self._roll_forward(journal["record"], folder, log)
            if added:
                if referenced is None:
                    referenced = self.referenced_blobs()
                for hex_digest in added if isinstance(added, list) else []:
                    if isinstance(hex_digest, str) and re.fullmatch(r"[0-9a-f]{64}", hex_digest) \
                            and hex_digest not in referenced:
                        with contextlib.suppress(FileNotFoundError):
                            self.blob_path(hex_digest).unlink()
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    folder.unlink()
        if log:
            log(f"removed {len(stale)} stale staging folder(s) left by an interrupted install")

    def _roll_forward(self, pending: dict, staging: Path, log) -> None:
        """An install killed after committing its model but before writing its record: write
        the record now, so rollback protection still knows what is installed. In the store,
        only if the committed manifest names exactly the recorded blobs; through ``ollama
        create`` (nothing to check here) the record is kept, marked unconfirmed."""
        key, value = pending.get("key"), pending.get("value")
        if not isinstance(key, str) or not isinstance(value, dict):
            return
        try:
            name, tag = parse_model_name(key)
            if self.layout:
                blobs = set(value.get("blobs") or [])
                if self.manifest_digests(self.read_manifest(self.manifest_path(name, tag))) != blobs:
                    return  # never committed (or replaced since): nothing to record
                value = {**value, "aliases": [a for a in value.get("aliases") or [] if self._names(a, blobs)]}
            else:
                value = {**value, "unconfirmed": "interrupted after ollama create; check with `ollama list`"}
            records = self.load_records()
            if records["models"].get(key, {}).get("manifest_sha256") == value.get("manifest_sha256"):
                return
            records["models"][key] = value
            self.write_records(records, staging)
        except (InstallError, OSError):
            return
        if log:
            log(f"recorded {key}, whose install was interrupted after it was committed")

    def _names(self, model: str, blobs: set) -> bool:
        """True if the manifest of ``model`` exists and names exactly ``blobs``."""
        try:
            name, tag = parse_model_name(str(model))
            return self.manifest_digests(self.read_manifest(self.manifest_path(name, tag))) == blobs
        except InstallError:
            return False

    # -- reading ---------------------------------------------------------------------------

    def iter_manifests(self):
        """(name, tag, path) of every manifest in the library namespace."""
        lib = self.manifests.joinpath(*REGISTRY)
        if not lib.is_dir():
            return
        count = 0
        for name_dir in sorted(lib.iterdir()):
            if name_dir.is_symlink() or not name_dir.is_dir():
                continue
            for tag_file in sorted(name_dir.iterdir()):
                count += 1
                if count > MAX_MANIFESTS:
                    raise InstallError(f"{lib}: more than {MAX_MANIFESTS} manifests")
                if tag_file.is_file() and not tag_file.is_symlink():
                    yield name_dir.name, tag_file.name, tag_file

    def all_manifest_files(self):
        """Every manifest file under manifests/ (any registry, any namespace)."""
        if not self.manifests.is_dir():
            return
        for dirpath, _dirs, files in os.walk(self.manifests):
            for f in files:
                yield Path(dirpath) / f

    @staticmethod
    def read_manifest(path: Path) -> dict:
        try:
            raw = read_regular(path, MAX_OLLAMA_MANIFEST)
        except ValueError as e:
            raise InstallError(f"{path}: cannot read: {e}") from None
        if raw is None:
            raise InstallError(f"{path}: cannot read: no such file")
        try:
            return json.loads(raw, object_pairs_hook=reject_duplicate_keys)
        except ValueError as e:
            raise InstallError(f"{path}: not a valid manifest: {e}") from None

    @staticmethod
    def manifest_digests(manifest: dict) -> set[str]:
        out = set()
        items = [manifest.get("config")] + list(manifest.get("layers") or [])
        for item in items:
            if isinstance(item, dict):
                m = DIGEST_RE.fullmatch(str(item.get("digest", "")))
                if m:
                    out.add(m.group(1))
        return out

    def referenced_blobs(self, *, skip: Path | None = None) -> set[str]:
        """Every blob digest some manifest names. Fail safe: a manifest that is not valid JSON
        keeps every digest that appears in its text, and one that cannot be read at all (a
        FIFO, too large, no permission) keeps every blob: ``ALL_BLOBS`` is returned."""
        refs: set[str] = set()
        for path in self.all_manifest_files():
            if skip is not None and path == skip:
                continue
            try:
                raw = read_regular(path, MAX_OLLAMA_MANIFEST)
            except (ValueError, OSError):
                return ALL_BLOBS
            if raw is None:
                continue
            try:
                refs |= self.manifest_digests(json.loads(raw, object_pairs_hook=reject_duplicate_keys))
            except (ValueError, AttributeError, TypeError):
                refs |= {m.decode() for m in re.findall(rb"[0-9a-f]{64}", raw)}
        return refs

    def blob_ok(self, hex_digest: str, size: int) -> bool:
        """True if the blob exists as a regular file with this exact content."""
        from edgelora.util.hashing import sha256_fd

        path = self.blob_path(hex_digest)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return False
            read, digest = sha256_fd(fd, size)
            return read == size and digest == hex_digest
        finally:
            os.close(fd)

    # -- records -----------------------------------------------------------------------------

    def load_records(self) -> dict:
        path = self.records_path
        try:
            raw = read_regular(path, 8 << 20)
        except ValueError as e:
            raise InstallError(f"{path}: {e}") from None
        if raw is None:
            return {"schema_version": 1, "models": {}}
        try:
            data = json.loads(raw, object_pairs_hook=reject_duplicate_keys)
        except ValueError as e:
            raise InstallError(f"{path}: not valid JSON ({e}); fix or remove it") from None
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise InstallError(f"{path}: expected {{schema_version, models}}")
        return data

    def write_records(self, data: dict, staging: Path) -> None:
        self.write_file_atomically(self.records_path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(),
                                   staging)

    # -- writing -----------------------------------------------------------------------------

    def write_file_atomically(self, final: Path, data: bytes, staging: Path) -> None:
        """Write into staging, fsync, rename over ``final`` (never through a link), fsync dir."""
        self._real_dirs(final.parent)
        tmp = staging / f"{final.name}.{secrets.token_hex(4)}.tmp"
        write_new_file(tmp, data)
        os.replace(tmp, final)
        fsync_dir(final.parent, strict=True)

    def remove_empty_dirs(self, start: Path) -> None:
        stop = self.manifests.joinpath(*REGISTRY)
        cur = start
        while cur != stop and stop in cur.parents:
            try:
                cur.rmdir()
            except OSError:
                return
            cur = cur.parent
