"""Verify a bundle on the target host, offline, in the order that keeps untrusted bytes away
from parsers: signature over the exact manifest bytes (when a trust store is given) →
manifest → every file's size then sha256 → SHA256SUMS → bounded GGUF header → load with
llama-cpp-python → probe replay. A later step runs only when every earlier one passed.

Failed checks are reported, not raised; VerifyError is for input that cannot be read at all
(or a trust store that cannot be read). Nothing here loads plugins: ``api.verify`` adds
third-party findings only when explicitly allowed.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from pathlib import Path

from edgelora.bundle.layout import MANIFEST, RESERVED, SIGNATURE, SUMS
from edgelora.errors import ConversionError, SignatureError, VerifyError
from edgelora.util.hashing import sha256_fd
from edgelora.bundle.manifest import MAX_MANIFEST, parse_manifest  # noqa: F401  (parse_manifest re-exported)
from edgelora.host.safe_tar import extract_bundle_tar

MAX_SUMS = 1 << 20
_SUMS_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class _Report:
    def __init__(self, path):
        self.data = {"ok": True, "bundle": str(path), "checks": [], "probes": [], "manifest": None,
                     "manifest_sha256": None, "signed_by": None}

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.data["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        if not ok:
            self.data["ok"] = False
        return ok

    def has(self, name: str) -> bool:
        return any(c["name"] == name for c in self.data["checks"])

    @property
    def ok(self) -> bool:
        return self.data["ok"]


def _read_small(path: Path, limit: int) -> bytes | None:
    """Bytes of a regular file (never through a link), or None if absent; ValueError if
    not a regular file or larger than ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        if os.path.islink(path):
            raise ValueError("symlink refused") from None
        raise ValueError(f"cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"larger than {limit} bytes")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


# ---- signature -----------------------------------------------------------------------------


def check_signature_step(raw_manifest: bytes, raw_sig: bytes | None, trust, report: _Report) -> bool:
    """The first check of every verification; with no trust store it only records what it saw."""
    from edgelora.util.files import sha256_bytes

    if report.has("signature"):
        return report.ok
    report.data["manifest_sha256"] = sha256_bytes(raw_manifest)
    if trust is None:
        detail = ("manifest.sig present but not checked (no --trust given)" if raw_sig is not None
                  else "unsigned; no --trust given")
        return report.add("signature", True, detail)
    from edgelora.bundle.signing import check_signature

    try:
        who = check_signature(raw_manifest, raw_sig, trust)
    except SignatureError as e:
        return report.add("signature", False, str(e))
    report.data["signed_by"] = who
    return report.add("signature", True, who)


# ---- files ---------------------------------------------------------------------------


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
                    report.add(f"file:{arc}", False, f"{arc}: link or special file: symlink refused")
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((arc + "/", Path(entry.path)))
                elif entry.is_file(follow_symlinks=False):
                    found.add(arc)
                else:
                    report.add(f"file:{arc}", False, f"{arc}: link or special file: not a regular file")
    return found


def _check_files(root: Path, manifest: dict, report: _Report) -> None:
    declared = {e["path"]: e for e in manifest["files"]}
    present = _walk(root, report)
    allowed = set(declared) | RESERVED  # manifest, sums and signatures
    for arc in sorted(present - allowed):
        report.add("unexpected file", False, f"unexpected file: {arc} is not in manifest.json")
    for arc in sorted(set(declared) - present):
        if not report.has(f"file:{arc}"):
            report.add("missing file", False, f"missing file: {arc}")
    for arc in sorted(set(declared) & present):
        entry = declared[arc]
        try:
            fd = os.open(root / arc, os.O_RDONLY | _NOFOLLOW)
        except OSError as e:
            report.add(f"file:{arc}", False, f"{arc}: cannot open: {e.strerror}")
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                report.add(f"file:{arc}", False, f"{arc}: not a regular file")
                continue
            # size first: a wrong size is reported without reading a byte
            if st.st_size != entry["size"]:
                what = "incomplete" if st.st_size < entry["size"] else "larger than declared"
                report.add(f"file:{arc}", False, f"{arc}: {what}: {st.st_size} bytes, manifest says {entry['size']}")
                continue
            read, digest = sha256_fd(fd, entry["size"])
        finally:
            os.close(fd)
        if read != entry["size"]:
            what = "incomplete" if read < entry["size"] else "larger than declared"
            report.add(f"file:{arc}", False, f"{arc}: {what}: size changed while reading ({read} bytes)")
        elif digest != entry["sha256"]:
            report.add(f"file:{arc}", False, f"{arc}: hash mismatch: expected {entry['sha256']}, actual {digest}")
        else:
            report.add(f"file:{arc}", True, f"sha256 {digest}")


def _check_sums(root: Path, manifest: dict, manifest_sha: str, report: _Report) -> None:
    try:
        raw = _read_small(root / SUMS, MAX_SUMS)
    except ValueError as e:
        report.add(SUMS, False, f"{SUMS}: {e}")
        return
    if raw is None:
        report.add(SUMS, False, f"missing file: {SUMS}")
        return
    listed: dict[str, str] = {}
    for n, line in enumerate(raw.decode("utf-8", "replace").split("\n"), 1):
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


# ---- GGUF header -----------------------------------------------------------------------------


def check_gguf_header(path: Path) -> str:
    """Bounded parse of the GGUF header, key/values and tensor table, and every tensor's
    extent checked against the file size, before llama.cpp's own parser sees the file.
    Returns a summary; raises ConversionError naming the problem."""
    from edgelora.gguf.reader import read_metadata

    meta = read_metadata(path)
    size = os.path.getsize(path)
    type_sizes = _ggml_type_sizes()
    for name, shape, ttype, offset in meta.tensors:
        if ttype not in type_sizes:
            raise ConversionError(f"{path}: tensor {name}: unknown ggml type {ttype}")
        block, nbytes_block = type_sizes[ttype]
        count = 1
        for d in shape:
            count *= d
        if shape and shape[0] % block:
            raise ConversionError(f"{path}: tensor {name}: row of {shape[0]} is not a multiple of block {block}")
        end = meta.data_start + offset + count // block * nbytes_block
        if end > size:
            raise ConversionError(f"{path}: tensor {name} extends past the end of the file ({end} > {size} bytes)")
    arch = meta.kv.get("general.architecture")
    return f"GGUF v{meta.version}, {len(meta.kv)} keys, {len(meta.tensors)} tensors, architecture {arch!r}"


def _ggml_type_sizes() -> dict[int, tuple[int, int]]:
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): v for t, v in GGML_QUANT_SIZES.items()}


