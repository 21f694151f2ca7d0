"""Base-model sources, the safetensors/pickle gate, the lock, and the GGUF import."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
from pathlib import Path

import pytest

from edgelora.errors import BaseModelError, LockMismatch, NotInCacheError, UnsafeWeightsError
from edgelora.sources.lock import check_lock, read_lock, write_lock
from edgelora.sources.fetch import (check_safetensors_header, fetch_hf, fetch_local, import_gguf)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "acme/tiny-llama"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def local_base(tiny_llama_dir, tmp_path) -> Path:
    dest = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, dest)
    return dest


# -- local ----------------------------------------------------------------------------
def test_local_source(local_base):
    out = fetch_local(local_base)
    assert out["source"] == "local" and Path(out["path"]) == local_base.resolve()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(out["files"])
    digest = hashlib.sha256((local_base / "config.json").read_bytes()).hexdigest()
    assert out["files"]["config.json"] == digest
    assert fetch_local(local_base)["revision"] == out["revision"]  # stable


@pytest.mark.parametrize("name", ["pytorch_model.bin", "sub/optimizer.pt", "model.ckpt", "weights.pkl"])
def test_pickle_weights_refused(local_base, name):
    p = local_base / name
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeWeightsError, match=rf"{Path(name).name}: pickle-based weights are refused"):
        fetch_local(local_base)


def test_unknown_file_type_refused(local_base):
    (local_base / "modeling_evil.py").write_text("import os\n")
    with pytest.raises(UnsafeWeightsError, match="modeling_evil.py: file type not on the base-model allowlist"):
        fetch_local(local_base)


def _safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_safetensors_header_checks(tmp_path):
    ok = _safetensors(tmp_path / "ok.safetensors",
                      {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]}}, bytes(16))
    assert check_safetensors_header(ok) == {"a": ("F32", [2]), "b": ("F16", [2, 2])}
    overlap = _safetensors(tmp_path / "overlap.safetensors",
                           {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(16))
    with pytest.raises(BaseModelError, match="tensors 'a' and 'b' overlap"):
        check_safetensors_header(overlap)
    past = _safetensors(tmp_path / "past.safetensors",
                        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8))
    with pytest.raises(BaseModelError, match="past the data section"):
        check_safetensors_header(past)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(BaseModelError, match="header length 1099511627776 exceeds file size 10"):
        check_safetensors_header(huge)


def test_local_source_checks_headers(local_base):
    p = local_base / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 2)
    p.write_bytes(bytes(data))
    with pytest.raises(BaseModelError, match="model.safetensors: safetensors header length"):
        fetch_local(local_base)


# -- Hugging Face cache -----------------------------------------------------------------
def make_hf_cache(cache: Path, src: Path, repo: str = REPO, commit: str = COMMIT) -> Path:
    """The layout huggingface_hub writes: blobs by hash, snapshot links, refs/main."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for f in sorted(src.iterdir()):
        blob = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, root / "blobs" / blob)
        os.symlink(Path("..", "..", "blobs", blob), snap / f.name)
    return snap


def test_hf_cache_read_offline(tiny_llama_dir, tmp_path, no_network):
    snap = make_hf_cache(tmp_path / "hub", tiny_llama_dir)
    out = fetch_hf(REPO, COMMIT, cache_dir=tmp_path / "hub")
    assert Path(out["path"]) == snap and out["revision"] == COMMIT
    assert out["files"]["model.safetensors"] == hashlib.sha256(
        (tiny_llama_dir / "model.safetensors").read_bytes()).hexdigest()
    with pytest.raises(NotInCacheError, match="not in local cache; run `edgelora fetch`"):
        fetch_hf(REPO, "f" * 40, cache_dir=tmp_path / "hub")
    with pytest.raises(NotInCacheError, match="not in local cache"):
        fetch_hf("acme/other", COMMIT, cache_dir=tmp_path / "hub")
    # an interrupted download: the snapshot link exists, its blob does not
    (snap / "tokenizer.json").resolve().unlink()
    with pytest.raises(NotInCacheError, match="tokenizer.json not in local cache"):
        fetch_hf(REPO, COMMIT, cache_dir=tmp_path / "hub")
    (snap / "tokenizer.json").unlink()
    (snap / "config.json").unlink()
    with pytest.raises(NotInCacheError, match="config.json: missing.*not in local cache"):
        fetch_hf(REPO, COMMIT, cache_dir=tmp_path / "hub")


@pytest.mark.parametrize("rev", ["main", "v1.0", "0123abc", COMMIT.upper()])
def test_hf_branch_or_tag_refused(rev, tmp_path):
    with pytest.raises(BaseModelError, match="branches and tags move; pin the 40-hex commit"):
        fetch_hf(REPO, rev, cache_dir=tmp_path)


