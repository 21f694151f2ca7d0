"""Verify a bundle on the target host, offline, in the order that keeps untrusted bytes away
from parsers: manifest → every file's size then sha256 → SHA256SUMS → GGUF header → load with
llama-cpp-python → probe replay. A later step runs only when every earlier one passed.

Failed checks are reported, not raised; VerifyError is for input that cannot be read at all.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
import tempfile
from pathlib import Path

from .bundle import MANIFEST, RESERVED, SCHEMA_VERSION, SIGNATURE, SUMS, _NAME, check_relpath
from .errors import VerifyError
from .fsutil import reject_duplicate_keys
from .safe_tar import extract_bundle_tar

MAX_MANIFEST = 1 << 20
MAX_SUMS = 1 << 20
MAX_FILES = 10_000
MAX_FILE_SIZE = 1 << 40
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SUMS_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
CHUNK = 1 << 20


class _Report:
    def __init__(self, path):
        self.data = {"ok": True, "bundle": str(path), "checks": [], "probes": [], "manifest": None}

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.data["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        if not ok:
            self.data["ok"] = False
        return ok

    @property
    def ok(self) -> bool:
        return self.data["ok"]


# ---- manifest ------------------------------------------------------------------------



def _refuse_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text):
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text} overflows")
    return v


def _bounded_int(text):
    if len(text) > 20:
        raise ValueError("integer too long")
    return int(text)


def parse_manifest(raw: bytes) -> dict:
    """Strictly parsed and validated manifest; ValueError with the reason otherwise."""
    if len(raw) > MAX_MANIFEST:
        raise ValueError(f"larger than {MAX_MANIFEST} bytes")
    try:
        text = raw.decode("utf-8")
        m = json.loads(text, object_pairs_hook=reject_duplicate_keys, parse_constant=_refuse_constant,
                       parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e.reason}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(m, dict):
        raise ValueError("not a JSON object")
    sv = m.get("schema_version")
    if type(sv) is not int or sv != SCHEMA_VERSION:
        raise ValueError(f"schema_version: expected {SCHEMA_VERSION}, got {sv!r}")
    for field in ("name", "version"):
        if not isinstance(m.get(field), str) or not _NAME.fullmatch(m[field]):
            raise ValueError(f"{field}: missing or not a safe name")
    files = m.get("files")
    if not isinstance(files, list) or not files or len(files) > MAX_FILES:
        raise ValueError(f"files: expected a list of 1..{MAX_FILES} entries")
    seen, folded = set(), {}
    for i, entry in enumerate(files):
        if not isinstance(entry, dict) or set(entry) != {"path", "size", "sha256"}:
            raise ValueError(f"files[{i}]: expected exactly path, size, sha256 (unknown hash or extra keys refused)")
        path, size, digest = entry["path"], entry["size"], entry["sha256"]
        why = check_relpath(path)
        if why:
            raise ValueError(f"files[{i}].path {path!r}: {why}")
        if path in RESERVED:
            raise ValueError(f"files[{i}].path {path!r}: reserved name")
        if path in seen:
            raise ValueError(f"files[{i}].path {path!r}: duplicate")
        if path.casefold() in folded:
            raise ValueError(f"files[{i}].path {path!r}: collides with {folded[path.casefold()]!r} ignoring case")
        seen.add(path)
        folded[path.casefold()] = path
        if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
            raise ValueError(f"files[{i}].size: expected an integer in 0..{MAX_FILE_SIZE}, got {size!r}")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ValueError(f"files[{i}].sha256: not 64 lowercase hex digits")
    dirs = {p.rsplit("/", 1)[0] for p in seen if "/" in p}
    for d in dirs:
        parts = d.split("/")
        for j in range(1, len(parts) + 1):
            if "/".join(parts[:j]) in seen:
                raise ValueError(f"files: {'/'.join(parts[:j])!r} is both a file and a folder")
    return m


# ---- files ---------------------------------------------------------------------------


def _hash_open_file(fd: int, size: int) -> tuple[int, str]:
    """(bytes read, sha256) reading at most size + 1 bytes."""
    import hashlib

    h, read, remaining = hashlib.sha256(), 0, size + 1
    while remaining > 0:
        block = os.read(fd, min(CHUNK, remaining))
        if not block:
            break
        h.update(block)
        read += len(block)
        remaining -= len(block)
    return read, h.hexdigest()


def _walk(root: Path, report: _Report) -> set[str]:
    """Relative paths of regular files under root; links and special files are failures."""
    found: set[str] = set()
    stack = [("", root)]
    while stack:
        rel, folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                arc = f"{rel}{entry.name}"
                if entry.is_symlink():
                    report.add(f"file:{arc}", False, "link or special file: symlink refused")
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((arc + "/", Path(entry.path)))
                elif entry.is_file(follow_symlinks=False):
                    found.add(arc)
                else:
                    report.add(f"file:{arc}", False, "link or special file: not a regular file")
    return found


def _check_files(root: Path, manifest: dict, report: _Report) -> None:
    declared = {e["path"]: e for e in manifest["files"]}
    present = _walk(root, report)
    allowed = set(declared) | {MANIFEST, SUMS, SIGNATURE}
    for arc in sorted(present - allowed):
        report.add("unexpected file", False, f"unexpected file: {arc} is not in manifest.json")
    for arc in sorted(set(declared) - present):
        if not any(c["name"] == f"file:{arc}" for c in report.data["checks"]):
            report.add("missing file", False, f"missing file: {arc}")
    for arc in sorted(set(declared) & present):
        entry = declared[arc]
        try:
            fd = os.open(root / arc, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            report.add(f"file:{arc}", False, f"{arc}: cannot open: {e.strerror}")
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                report.add(f"file:{arc}", False, f"{arc}: not a regular file")
                continue
            if st.st_size != entry["size"]:
                what = "incomplete" if st.st_size < entry["size"] else "larger than declared"
                report.add(f"file:{arc}", False, f"{arc}: {what}: {st.st_size} bytes, manifest says {entry['size']}")
                continue
            read, digest = _hash_open_file(fd, entry["size"])
        finally:
            os.close(fd)
        if read != entry["size"]:
            report.add(f"file:{arc}", False, f"{arc}: size changed while reading ({read} bytes)")
        elif digest != entry["sha256"]:
            report.add(f"file:{arc}", False, f"{arc}: hash mismatch: expected {entry['sha256']}, actual {digest}")
        else:
            report.add(f"file:{arc}", True, f"sha256 {digest}")


def _check_sums(root: Path, manifest: dict, manifest_sha: str, report: _Report) -> None:
    path = root / SUMS
    if not path.is_file() or path.is_symlink():
        report.add(SUMS, False, f"missing file: {SUMS}")
        return
    if path.stat().st_size > MAX_SUMS:
        report.add(SUMS, False, f"{SUMS}: larger than {MAX_SUMS} bytes")
        return
    listed: dict[str, str] = {}
    for n, line in enumerate(path.read_bytes().decode("utf-8", "replace").split("\n"), 1):
        if not line:
            continue
        m = _SUMS_LINE.fullmatch(line)
        if not m or m.group(2) in listed:
            report.add(SUMS, False, f"{SUMS}:{n}: malformed or duplicate line")
            return
        listed[m.group(2)] = m.group(1)
    expected = {e["path"]: e["sha256"] for e in manifest["files"]} | {MANIFEST: manifest_sha}
    if listed != expected:
        diff = sorted(set(listed) ^ set(expected)) or sorted(k for k in listed if listed[k] != expected[k])
        report.add(SUMS, False, f"{SUMS}: disagrees with manifest.json on {', '.join(diff[:5])}")
    else:
        report.add(SUMS, True, f"{len(listed)} entries agree with manifest.json")


def _check_gguf_header(path: Path) -> str | None:
    # Bounded sanity check before handing the file to llama.cpp's parser.
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != b"GGUF":
        return "not a GGUF file (bad magic)"
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        return f"unsupported GGUF version {version}"
    if n_tensors > 100_000 or n_kv > 100_000:
        return f"implausible header counts (tensors {n_tensors}, kv {n_kv})"
    return None


def _probe_section(manifest: dict) -> tuple[dict | None, str | None]:
    section = manifest.get("probes")
    if section is None:
        return None, None
    if not isinstance(section, dict) or not isinstance(section.get("items"), list):
        return None, "probes: expected {model, logit_tolerance, items}"
    tol = section.get("logit_tolerance")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1e6:
        return None, "probes.logit_tolerance: missing or not a non-negative number"
    model = section.get("model")
    if model not in {e["path"] for e in manifest["files"]} or not str(model).endswith(".gguf"):
        return None, f"probes.model: {model!r} is not a GGUF listed in the manifest"
    return section, None


def _verify_dir(root: Path, report: _Report, *, run_probes: bool, n_threads) -> None:
    mpath = root / MANIFEST
    try:
        if mpath.is_symlink() or not mpath.is_file():
            report.add("manifest", False, "invalid manifest: manifest.json missing or not a regular file")
            return
        if mpath.stat().st_size > MAX_MANIFEST:
            report.add("manifest", False, f"invalid manifest: larger than {MAX_MANIFEST} bytes")
            return
        raw = mpath.read_bytes()
    except OSError as e:
        raise VerifyError(f"{mpath}: cannot read: {e.strerror}") from e
    try:
        manifest = parse_manifest(raw)
    except ValueError as e:
        report.add("manifest", False, f"invalid manifest: {e}")
        return
    report.data["manifest"] = manifest
    section, why = _probe_section(manifest)
    if why:
        report.add("manifest", False, f"invalid manifest: {why}")
        return
    report.add("manifest", True, f"{manifest['name']} {manifest['version']}, {len(manifest['files'])} files")
    from .fsutil import sha256_bytes

    try:
        _check_files(root, manifest, report)
    except OSError as e:
        raise VerifyError(f"{root}: cannot read the bundle folder: {e}") from e
    if not report.ok:
        return
    _check_sums(root, manifest, sha256_bytes(raw), report)
    if not report.ok:
        return
    ggufs = sorted(e["path"] for e in manifest["files"] if e["path"].endswith(".gguf"))
    for arc in ggufs:
        problem = _check_gguf_header(root / arc)
        report.add(f"gguf:{arc}", problem is None, problem or "GGUF header sane")
    if not report.ok or not run_probes:
        return
    targets = [section["model"]] if section else ggufs[:1]
    for arc in targets:
        _replay(root / arc, arc, section, report, n_threads)


def _replay(path: Path, arc: str, section: dict | None, report: _Report, n_threads) -> None:
    from .probes import load_llama, replay_probes

    try:
        llm = load_llama(path, n_threads=n_threads)
    except VerifyError as e:
        report.add(f"load:{arc}", False, str(e))
        return
    try:
        report.add(f"load:{arc}", True, f"llama-cpp-python loaded {arc}")
        if not section or not section["items"]:
            report.add(f"probes:{arc}", True, "no probes recorded")
            return
        results = replay_probes(path, section["items"], logit_tolerance=float(section["logit_tolerance"]), llm=llm)
    except Exception as e:  # a template or runtime failure in replay is a failed check, not a crash
        report.add(f"probes:{arc}", False, f"probe replay failed: {type(e).__name__}: {e}")
        return
    finally:
        llm.close()
    report.data["probes"] = results
    bad = [r for r in results if not r["ok"]]
    worst = max((r.get("max_abs_logit_delta") or 0.0 for r in results), default=0.0)
    detail = (f"{len(results) - len(bad)}/{len(results)} probes identical; max |Δlogit| {worst:.3g} "
              f"(tolerance {section['logit_tolerance']})")
    if bad:
        detail += f"; probe {bad[0]['index']}: {bad[0]['detail']}"
    report.add(f"probes:{arc}", not bad, detail)


def verify_bundle(path, *, run_probes: bool = True, n_threads=None) -> dict:
    """Verify a bundle folder or .tar; returns {ok, checks, probes, manifest}."""
    path = Path(path)
    report = _Report(path)
    if path.is_symlink():
        report.add("bundle", False, f"{path}: symlink refused; pass the real folder or file")
        return report.data
    if path.is_dir():
        _verify_dir(path, report, run_probes=run_probes, n_threads=n_threads)
        return report.data
    if not path.is_file():
        raise VerifyError(f"{path}: no such bundle folder or .tar file")
    with tempfile.TemporaryDirectory(prefix="edgelora-verify-") as tmp:
        root = extract_bundle_tar(path, Path(tmp), report.add, parse_manifest)
        if root is not None:
            _verify_dir(root, report, run_probes=run_probes, n_threads=n_threads)
    return report.data
