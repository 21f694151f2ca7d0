"""Extracting a bundle .tar without trusting it, into the verified private copy.

tarfile's extraction filters have been bypassed repeatedly and silently rewrite absolute
names, so nothing here calls extract/extractall: headers are read first, every member is
checked (regular and not sparse, clean relative name inside one top folder, no duplicates,
named in the manifest, its data inside the archive, the archive ending with its end marker),
manifest.json and manifest.sig are read once into memory for the signature and the parser,
and only then are the files copied, each hashed while it is written, bounded by its declared
size, stopping at the first mismatch (see ``host/private_copy.py``).
"""

from __future__ import annotations

import errno
import os
import tarfile
from pathlib import Path

from edgelora.util import hashing
from edgelora.bundle.layout import MANIFEST, RESERVED, SIGNATURE, SUMS, check_relpath
from edgelora.errors import VerifyError
from edgelora.util.files import write_new_file
from edgelora.host.private_copy import (MAX_SIGNATURE, MAX_SUMS, disk_full, ensure_space, new_private_file, record_copy,
                                space_needed)

MAX_MANIFEST = 1 << 20
MAX_TAR_MEMBERS = 10_050
_END_MARKER = 2 * tarfile.BLOCKSIZE


def extract_bundle_tar(tar_path: Path, staging: Path, add_check, accept_manifest) -> tuple[Path, dict, bytes] | None:
    """Copy the regular files named in the manifest into ``staging/bundle``, verifying them.

    ``accept_manifest(raw_manifest, raw_sig_or_None) -> manifest | None`` checks the
    signature and parses those exact bytes. Returns (root, manifest, raw manifest), or None
    after reporting the first refusal through ``add_check(name, ok, detail)``; VerifyError
    only when the file is not a readable plain tar at all; DiskFullError for our own disk.
    """
    try:
        tar = tarfile.open(tar_path, mode="r:")  # plain tar only: no decompression bombs
    except (tarfile.TarError, OSError) as e:
        raise VerifyError(f"{tar_path}: not a readable tar archive: {e}") from e
    with tar:
        members = _read_headers(tar, tar_path, add_check)
        if members is None:
            return None
        prefix = _check_members(members, add_check)
        if prefix is None:
            return None
        by_rel = {m.name[len(prefix) + 1:]: m for m in members if m.isreg()}
        raws = _read_small_members(tar, tar_path, by_rel, add_check)
        if raws is None:
            return None
        manifest = accept_manifest(raws[MANIFEST], raws.get(SIGNATURE))
        if manifest is None:
            return None
        declared = {e["path"]: e for e in manifest["files"]}
        for rel in sorted(by_rel):
            if rel not in declared and rel not in RESERVED:  # model.sig: for the OpenSSF verifier
                return add_check("unexpected file", False, f"{rel} is not in manifest.json") or None
            if rel in declared and by_rel[rel].size != declared[rel]["size"]:
                size, want = by_rel[rel].size, declared[rel]["size"]
                return add_check(f"file:{rel}", False, f"{rel}: {'incomplete' if size < want else 'larger than declared'}"
                                 f": {size} bytes in the tar, manifest says {want}") or None
        for rel in sorted(set(declared) - set(by_rel)):
            return add_check("missing file", False, f"{rel} is listed in manifest.json but absent") or None
        root = staging / "bundle"
        root.mkdir()
        need = space_needed(manifest, list(raws.values()))
        had = ensure_space(root, need, f"to unpack {tar_path.name}")
        try:
            for rel, data in raws.items():
                write_new_file(root / rel, data)
            for rel in sorted(declared):
                if not _copy_member(tar, by_rel[rel], root / rel, rel, declared[rel], add_check):
                    return None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(e, root, need, had, f"unpacking {tar_path.name}") from e
            raise
    add_check("archive", True, f"{len(by_rel)} regular files copied and hashed from {tar_path.name}")
    return root, manifest, raws[MANIFEST]


