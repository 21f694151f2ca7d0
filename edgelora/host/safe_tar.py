"""Extracting a bundle .tar without trusting it.

tarfile's extraction filters have been bypassed repeatedly and silently rewrite absolute
names, so nothing here calls extract/extractall: headers are read first, every member is
checked (regular file, clean relative name inside one top folder, no duplicates, named in the
manifest), and only then are the bytes copied, bounded by each member's declared size.
"""

from __future__ import annotations

import errno
import tarfile
from pathlib import Path

from edgelora.bundle.layout import MANIFEST, RESERVED, SIGNATURE, SUMS, check_relpath
from edgelora.errors import VerifyError

MAX_MANIFEST = 1 << 20
MAX_SIGNATURE = 4096
MAX_TAR_MEMBERS = 10_050
CHUNK = 1 << 20


def extract_bundle_tar(tar_path: Path, staging: Path, add_check, parse_manifest,
                       check_signature=None) -> Path | None:
    """Extract only regular files named in the manifest into ``staging/bundle``.

    ``check_signature(manifest_bytes, signature_bytes_or_None) -> bool`` runs on the raw
    member bytes before the manifest is parsed. Each member's size is compared with the
    manifest before any byte is copied. Refusals are reported through
    ``add_check(name, ok, detail)`` and return None; VerifyError only when the file is not
    a readable plain tar at all.
    """
    try:
        tar = tarfile.open(tar_path, mode="r:")  # plain tar only: no decompression bombs
    except (tarfile.TarError, OSError) as e:
        raise VerifyError(f"{tar_path}: not a readable tar archive: {e}") from e
    with tar:
        try:
            members = []
            for member in tar:  # headers only; data is skipped until asked for
                members.append(member)
                if len(members) > MAX_TAR_MEMBERS:
                    add_check("archive", False, f"{tar_path.name}: more than {MAX_TAR_MEMBERS} members")
                    return None
        except (tarfile.TarError, OSError, EOFError) as e:
            add_check("archive", False, f"{tar_path.name}: incomplete or corrupt tar: {e}")
            return None
        names, prefix = set(), None
        for m in members:
            name = m.name
            if m.issym() or m.islnk():
                add_check("archive", False, f"{name}: link member refused ({'symlink' if m.issym() else 'hardlink'})")
                return None
            if not m.isreg():
                if m.isdir() and check_relpath(name.rstrip("/")) is None:
                    continue
                add_check("archive", False, f"{name}: device, FIFO or other special member refused")
                return None
            why = check_relpath(name)
            if why:
                add_check("archive", False, f"{name!r}: member path {why}")
                return None
            if name in names:
                add_check("archive", False, f"{name}: duplicate member")
                return None
            names.add(name)
            top = name.split("/", 1)[0]
            if "/" not in name or (prefix is not None and top != prefix):
                add_check("archive", False, f"{name}: every member must sit in one top-level folder")
                return None
            prefix = top
        if prefix is None or f"{prefix}/{MANIFEST}" not in names:
            add_check("archive", False, "invalid manifest: manifest.json missing from the archive")
            return None
        by_name = {m.name: m for m in members if m.isreg()}
        mm = by_name[f"{prefix}/{MANIFEST}"]
        if mm.size > MAX_MANIFEST:
            add_check("manifest", False, f"invalid manifest: larger than {MAX_MANIFEST} bytes")
            return None
        try:
            raw_manifest = tar.extractfile(mm).read(MAX_MANIFEST + 1)
            sm = by_name.get(f"{prefix}/{SIGNATURE}")
            raw_sig = None
            if sm is not None:
                if sm.size > MAX_SIGNATURE:
                    add_check("signature", False, f"{SIGNATURE}: larger than {MAX_SIGNATURE} bytes")
                    return None
                raw_sig = tar.extractfile(sm).read(MAX_SIGNATURE + 1)
        except (tarfile.TarError, OSError, EOFError) as e:
            add_check("archive", False, f"{tar_path.name}: incomplete or corrupt tar: {e}")
            return None
        if len(raw_manifest) != mm.size or (raw_sig is not None and len(raw_sig) != sm.size):
            add_check("archive", False, f"{tar_path.name}: incomplete: manifest or signature member cut short")
            return None
        if check_signature is not None and not check_signature(raw_manifest, raw_sig):
            return None
        try:
            manifest = parse_manifest(raw_manifest)
        except ValueError as e:
            add_check("manifest", False, f"invalid manifest: {e}")
            return None
        declared = {e["path"]: e["size"] for e in manifest["files"]}
        wanted = set(declared) | RESERVED  # manifest, sums and signatures
        for name in sorted(names):
            rel = name[len(prefix) + 1:]
            if rel not in wanted:
                add_check("unexpected file", False, f"unexpected file: {rel} is not in manifest.json")
                return None
            if rel in declared and by_name[name].size != declared[rel]:
                what = "incomplete" if by_name[name].size < declared[rel] else "larger than declared"
                add_check(f"file:{rel}", False,
                          f"{rel}: {what}: {by_name[name].size} bytes in the tar, manifest says {declared[rel]}")
                return None
        for rel in sorted(set(declared) - {n[len(prefix) + 1:] for n in names}):
            add_check("missing file", False, f"missing file: {rel}")
            return None
        root = staging / "bundle"
        root.mkdir()
        for name in sorted(names):
            member = by_name[name]
            dest = root / name[len(prefix) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                src = tar.extractfile(member)
                with open(dest, "xb") as out:
                    remaining = member.size
                    while remaining > 0:
                        block = src.read(min(CHUNK, remaining))
                        if not block:
                            break
                        out.write(block)
                        remaining -= len(block)
            except (tarfile.TarError, OSError, EOFError) as e:
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise  # our disk, not the archive: the caller reports it as such
                add_check("archive", False, f"{name}: incomplete: {e}")
                return None
            if remaining:
                add_check("archive", False, f"{name}: incomplete: archive ends {remaining} bytes early")
                return None
    add_check("archive", True, f"{len(names)} regular files extracted from {tar_path.name}")
    return root
