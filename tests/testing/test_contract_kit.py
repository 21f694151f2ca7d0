"""edgelora.testing: the built-in Ollama target passes the contract kit, and the kit fails a
target that breaks the contract."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from edgelora.testing import TargetContract


class TestOllamaTargetContract(TargetContract):
    target = "ollama"
    plugin = "edgelora.default_plugins.targets"

    def check_export(self, build, files):
        assert "FROM ./tiny.Q8_0.gguf" in files["Modelfile"].read_text()


def test_kit_catches_a_file_that_differs_from_the_manifest(edgelora_build, tmp_path):
    build = edgelora_build(targets=["ollama"])
    copy = tmp_path / build.bundle_dir.name
    shutil.copytree(build.bundle_dir, copy)
    (copy / "Modelfile").write_text((copy / "Modelfile").read_text() + "# edited after the build\n")
    tampered = dataclasses.replace(build, bundle_dir=copy)
    contract = TestOllamaTargetContract()
    with pytest.raises(AssertionError, match="Modelfile"):
        contract.test_files_in_manifest_with_sha256(tampered, tampered.targets["ollama"])
    with pytest.raises(AssertionError, match="Modelfile: larger than declared"):
        contract.test_bundle_verifies(dataclasses.replace(tampered, tar=build.tar))


def test_kit_catches_a_target_that_wrote_outside_its_folder(edgelora_build):
    build = edgelora_build(targets=["ollama"])
    report = dict(build.targets["ollama"], outside_staging=["created /somewhere/else"])
    with pytest.raises(AssertionError, match="/somewhere/else"):
        TestOllamaTargetContract().test_writes_only_into_its_staging_folder(build, report)


def test_tiny_build_trains_a_real_adapter(edgelora_build):
    build = edgelora_build(targets=["ollama"])
    merge = build.manifest["reports"]["merge"]
    assert build.verify_ok is True
    assert (build.adapter_dir / "adapter_model.safetensors").is_file()
    assert merge["tensor_identity"], "the merge check ran on the tiny adapter"
