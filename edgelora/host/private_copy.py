"""The one read of an untrusted bundle: a private copy that edgelora writes while hashing it.

A bundle on a USB stick, a network share or a FUSE mount can serve different bytes on a second
read, so nothing after verification reads the bundle again. manifest.json and manifest.sig
are read once into memory (signature and parser see the same bytes, which are then written
into the copy); every declared file is copied into the copy while its sha256 is computed over
the bytes written, never past its declared size, and the copy stops at the first mismatch.
Modelfile parsing, GGUF loading and probing, the blobs installed and the folder handed to
``ollama create`` all use this copy only. The tar path (``safe_tar``) fills the same copy.

Nothing is opened before its type is checked without following links (a FIFO named
manifest.json must not block), and there must be room for every declared byte before the
first one is written.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from edgelora.util import hashing
from edgelora.bundle.layout import MANIFEST, RESERVED, SIGNATURE, SUMS
from edgelora.errors import DiskFullError
from edgelora.util.files import NotRegularFile, free_bytes, human_bytes, open_regular, read_regular, write_new_file

MAX_SUMS = 1 << 20
MAX_SIGNATURE = 4096
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT)


def space_needed(manifest: dict, small: list[bytes | None]) -> int:
    """Bytes the private copy takes (declared files plus the small files read into memory),
    rounded up to 4 KiB blocks per file."""
    sizes = [e["size"] for e in manifest["files"]] + [len(b) for b in small if b is not None]
    return sum(-(-s // 4096) * 4096 for s in sizes)


def ensure_space(folder: Path, need: int, what: str) -> int:
    """Free bytes in ``folder``; DiskFullError before anything is written if fewer than ``need``."""
    have = free_bytes(folder)
    if need > have:
        raise DiskFullError(disk_full_message(need, have, folder, what))
    return have


def disk_full_message(need: int, have: int, folder, what: str, reason: str = "") -> str:
    """"disk full: need X, have Y": never a Y larger than X (after a refused write, the free
    space reported can exceed what was needed: quotas, reserved blocks, or others freeing it)."""
    if have < need:
        return f"disk full: need {human_bytes(need)}, have {human_bytes(have)} free in {folder} ({what})"
    return (f"disk full: need {human_bytes(need)}, have less: {folder} refused a write ({what}"
            f"{': ' + reason if reason else ''}) although it reports {human_bytes(have)} free "
            "(a quota, reserved blocks, or another writer)")


def disk_full(e: OSError, folder: Path, need: int, had: int, what: str) -> DiskFullError:
    """For running out of space after the up-front check passed."""
    return DiskFullError(disk_full_message(need, free_bytes(folder), folder, what, e.strerror or ""))


def new_private_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)


def record_copy(arc: str, entry: dict, read: int, digest: str, add_check) -> bool:
    """Report the outcome of one hashed copy against the manifest entry."""
    if read != entry["size"]:
        what = "incomplete" if read < entry["size"] else "larger than declared"
        return add_check(f"file:{arc}", False, f"{arc}: {what}: {read} bytes read, manifest says {entry['size']}")
    if digest != entry["sha256"]:
        return add_check(f"file:{arc}", False, f"{arc}: hash mismatch: expected {entry['sha256']}, actual {digest}")
    return add_check(f"file:{arc}", True, f"sha256 {digest}")


def _walk(root: Path, add_check) -> set[str] | None:
    """Relative paths of regular files under root (lstat only, nothing opened); a link or
    special file is a failure."""
    found: set[str] = set()
    stack = [("", root)]
    while stack:
        rel, folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                arc = f"{rel}{entry.name}"
                if entry.is_symlink():
                    add_check(f"file:{arc}", False, f"{arc}: link or special file: symlink refused")
                    return None
                if entry.is_dir(follow_symlinks=False):
                    stack.append((arc + "/", Path(entry.path)))
                elif entry.is_file(follow_symlinks=False):
                    found.add(arc)
                else:
                    add_check(f"file:{arc}", False, f"{arc}: link or special file: not a regular file")
                    return None
    return found


def copy_folder(src: Path, dest: Path, add_check, accept_manifest) -> tuple[Path, dict, bytes] | None:
    """Copy the bundle folder ``src`` into the new folder ``dest``, verifying as it goes.

    ``accept_manifest(raw_manifest, raw_sig) -> manifest | None`` checks the signature and
    parses the bytes (reporting through ``add_check``). Returns (dest, manifest, raw manifest
    bytes), or None after reporting the first failure. DiskFullError for our own disk.
    """
    raws = {}
    for name, limit, check in ((MANIFEST, 1 << 20, "manifest"), (SIGNATURE, MAX_SIGNATURE, "signature")):
        try:
            raws[name] = read_regular(src / name, limit)
        except ValueError as e:
            what = "invalid manifest: " if name == MANIFEST else ""
            add_check(check, False, f"{what}{name}: {e}")
            return None
    if raws[MANIFEST] is None:
        add_check("manifest", False, "invalid manifest: manifest.json missing")
        return None
    manifest = accept_manifest(raws[MANIFEST], raws[SIGNATURE])
    if manifest is None:
        return None
    try:
        present = _walk(src, add_check)
    except OSError as e:
        add_check("bundle", False, f"{src}: cannot read the bundle folder: {e.strerror}")
        return None
    if present is None:
        return None
    declared = {e["path"]: e for e in manifest["files"]}
    for arc in sorted(present - set(declared) - RESERVED):  # model.sig: for the OpenSSF verifier, not read here
        add_check("unexpected file", False, f"{arc} is not in manifest.json")
        return None
    for arc in sorted(set(declared) - present):
        add_check("missing file", False, f"{arc} is listed in manifest.json but absent")
        return None
    try:
        raws[SUMS] = read_regular(src / SUMS, MAX_SUMS)
    except ValueError as e:
        add_check(SUMS, False, f"{SUMS}: {e}")
        return None
    dest.mkdir()
    need = space_needed(manifest, list(raws.values()))
    had = ensure_space(dest, need, "for the verified private copy of the bundle")
    try:
        for name, data in raws.items():
            if data is not None:
                write_new_file(dest / name, data)
        for arc in sorted(declared):
            if not _copy_one(src / arc, dest / arc, arc, declared[arc], add_check):
                return None
    except OSError as e:
        if e.errno in _DISK_ERRORS:
            raise disk_full(e, dest, need, had, "writing the verified private copy of the bundle") from e
        raise
    add_check("copy", True, f"{len(declared)} files copied into a private folder and hashed while written")
    return dest, manifest, raws[MANIFEST]


def _copy_one(src: Path, dest: Path, arc: str, entry: dict, add_check) -> bool:
    try:
        fd = open_regular(src)
    except FileNotFoundError:
        return add_check("missing file", False, f"{arc} is listed in manifest.json but absent")
    except NotRegularFile as e:
        return add_check(f"file:{arc}", False, f"{arc}: link or special file: {e}")
    except OSError as e:
        return add_check(f"file:{arc}", False, f"{arc}: cannot open: {e.strerror}")
    try:
        size = os.fstat(fd).st_size
        if size != entry["size"]:  # a wrong size is reported without reading a byte
            what = "incomplete" if size < entry["size"] else "larger than declared"
            return add_check(f"file:{arc}", False, f"{arc}: {what}: {size} bytes, manifest says {entry['size']}")
        out = new_private_file(dest)
        try:
            read, digest = hashing.copy_hashed(fd, out, entry["size"])
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    return record_copy(arc, entry, read, digest, add_check)