# -- lock -------------------------------------------------------------------------------
def test_lock_roundtrip_and_mismatch(local_base, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    out = fetch_local(local_base)
    assert check_lock(project, local_base, out["files"]) == {"status": "unlocked"}
    write_lock(project, out)
    assert read_lock(project)["files"] == out["files"]
    assert check_lock(project, local_base, out["files"], source="local")["status"] == "ok"

    cfg = local_base / "config.json"
    cfg.write_text(cfg.read_text().replace('"hidden_size": 64', '"hidden_size": 65'))
    got = hashlib.sha256(cfg.read_bytes()).hexdigest()
    with pytest.raises(LockMismatch) as e:
        check_lock(project, local_base)
    assert str(e.value) == (f"{cfg}: sha256 expected {out['files']['config.json']}, got {got}")

    cfg.unlink()
    with pytest.raises(BaseModelError, match=r"config.json: missing base file \(pinned in edgelora.lock\)"):
        check_lock(project, local_base)


def test_lock_mismatch_in_hf_cache_deletes_the_file(tiny_llama_dir, tmp_path, no_network):
    snap = make_hf_cache(tmp_path / "hub", tiny_llama_dir)
    project = tmp_path / "project"
    project.mkdir()
    out = fetch_hf(REPO, COMMIT, cache_dir=tmp_path / "hub")
    write_lock(project, out)
    blob = (snap / "tokenizer_config.json").resolve()
    os.chmod(blob, 0o644)
    blob.write_text("{}")
    out = fetch_hf(REPO, COMMIT, cache_dir=tmp_path / "hub")
    with pytest.raises(LockMismatch, match=r"tokenizer_config.json: sha256 expected [0-9a-f]{64}, got "
                                           r"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a \(deleted\)"):
        check_lock(project, snap, out["files"], source="hf", revision=COMMIT, delete_bad=True)
    assert not (snap / "tokenizer_config.json").exists() and not blob.exists()
    with pytest.raises(NotInCacheError, match="tokenizer_config.json: not in local cache"):
        check_lock(project, snap, source="hf", revision=COMMIT)
    with pytest.raises(LockMismatch, match=f"base revision expected {COMMIT}, got {'a' * 40}"):
        check_lock(project, snap, source="hf", revision="a" * 40)


# -- GGUF import (the embedded SmolLM2) ---------------------------------------------------
def test_gguf_import_gives_a_complete_base(smollm2_dir):
    from transformers import AutoTokenizer

    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["hidden_size"] == 576 and cfg["num_hidden_layers"] == 30 and cfg["tie_word_embeddings"]
    assert cfg["rope_parameters"]["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5
    assert "quantization_config" not in cfg
    marker = json.loads((smollm2_dir / "edgelora-import.json").read_text())
    assert marker["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert marker["tokenizer"]["pre"] == "smollm" and marker["tokenizer"]["mismatches"] == []
    tok = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"


def test_gguf_import_is_independent_of_the_transformers_version(smollm2_dir):
    # edgelora.lock pins these files: a library version stamp would break every lock on upgrade
    for name in ("config.json", "generation_config.json"):
        assert "transformers_version" not in json.loads((smollm2_dir / name).read_text()), name


def test_gguf_import_tokenizes_like_llama_cpp(smollm2_dir, smollm2_gguf):
    from tokenizers import Tokenizer, pre_tokenizers

    from edgelora.sources.gguf_import import compare_with_llama_cpp

    texts = ["12345", "a  7 and   42", "Order #66 shipped 2024-11-05 for $1,299.99!",
             "\t indented\n\n\n  text  ", "emoji 🤗🚀👍🏽 and 日本語", "x²+y² = ½ · 3"]
    assert compare_with_llama_cpp(smollm2_gguf, smollm2_dir, texts) == []
    # Without the smollm pre-tokenizer fix-up (what transformers rebuilds) they would differ.
    plain = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    fixed = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    assert plain.encode("a  7").ids != fixed.encode("a  7").ids


def test_gguf_import_reuses_and_checks_the_hash(smollm2_dir, smollm2_gguf, tmp_path):
    again = import_gguf(smollm2_gguf, smollm2_dir)  # marker matches: no re-import
    assert again["reused"] and again["revision"] == json.loads(
        (smollm2_dir / "edgelora-import.json").read_text())["gguf_sha256"]
    with pytest.raises(LockMismatch, match=f"sha256 expected {'0' * 64}, got b179c952"):
        import_gguf(smollm2_gguf, tmp_path / "x", expected_sha256="0" * 64)
    assert not (tmp_path / "x").exists()


def test_download_verification_against_hub_metadata(tiny_llama_dir, tmp_path):
    """What `edgelora fetch` checks after huggingface_hub downloads (which checks sizes only)."""
    from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

    from edgelora.sources.fetch import verify_download

    snap = make_hf_cache(tmp_path / "hub", tiny_llama_dir)
    weights = (snap / "model.safetensors").read_bytes()
    config = (snap / "config.json").read_bytes()
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(config) + config).hexdigest()
    lfs = BlobLfsInfo(size=len(weights), sha256=hashlib.sha256(weights).hexdigest(), pointer_size=0)
    good = [RepoSibling("model.safetensors", lfs=lfs), RepoSibling("config.json", blob_id=git_sha1)]
    assert verify_download(snap, good) == 2
    bad = [RepoSibling("config.json", blob_id="0" * 40)]
    with pytest.raises(LockMismatch, match=f"config.json: git blob sha1 expected {'0' * 40}, got {git_sha1}"):
        verify_download(snap, bad)
    assert not (snap / "config.json").exists()  # deleted, link and blob