# ---- probes ------------------------------------------------------------------------------


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


def _replay(path: Path, arc: str, section: dict | None, report: _Report, n_threads) -> None:
    from edgelora.bundle.probes import load_llama, replay_probes

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
    report.data["logit_tolerance"] = section["logit_tolerance"]
    bad = [r for r in results if not r["ok"]]
    worst = max((r.get("max_abs_logit_delta") or 0.0 for r in results), default=0.0)
    detail = (f"{len(results) - len(bad)}/{len(results)} probes pass; max |Δlogit| {worst:.3g} "
              f"(tolerance {section['logit_tolerance']})")
    if bad:
        detail += "; moved: " + "; ".join(f"probe {r['index']}: {r['detail']}" for r in bad[:5])
    report.add(f"probes:{arc}", not bad, detail)


# ---- driver --------------------------------------------------------------------------------


def _verify_dir(root: Path, report: _Report, *, run_probes: bool, n_threads, trust) -> None:
    try:
        raw = _read_small(root / MANIFEST, MAX_MANIFEST)
    except ValueError as e:
        report.add("manifest", False, f"invalid manifest: manifest.json: {e}")
        return
    if raw is None:
        report.add("manifest", False, "invalid manifest: manifest.json missing")
        return
    try:
        raw_sig = _read_small(root / SIGNATURE, 4096)
    except ValueError as e:
        report.add("signature", False, f"{SIGNATURE}: {e}")
        return
    if not check_signature_step(raw, raw_sig, trust, report):
        return
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
    try:
        _check_files(root, manifest, report)
    except OSError as e:
        raise VerifyError(f"{root}: cannot read the bundle folder: {e}") from e
    if not report.ok:
        return
    _check_sums(root, manifest, report.data["manifest_sha256"], report)
    if not report.ok:
        return
    ggufs = sorted(e["path"] for e in manifest["files"] if e["path"].endswith(".gguf"))
    for arc in ggufs:
        start = time.monotonic()
        try:
            summary = check_gguf_header(root / arc)
            report.add(f"gguf:{arc}", True, f"{summary} ({time.monotonic() - start:.2f} s)")
        except ConversionError as e:
            report.add(f"gguf:{arc}", False, str(e))
    if not report.ok or not run_probes:
        return
    targets = [section["model"]] if section else ggufs[:1]
    for arc in targets:
        _replay(root / arc, arc, section, report, n_threads)