def _read_headers(tar, tar_path: Path, add_check) -> list | None:
    members = []
    try:
        for member in tar:  # headers only; data is skipped until asked for
            members.append(member)
            if len(members) > MAX_TAR_MEMBERS:
                return add_check("archive", False, f"{tar_path.name}: more than {MAX_TAR_MEMBERS} members") or None
    except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError) as e:  # crafted headers raise these
        return add_check("archive", False, f"{tar_path.name}: incomplete or corrupt tar: {e}") or None
    # tarfile ends its listing quietly at a cut or garbled header: the archive must end with
    # its end-of-archive marker, and every member's data must lie inside the file.
    size = os.fstat(tar.fileobj.fileno()).st_size
    tar.fileobj.seek(tar.offset)
    tail = tar.fileobj.read(_END_MARKER)
    if len(tail) < _END_MARKER or tail.count(0) != _END_MARKER:
        return add_check("archive", False, f"{tar_path.name}: incomplete: the archive is cut short or garbled at "
                         f"byte {tar.offset} (no end-of-archive marker)") or None
    for m in members:
        if m.isreg() and m.offset_data + m.size > size:
            return add_check("archive", False, f"{m.name}: incomplete: archive ends "
                             f"{m.offset_data + m.size - size} bytes early") or None
    return members


def _check_members(members: list, add_check) -> str | None:
    """The one top-level folder every member sits in, or None after reporting a refusal."""
    names, prefix = set(), None
    for m in members:
        name = m.name
        if m.issym() or m.islnk():
            return add_check("archive", False, f"{name}: link member refused "
                             f"({'symlink' if m.issym() else 'hardlink'})") or None
        if not m.isreg():
            if m.isdir() and check_relpath(name.rstrip("/")) is None:
                continue
            return add_check("archive", False, f"{name}: device, FIFO or other special member refused") or None
        if m.issparse():
            return add_check("archive", False, f"{name}: sparse member refused (bundles are written without holes)") \
                or None
        why = check_relpath(name)
        if why:
            return add_check("archive", False, f"{name!r}: member path {why}") or None
        if name in names:
            return add_check("archive", False, f"{name}: duplicate member") or None
        names.add(name)
        top = name.split("/", 1)[0]
        if "/" not in name or (prefix is not None and top != prefix):
            return add_check("archive", False, f"{name}: every member must sit in one top-level folder") or None
        prefix = top
    if prefix is None or f"{prefix}/{MANIFEST}" not in names:
        return add_check("archive", False, "invalid manifest: manifest.json missing from the archive") or None
    return prefix


def _read_small_members(tar, tar_path: Path, by_rel: dict, add_check) -> dict | None:
    """manifest.json, manifest.sig and SHA256SUMS, each read once into memory."""
    raws = {}
    for rel, limit, check in ((MANIFEST, MAX_MANIFEST, "manifest"), (SIGNATURE, MAX_SIGNATURE, "signature"),
                              (SUMS, MAX_SUMS, SUMS)):
        member = by_rel.get(rel)
        if member is None:
            continue
        if member.size > limit:
            what = "invalid manifest: " if rel == MANIFEST else ""
            return add_check(check, False, f"{what}{rel}: larger than {limit} bytes") or None
        try:
            raws[rel] = tar.extractfile(member).read(limit + 1)
        except (tarfile.TarError, OSError, EOFError) as e:
            return add_check("archive", False, f"{tar_path.name}: incomplete or corrupt tar: {e}") or None
        if len(raws[rel]) != member.size:
            return add_check("archive", False, f"{tar_path.name}: incomplete: {rel} member cut short") or None
    return raws


def _copy_member(tar, member, dest: Path, rel: str, entry: dict, add_check) -> bool:
    out = new_private_file(dest)
    try:
        try:
            read, digest = hashing.copy_stream_hashed(tar.extractfile(member), out, entry["size"])
        except (tarfile.TarError, EOFError) as e:
            return add_check("archive", False, f"{member.name}: incomplete: {e}")
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise  # our disk, not the archive
            return add_check("archive", False, f"{member.name}: incomplete: {e}")
        os.fsync(out)
    finally:
        os.close(out)
    return record_copy(rel, entry, read, digest, add_check)
