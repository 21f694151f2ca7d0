"""Bundle writer: manifest, SHA256SUMS (checked by the real sha256sum), tar, atomicity."""

from __future__ import annotations

from bundle_fixtures import make_tiny_gguf

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from edgelora.bundle.layout import write_bundle
from edgelora.errors import BundleError


@pytest.fixture
def sources(tmp_path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    gguf = make_tiny_gguf(src / "demo.Q8_0.gguf")
    (src / "Modelfile").write_text("FROM ./demo.Q8_0.gguf\nPARAMETER stop \"<|im_end|>\"\n")
    (src / "eval.json").write_text(json.dumps({"exact_match": 1.0}))
    return {"demo.Q8_0.gguf": gguf, "Modelfile": src / "Modelfile", "reports/eval.json": src / "eval.json"}


def build(tmp_path, files, **kw):
    args = dict(dist_dir=tmp_path / "dist", name="demo", version="0.1.0", files=files,
                manifest_extra={"provenance": {"seed": 7}}, readme_text="# demo\n")
    args.update(kw)
    return write_bundle(**args)


def test_manifest_sums_and_tar(tmp_path, sources):
    result = build(tmp_path, sources)
    folder = Path(result["dir"])
    assert folder == tmp_path / "dist" / "demo-0.1.0"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["name"] == "demo" and manifest["version"] == "0.1.0"
    assert manifest["provenance"] == {"seed": 7}
    paths = [e["path"] for e in manifest["files"]]
    assert paths == sorted(paths) == ["Modelfile", "README.md", "demo.Q8_0.gguf", "reports/eval.json"]
    for e in manifest["files"]:
        data = (folder / e["path"]).read_bytes()
        assert e["size"] == len(data) and e["sha256"] == hashlib.sha256(data).hexdigest()
    # SHA256SUMS is what a person on the target host runs, with the real tool.
    proc = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "manifest.json: OK" in proc.stdout and proc.stdout.count(": OK") == 5
    (folder / "README.md").write_text("changed\n")
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True).returncode != 0
    with tarfile.open(result["tar"]) as tar:
        members = tar.getmembers()
    assert all(m.isreg() and m.name.startswith("demo-0.1.0/") for m in members)
    assert sorted(m.name[len("demo-0.1.0/"):] for m in members) == sorted(paths + ["manifest.json", "SHA256SUMS"])
    assert result["tar_sha256"] == hashlib.sha256(Path(result["tar"]).read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["demo-0.1.0", "demo-0.1.0.tar"]


def test_files_are_linked_not_duplicated_when_possible(tmp_path, sources):
    folder = Path(build(tmp_path, sources)["dir"])
    assert os.stat(folder / "demo.Q8_0.gguf").st_ino == os.stat(sources["demo.Q8_0.gguf"]).st_ino


def test_rebuild_replaces_and_tar_is_reproducible(tmp_path, sources):
    first = build(tmp_path, sources)
    second = build(tmp_path, sources)
    assert first["tar_sha256"] == second["tar_sha256"]
    assert not [p for p in (tmp_path / "dist").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("arcname", ["../x", "/etc/x", "a\\b", "a//b", "", "a/./b", "manifest.json", "SHA256SUMS"])
def test_bad_arcnames_refused(tmp_path, sources, arcname):
    with pytest.raises(BundleError):
        build(tmp_path, {**sources, arcname: sources["Modelfile"]})
    assert not (tmp_path / "dist" / "demo-0.1.0").exists()


def test_case_collision_and_bad_version_refused(tmp_path, sources):
    with pytest.raises(BundleError, match="case"):
        build(tmp_path, {**sources, "modelfile": sources["Modelfile"]})
    with pytest.raises(BundleError, match="version"):
        build(tmp_path, sources, version="../1")


def test_modelfile_from_must_name_a_bundled_file(tmp_path, sources):
    sources["Modelfile"].write_text("FROM ./other.gguf\n")
    with pytest.raises(BundleError, match="FROM ./other.gguf"):
        build(tmp_path, sources)
    leftovers = list((tmp_path / "dist").iterdir()) if (tmp_path / "dist").exists() else []
    assert leftovers == []  # staging removed, nothing under a final name


def test_failure_keeps_previous_bundle(tmp_path, sources):
    good = build(tmp_path, sources)
    before = Path(good["dir"], "manifest.json").read_bytes()
    with pytest.raises(BundleError):
        build(tmp_path, sources, manifest_extra={"bad": float("nan")})
    assert Path(good["dir"], "manifest.json").read_bytes() == before