def verify_bundle(path, *, run_probes: bool = True, n_threads=None, trust=None, extract_to=None) -> dict:
    """Verify a bundle folder or .tar; returns {ok, checks, probes, manifest, ...}.

    ``trust``: a ``.pub`` file, a folder of them, or already loaded keys; when given, an
    unsigned or wrongly signed bundle fails before anything else is parsed.
    ``extract_to``: for a .tar, an empty folder the caller owns to extract into (the
    extracted bundle is then ``report["root"]``); by default a temporary folder, removed.
    """
    path = Path(path)
    if trust is not None and not isinstance(trust, list):
        from edgelora.bundle.signing import load_trust

        trust = load_trust(trust)
    report = _Report(path)
    if path.is_symlink():
        report.add("bundle", False, f"{path}: symlink refused; pass the real folder or file")
        return report.data
    if path.is_dir():
        report.data["root"] = str(path)
        _verify_dir(path, report, run_probes=run_probes, n_threads=n_threads, trust=trust)
        return report.data
    if not path.is_file():
        raise VerifyError(f"{path}: no such bundle folder or .tar file")

    def signature_first(raw_manifest, raw_sig):
        return check_signature_step(raw_manifest, raw_sig, trust, report)

    def run(tmp: Path):
        root = extract_bundle_tar(path, tmp, report.add, parse_manifest, check_signature=signature_first)
        if root is not None:
            report.data["root"] = str(root)
            _verify_dir(root, report, run_probes=run_probes, n_threads=n_threads, trust=trust)

    if extract_to is not None:
        Path(extract_to).mkdir(exist_ok=True)
        run(Path(extract_to))
    else:
        with tempfile.TemporaryDirectory(prefix="edgelora-verify-") as tmp:
            run(Path(tmp))
        report.data.pop("root", None)
    return report.data


def first_failure(report: dict) -> str:
    bad = [c for c in report["checks"] if not c["ok"]]
    return f"{bad[0]['name']}: {bad[0]['detail']}" if bad else ""


def format_report(report: dict) -> str:
    """The human table: one row per check, then one row per probe."""
    rows = [f"{'ok  ' if c['ok'] else 'FAIL'}  {c['name']:<28} {c.get('detail', '')}" for c in report["checks"]]
    if report.get("probes"):
        tol = report.get("logit_tolerance")
        rows.append("")
        rows.append(f"probe  result  greedy tokens            max |Δlogit|  top-k order  (tolerance {tol})")
        for p in report["probes"]:
            div = p.get("first_divergence")
            tokens = "identical" if div is None else f"diverge at {div}"
            delta = p.get("max_abs_logit_delta")
            delta_s = f"{delta:.3g}" if isinstance(delta, (int, float)) else "-"
            order = {True: "same", False: "changed"}.get(p.get("top_k_order_same"), "-")
            rows.append(f"{p['index']:>5}  {'ok  ' if p['ok'] else 'MOVED'}   {tokens:<24} {delta_s:>12}  {order:<11}")
    rows.append("verify: ok" if report["ok"] else f"verify: FAILED ({first_failure(report)})")
    return "\n".join(rows)
