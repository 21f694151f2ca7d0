"""Tiny, real bundles for the verify/sign/install tests: a GGUF written with gguf-py, a
Modelfile in the shape edgelora renders, README, manifest and SHA256SUMS from write_bundle."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from edgelora.bundle.layout import write_bundle

MODELFILE = '''# Written by edgelora. Install on this host with: ollama create NAME -f Modelfile
FROM ./{gguf}
TEMPLATE """{{{{- range .Messages }}}}<|im_start|>{{{{ .Role }}}}
{{{{ .Content }}}}<|im_end|>
{{{{ end }}}}<|im_start|>assistant
"""
SYSTEM """You answer in JSON."""
PARAMETER num_ctx 2048
PARAMETER stop "<|im_start|>"
PARAMETER stop "<|im_end|>"
PARAMETER temperature 0.2
'''


def make_gguf(path: Path, *, seed: int = 0, floats: int = 64) -> Path:
    """A small valid GGUF (llama architecture, one F32 tensor) whose bytes depend on ``seed``."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_file_type(0)
    rows = max(1, floats // 8)
    data = (np.arange(rows * 8, dtype=np.float32) + seed).reshape(rows, 8)
    w.add_tensor("token_embd.weight", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def make_bundle(tmp: Path, *, name: str = "demo", version: str = "1.0.0", seed: int = 0, floats: int = 64,
                signing_key=None, model: str | None = None) -> dict:
    """write_bundle output for a tiny bundle; ``seed`` changes the GGUF bytes."""
    src = tmp / f"src-{name}-{version}-{seed}"
    src.mkdir(parents=True, exist_ok=True)
    gguf_name = f"{name}.Q8_0.gguf"
    make_gguf(src / gguf_name, seed=seed, floats=floats)
    (src / "Modelfile").write_text(MODELFILE.format(gguf=gguf_name), encoding="utf-8")
    (src / "eval.json").write_text(json.dumps({"exact_match": 1.0}))
    extra = {"ollama": {"model": model or f"{name}:{version}"}}
    return write_bundle(dist_dir=tmp / f"dist-{seed}", name=name, version=version, readme_text=f"# {name}\n",
                        files={gguf_name: src / gguf_name, "Modelfile": src / "Modelfile",
                               "reports/eval.json": src / "eval.json"},
                        manifest_extra=extra, signing_key=signing_key)


def store_state(store: Path) -> dict:
    """Everything an Ollama server would see: {manifest relpath: bytes-sha}, {blob: sha ok?}."""
    manifests = {}
    mroot = store / "manifests"
    if mroot.is_dir():
        for dirpath, _, files in os.walk(mroot):
            for f in files:
                p = Path(dirpath) / f
                manifests[str(p.relative_to(mroot))] = p.read_bytes()
    blobs = {}
    if (store / "blobs").is_dir():
        for p in (store / "blobs").iterdir():
            blobs[p.name] = hashlib.sha256(p.read_bytes()).hexdigest() == p.name[len("sha256-"):]
    return {"manifests": manifests, "blobs": blobs}


def assert_store_consistent(store: Path) -> dict:
    """Every manifest names only complete, correct blobs; no blob is left unnamed; no staging."""
    state = store_state(store)
    named = set()
    for rel, raw in state["manifests"].items():
        doc = json.loads(raw)
        assert doc["schemaVersion"] == 2, rel
        for item in [doc["config"]] + doc["layers"]:
            blob = "sha256-" + item["digest"].split(":", 1)[1]
            assert state["blobs"].get(blob) is True, f"{rel} names {blob}, missing or corrupt"
            assert (store / "blobs" / blob).stat().st_size == item["size"]
            named.add(blob)
    assert set(state["blobs"]) == named, f"unnamed blobs left: {set(state['blobs']) - named}"
    staging = store / "edgelora" / "staging"
    assert not staging.exists() or not list(staging.iterdir()), list(staging.iterdir())
    return state


def make_tiny_gguf(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def fake_ollama(tmp_path, monkeypatch, script: str):
    """Put ``script`` on PATH as the ``ollama`` CLI; its calls are logged to tmp_path/calls."""
    import os

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ollama").write_text(script)
    (bindir / "ollama").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("OLLAMA_LOG", str(tmp_path / "calls"))
    return tmp_path / "calls"
