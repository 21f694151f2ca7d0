"""``TargetContract``: the tests every export target must pass, inherited by the plugin's tests."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Any, ClassVar

import pytest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


class TargetContract:
    """Subclass as ``class TestMyTarget(TargetContract): target = "my-target"``.

    Class attributes:

    - ``target``: the target's registered name (required);
    - ``plugin``: the entry-point name expected to provide it (checked when set);
    - ``config``: extra ``edgelora.toml`` values for the tiny build, ``{"section": {...}}``.

    The tiny project is built once per session per (target, config) with the target
    selected in ``[export] targets``; each test then checks one promise of the contract.
    Override ``check_export`` to add the target's own checks on its exported files.
    """

    target: ClassVar[str] = ""
    plugin: ClassVar[str | None] = None
    config: ClassVar[dict[str, dict[str, Any]]] = {}

    @pytest.fixture
    def target_build(self, edgelora_build):
        if not self.target:
            pytest.fail(f"{type(self).__name__}: set the class attribute `target` to the target's name")
        return edgelora_build(targets=[self.target], config=self.config or None)

    @pytest.fixture
    def target_report(self, target_build) -> dict:
        report = target_build.targets.get(self.target)
        assert report is not None, f"target {self.target!r} did not run; ran {sorted(target_build.targets)}"
        return report

    def check_export(self, build, files: dict[str, Path]) -> None:
        """Hook for the target's own checks on its files ({bundle path: file in the bundle})."""

    # -- the contract ---------------------------------------------------------------------

    def test_target_is_registered(self):
        from edgelora import plugins

        loaded = plugins.load()
        assert self.target in loaded.registry.targets, (
            f"target {self.target!r} is not registered (registered: {sorted(loaded.registry.targets)}; "
            f"load errors: {loaded.load_errors})")
        provider = loaded.registry.providers[("targets", self.target)]
        if self.plugin is not None:
            assert provider == self.plugin, f"{self.target!r} is provided by {provider!r}, not {self.plugin!r}"
        info = {i.name: i for i in loaded.info}[provider]
        assert not info.error, info.error
        assert info.version and info.version != "?", f"plugin {provider!r} reports no version"
        t = loaded.registry.targets[self.target]
        assert callable(t.export) and t.description, "a target needs an export function and a description"

    def test_export_succeeds(self, target_report):
        assert target_report["ok"], target_report.get("error")
        assert target_report["files"], f"target {self.target!r} exported no files"

    def test_files_in_manifest_with_sha256(self, target_build, target_report):
        entries = {e["path"]: e for e in target_build.manifest["files"]}
        assert target_build.manifest["targets"][self.target]["files"] == target_report["files"]
        files = {}
        for arc in target_report["files"]:
            assert arc in entries, f"{arc} is not listed in manifest.json"
            path = target_build.bundle_dir / arc
            assert path.is_file() and not path.is_symlink(), f"{arc} is not a regular file in the bundle"
            assert entries[arc]["size"] == path.stat().st_size, arc
            assert entries[arc]["sha256"] == _sha256(path), f"{arc}: sha256 differs from the manifest"
            files[arc] = path
        sums = (target_build.bundle_dir / "SHA256SUMS").read_text().splitlines()
        listed = {line.split("  ", 1)[1] for line in sums}
        assert set(files) <= listed, "every target file must be in SHA256SUMS"
        with tarfile.open(target_build.tar) as tar:
            names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
        assert set(files) <= names, "every target file must be in the bundle's tar"
        self.check_export(target_build, files)

    def test_bundle_verifies(self, target_build):
        from edgelora.host.verify import verify_bundle

        for where in (target_build.bundle_dir, target_build.tar):
            report = verify_bundle(where)
            bad = [c for c in report["checks"] if not c["ok"]]
            assert report["ok"], f"{where}: {bad[:3]}"

    def test_writes_only_into_its_staging_folder(self, target_build, target_report):
        # The build watched the project and dist folders while the target ran.
        assert not target_report.get("outside_staging"), target_report["outside_staging"]
        assert not any(f"[{self.target}]" in line and "warning" in line for line in target_build.logs)

    def test_install_and_uninstall_leave_nothing_behind(self, target_build, tmp_path):
        from edgelora import plugins

        target = plugins.load().registry.targets[self.target]
        if target.install is None and target.uninstall is None:
            pytest.skip(f"target {self.target!r} has no install step")
        assert target.install is not None and target.uninstall is not None, \
            "a target with install must also have uninstall (and the other way round)"
        root = tmp_path / "root"
        root.mkdir()
        result = target.install(target_build.bundle_dir, root)
        installed = [Path(p) for p in result.get("installed", [])]
        assert installed, "install reported no installed paths"
        for p in installed:
            assert p.exists(), f"install reported {p} but it does not exist"
            assert Path(os.path.abspath(p)).is_relative_to(root), f"install wrote {p} outside root {root}"
        target.install(target_build.bundle_dir, root)  # twice is the same as once
        target.uninstall(target_build.bundle_dir, root)
        left = _files_under(root)
        assert not left, f"uninstall left {left}"
        target.uninstall(target_build.bundle_dir, root)  # and uninstalling again is harmless
