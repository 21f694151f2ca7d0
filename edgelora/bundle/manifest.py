"""Strict parsing of a bundle's manifest.json, and bundle version ordering.

The manifest is untrusted input until its signature (when a trust store is configured) and
this parser both pass: bounded size, UTF-8, no duplicate keys, no NaN/Infinity, bounded
integers, the one schema version this edgelora writes, clean relative paths (no ``..``,
absolute, backslash, NUL or other control characters, empty components, duplicates or
case-fold collisions) and digests of exactly 64 lowercase hex digits.
"""

from __future__ import annotations

import json
import math
import re

from edgelora.bundle.layout import RESERVED, SCHEMA_VERSION, NAME_PATTERN, check_relpath
from edgelora.util.files import reject_duplicate_keys

MAX_MANIFEST = 1 << 20
MAX_FILES = 10_000
MAX_FILE_SIZE = 1 << 40
HEX64 = re.compile(r"[0-9a-f]{64}")


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
        if not isinstance(m.get(field), str) or not NAME_PATTERN.fullmatch(m[field]):
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
        if not isinstance(digest, str) or not HEX64.fullmatch(digest):
            raise ValueError(f"files[{i}].sha256: not 64 lowercase hex digits")
    _check_optional_fields(m)
    dirs = {p.rsplit("/", 1)[0] for p in seen if "/" in p}
    folded_files = {p.casefold() for p in seen}
    for d in dirs:
        parts = d.split("/")
        for j in range(1, len(parts) + 1):
            if "/".join(parts[:j]).casefold() in folded_files:
                raise ValueError(f"files: {'/'.join(parts[:j])!r} is both a file and a folder")
    return m


# Optional top-level fields verify and install act on: (type, {sub-field: type}).
_OPTIONAL = {"ollama": (dict, {"model": str, "template": str, "stops": list, "models": dict}),
             "probes": (dict, {"model": str, "items": list, "by_model": dict}),
             "gates_failed": (list, {}), "provenance": (dict, {}), "reports": (dict, {}), "targets": (dict, {})}


def _check_optional_fields(m: dict) -> None:
    for field, (kind, subs) in _OPTIONAL.items():
        if field not in m:
            continue
        if not isinstance(m[field], kind):
            raise ValueError(f"{field}: expected {'an object' if kind is dict else 'a list'}, "
                             f"got {type(m[field]).__name__}")
        for sub, sub_kind in subs.items():
            if sub in m[field] and not isinstance(m[field][sub], sub_kind):
                raise ValueError(f"{field}.{sub}: expected {sub_kind.__name__}, got {type(m[field][sub]).__name__}")


# ---- versions ----------------------------------------------------------------------------

_VERSION = re.compile(r"(\d+(?:\.\d+)*)(?:[-+.]?(.*))?")


def version_key(version: str) -> tuple:
    """Order bundle versions: numeric release parts, then a release above its pre-releases
    (``1.0.0-rc1`` < ``1.0.0``); build metadata after ``+`` is ignored."""
    version = version.split("+", 1)[0]
    m = _VERSION.fullmatch(version)
    if not m:
        return ((), 0, (version,))
    release = tuple(int(x) for x in m.group(1).split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    pre = m.group(2) or ""
    pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.-]", pre) if p)
    return (release, 0 if pre else 1, pre_key)


def compare_versions(a: str, b: str) -> int:
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)
