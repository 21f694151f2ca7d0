"""Rebuild a wheel from an installed distribution, every file checked against its RECORD.

The toolkit prefers original wheels (a wheelhouse, pip's wheel cache, the index); when none
is at hand offline, the distribution installed in this environment is the exact version the
build used, and its RECORD holds the sha256 pip verified when it installed each file. A file
that no longer matches its RECORD hash (edited or damaged since install) stops the repack:
what ships is byte for byte what pip installed. Files installed outside site-packages
(console scripts, ``../../share/...`` data) are left out; the installer recreates console
scripts from ``entry_points.txt``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import zipfile
from importlib import metadata
from pathlib import Path

from edgelora.errors import EdgeloraError

# pip writes these at install time; they are not part of the wheel
_INSTALL_ONLY = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class RepackError(EdgeloraError):
    """An installed distribution cannot be turned back into the wheel it came from."""


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def _wheel_tag(dist_info: Path) -> str:
    tags = [line.split(":", 1)[1].strip() for line in (dist_info / "WHEEL").read_text(encoding="utf-8").splitlines()
            if line.startswith("Tag:")]
    if not tags:
        raise RepackError(f"{dist_info / 'WHEEL'}: no Tag line")
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    return "-".join(".".join(p) for p in parts)


def is_editable(dist: metadata.Distribution) -> bool:
    raw = dist.read_text("direct_url.json")
    if not raw:
        return False
    try:
        return bool(json.loads(raw).get("dir_info", {}).get("editable"))
    except ValueError:
        return False


def repack_installed(name: str, out_dir: Path) -> Path:
    """Write ``out_dir/<name>-<version>-<tags>.whl`` from the installed distribution ``name``."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise RepackError(f"{name}: not installed in this environment") from None
    if is_editable(dist):
        raise RepackError(f"{name}: an editable install has no files to repack")
    record = dist.read_text("RECORD")
    if not record:
        raise RepackError(f"{name}: installed without a RECORD file")
    record_file = next((f for f in dist.files or () if f.name == "RECORD" and f.parent.name.endswith(".dist-info")),
                       None)
    dist_info = Path(dist.locate_file(record_file)).parent if record_file else None
    if dist_info is None or not (dist_info / "WHEEL").is_file():
        raise RepackError(f"{name}: not installed from a wheel (no .dist-info/WHEEL)")
    site = dist_info.parent
    files: list[tuple[str, bytes, int]] = []
    for row in csv.reader(io.StringIO(record)):
        if not row:
            continue
        arc, digest = row[0], (row[1] if len(row) > 1 else "")
        if arc.startswith(("../", "/")) or "/__pycache__/" in f"/{arc}":
            continue  # scripts and data outside site-packages, and bytecode pip compiled
        if arc.startswith(f"{dist_info.name}/") and arc.split("/", 1)[1] in _INSTALL_ONLY:
            continue
        data = (site / arc).read_bytes()
        if digest and _record_hash(data) != digest:
            raise RepackError(f"{site / arc}: changed since pip installed it (RECORD hash differs); "
                              f"reinstall {name} or give the toolkit a wheelhouse")
        if not digest and not arc.startswith(f"{dist_info.name}/"):
            raise RepackError(f"{name}: {arc} has no hash in RECORD")
        files.append((arc, data, (site / arc).stat().st_mode & 0o777))
    version = dist.version
    stem = dist_info.name[: -len(".dist-info")].split("-")[0]
    wheel = out_dir / f"{stem}-{version}-{_wheel_tag(dist_info)}.whl"
    record_rows = []
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        # dist-info last, RECORD at the very end, as the wheel spec recommends
        for arc, data, mode in sorted(files, key=lambda f: (f[0].startswith(dist_info.name + "/"), f[0])):
            info = zipfile.ZipInfo(arc, _ZIP_DATE)
            info.external_attr = (0o100000 | mode) << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            record_rows.append((arc, _record_hash(data), str(len(data))))
        record_arc = f"{dist_info.name}/RECORD"
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows(record_rows + [(record_arc, "", "")])
        zf.writestr(zipfile.ZipInfo(record_arc, _ZIP_DATE), buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return wheel
