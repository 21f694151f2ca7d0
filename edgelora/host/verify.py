"""Verify a bundle on the target host, offline, in the order that keeps untrusted bytes away
from parsers: signature over the exact manifest bytes (when a trust store is given) →
manifest → every file's size, then a private copy hashed while it is written → SHA256SUMS →
bounded GGUF headers → every Modelfile parsed as install parses it → load and probe replay
of every GGUF in a resource-limited child process. A later step runs only when every earlier
one passed.

Everything after the first step reads only the private copy (``host/private_copy.py``):
manifest.json is read once, and the bytes that were signed are the bytes parsed; the GGUF
that is loaded and probed, the Modelfile that is parsed and the files install uses are the
bytes that were hashed. The copy is ``report["root"]`` when the caller asked to keep it.

Failed checks are reported, not raised; VerifyError is for input that cannot be read at all
(or a trust store that cannot be read), DiskFullError when the copy does not fit. Nothing
here loads plugins: ``api.verify`` adds third-party findings only when explicitly allowed.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from pathlib import Path

from edgelora.bundle.layout import MANIFEST, SUMS
from edgelora.errors import ConversionError, InstallError, SignatureError, VerifyError
from edgelora.util.files import read_regular
from edgelora.host.private_copy import MAX_SUMS, copy_folder
from edgelora.bundle.manifest import parse_manifest
from edgelora.host.safe_tar import extract_bundle_tar

_SUMS_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


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


# ---- SHA256SUMS ---------------------------------------------------------------------------


def _check_sums(root: Path, manifest: dict, manifest_sha: str, report: _Report) -> None:
    try:
        raw = read_regular(root / SUMS, MAX_SUMS)
    except ValueError as e:
        report.add(SUMS, False, f"{SUMS}: {e}")
        return
    if raw is None:
        report.add(SUMS, False, f"{SUMS}: absent (every bundle ships it)")
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

    meta = read_metadata(path, arrays=False)  # arrays are not needed here: counted and skipped
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


# ---- manifest-level checks -------------------------------------------------------------------


def probe_plan(manifest: dict) -> tuple[dict[str, list] | None, float, str | None]:
    """({GGUF path: recorded probes} or None when the manifest records none, tolerance, why
    the section is malformed). ``probes.model``/``items`` name the default GGUF's probes;
    ``probes.by_model`` those of every other shipped GGUF."""
    from edgelora.bundle.probes import MAX_PROBES

    section = manifest.get("probes")
    if section is None:
        return None, 0.0, None
    if not isinstance(section, dict) or not isinstance(section.get("items", []), list):
        return None, 0.0, "probes: expected {model, logit_tolerance, items, by_model}"
    tol = section.get("logit_tolerance")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1e6:
        return None, 0.0, "probes.logit_tolerance: missing or not a non-negative number"
    ggufs = {e["path"] for e in manifest["files"] if e["path"].endswith(".gguf")}
    by_model = section.get("by_model") or {}
    if not isinstance(by_model, dict):
        return None, 0.0, "probes.by_model: expected {GGUF path: [probes]}"
    plan = dict(by_model)
    if "model" in section or "items" in section:
        plan[section.get("model")] = section.get("items")
    for arc, items in plan.items():
        if arc not in ggufs:
            return None, 0.0, f"probes: {arc!r} is not a GGUF listed in the manifest"
        if not isinstance(items, list) or len(items) > MAX_PROBES:
            return None, 0.0, f"probes for {arc}: expected a list of at most {MAX_PROBES} probes"
    return plan, float(tol), None


def _accept_manifest(raw: bytes, raw_sig: bytes | None, trust, report: _Report) -> dict | None:
    """Signature over these exact bytes, then the parser on the same bytes."""
    if not check_signature_step(raw, raw_sig, trust, report):
        return None
    try:
        manifest = parse_manifest(raw)
    except ValueError as e:
        report.add("manifest", False, f"invalid manifest: {e}")
        return None
    report.data["manifest"] = manifest
    _, _, why = probe_plan(manifest)
    if why:
        report.add("manifest", False, f"invalid manifest: {why}")
        return None
    report.add("manifest", True, f"{manifest['name']} {manifest['version']}, {len(manifest['files'])} files")
    return manifest


def _check_gates(manifest: dict, report: _Report, allow_failed_gate: bool) -> None:
    failed = manifest.get("gates_failed")
    if not failed:
        return
    what = "; ".join(str(g) for g in failed[:5]) if isinstance(failed, list) else str(failed)
    if allow_failed_gate:
        report.add("gates", True, f"built with --no-gate and its gates FAILED ({what}); accepted by --allow-failed-gate")
    else:
        report.add("gates", False, f"built with --no-gate and its gates failed ({what}); "
                   "pass --allow-failed-gate to accept it anyway")


def _check_modelfiles(root: Path, manifest: dict, report: _Report) -> None:
    """Parse every bundle Modelfile with install's own parser (the GGUFs they name are all
    loaded and probed below, like every other GGUF in the bundle)."""
    from edgelora.host.modelfile_parse import from_target, is_bundle_modelfile, read_bundle_modelfile

    files = {e["path"]: e for e in manifest["files"]}
    for arc in sorted(a for a in files if is_bundle_modelfile(a)):
        try:
            target = from_target(arc, read_bundle_modelfile(root, arc, files[arc]), files)
        except InstallError as e:
            report.add(f"modelfile:{arc}", False, str(e))
            continue
        report.add(f"modelfile:{arc}", True, f"FROM {target}; parsed as install will parse it")


# ---- load and probes ---------------------------------------------------------------------------


def _model_jobs(root: Path, manifest: dict, report: _Report) -> tuple[list[dict], float] | None:
    """One load (and replay) per distinct GGUF; every shipped GGUF is covered."""
    plan, tol, _ = probe_plan(manifest)
    entries = sorted((e for e in manifest["files"] if e["path"].endswith(".gguf")), key=lambda e: e["path"])
    jobs, by_hash = [], {}
    for e in entries:
        arc = e["path"]
        if e["sha256"] in by_hash:
            report.add(f"probes:{arc}", True, f"same bytes as {by_hash[e['sha256']]}, probed there")
            continue
        items = None if plan is None else plan.get(arc)
        if items is None and plan is not None:
            items = next((plan[a] for a in plan if _file_sha(manifest, a) == e["sha256"]), None)
        if plan is not None and not items:
            report.add(f"probes:{arc}", False, f"{arc}: no probes recorded for this GGUF; every shipped GGUF "
                       "must carry probes, or the model installed may not be the model evaluated")
            return None
        by_hash[e["sha256"]] = arc
        jobs.append({"arc": arc, "path": str(root / arc), "items": items or [], "size": e["size"]})
    return jobs, tol


def _file_sha(manifest: dict, arc: str) -> str | None:
    return next((e["sha256"] for e in manifest["files"] if e["path"] == arc), None)


def _run_models(jobs: list[dict], tol: float, report: _Report, n_threads, limits) -> None:
    from edgelora.host.sandbox import default_limits, run_model_checks

    if not jobs:
        return
    if limits is None:
        limits = default_limits([j["size"] for j in jobs], sum(len(j["items"]) for j in jobs), n_threads)
    start = time.monotonic()
    for check in run_model_checks([{k: j[k] for k in ("arc", "path", "items")} for j in jobs],
                                  logit_tolerance=tol, n_threads=n_threads, limits=limits):
        if check.get("probes") is not None:
            report.data["probes"].extend(check["probes"])
            report.data["logit_tolerance"] = tol
        report.add(check["name"], bool(check["ok"]), str(check["detail"]))
    report.data["sandbox_seconds"] = round(time.monotonic() - start, 3)


# ---- driver --------------------------------------------------------------------------------


def _check_copy(root: Path, manifest: dict, report: _Report, *, run_probes: bool, n_threads,
                allow_failed_gate: bool, limits) -> None:
    """Every check after the copy: on the private copy only."""
    _check_sums(root, manifest, report.data["manifest_sha256"], report)
    if not report.ok:
        return
    for arc in sorted(e["path"] for e in manifest["files"] if e["path"].endswith(".gguf")):
        start = time.monotonic()
        try:
            summary = check_gguf_header(root / arc)
            report.add(f"gguf:{arc}", True, f"{summary} ({time.monotonic() - start:.2f} s)")
        except ConversionError as e:
            report.add(f"gguf:{arc}", False, str(e))
    if not report.ok:
        return
    _check_modelfiles(root, manifest, report)
    _check_gates(manifest, report, allow_failed_gate)
    if not report.ok or not run_probes:
        return
    planned = _model_jobs(root, manifest, report)
    if planned is not None:
        _run_models(*planned, report, n_threads, limits)


def verify_bundle(path, *, run_probes: bool = True, n_threads=None, trust=None, extract_to=None,
                  allow_failed_gate: bool = False, limits=None) -> dict:
    """Verify a bundle folder or .tar; returns {ok, checks, probes, manifest, ...}.

    ``trust``: a ``.pub`` file, a folder of them, or already loaded keys; when given, an
    unsigned or wrongly signed bundle fails before anything else is parsed.
    ``extract_to``: an empty folder the caller owns for the verified private copy (then kept
    as ``report["root"]``); by default a temporary folder, removed. ``limits``: the
    sandbox's ``host.sandbox.Limits`` (default: scaled to the bundle's GGUFs).
    """
    path = Path(path)
    if trust is not None and not isinstance(trust, list):
        from edgelora.bundle.signing import load_trust

        trust = load_trust(trust)
    report = _Report(path)
    try:
        st = os.lstat(path)
    except OSError:
        raise VerifyError(f"{path}: no such bundle folder or .tar file") from None
    if stat.S_ISLNK(st.st_mode):
        report.add("bundle", False, f"{path}: symlink refused; pass the real folder or file")
        return report.data
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise VerifyError(f"{path}: not a bundle folder or .tar file (a FIFO, device or socket is refused)")

    def accept(raw, raw_sig):
        return _accept_manifest(raw, raw_sig, trust, report)

    def run(private: Path):
        if stat.S_ISDIR(st.st_mode):
            got = copy_folder(path, private / "bundle", report.add, accept)
        else:
            got = extract_bundle_tar(path, private, report.add, accept)
        if got is None:
            return
        root, manifest, _raw = got
        report.data["root"] = str(root)
        _check_copy(root, manifest, report, run_probes=run_probes, n_threads=n_threads,
                    allow_failed_gate=allow_failed_gate, limits=limits)

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
