"""Export targets run isolated: a failing, crashing, hanging or trespassing target fails alone,
named with its plugin; the others and the core files are unaffected."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import MappingProxyType

import pytest

from edgelora.config import Config
from edgelora.context import Context
from edgelora.errors import ConfigError
from edgelora.hookspecs import hookimpl
from edgelora.registry import Registry, Target
from edgelora.bundle.targets import run_targets, select_targets


# Module-level export functions: the worker process imports them by name.
def export_good(ctx, staging: Path):
    ctx.log("writing good.txt")
    (staging / "good").mkdir()
    path = staging / "good" / "good.txt"
    path.write_text(f"{ctx.config.project.name} {ctx.artifacts['answer']}")
    return {"good/good.txt": path}


def export_notes(ctx, staging: Path):
    path = staging / "notes.txt"
    path.write_text(f"notes for {ctx.config.project.name}, GGUF {sorted(ctx.artifacts['quantized'])}")
    return {"notes/notes.txt": path}


def export_raises(ctx, staging: Path):
    raise ValueError("the target's own bug")


def export_hangs(ctx, staging: Path):
    child = subprocess.Popen(["sleep", "300"])
    (staging / "child.pid").write_text(str(child.pid))
    time.sleep(300)


def export_crashes(ctx, staging: Path):
    os._exit(3)


def export_strays(ctx, staging: Path):
    (ctx.project_dir / "stray.txt").write_text("not mine to write")
    path = staging / "ok.txt"
    path.write_text("ok")
    return {"strays/ok.txt": path}


def export_escapes(ctx, staging: Path):
    return {"escape/secret": ctx.project_dir / "core.gguf"}


def export_reserved(ctx, staging: Path):
    path = staging / "manifest.json"
    path.write_text("{}")
    return {"manifest.json": path}


def export_clashes(ctx, staging: Path):
    path = staging / "core.gguf"
    path.write_text("a second core.gguf")
    return {"core.gguf": path}


def export_touches_core(ctx, staging: Path):
    with open(ctx.project_dir / "core.gguf", "ab") as f:
        f.write(b"!")
    return {}


TARGETS = {
    "good": export_good, "raises": export_raises, "hangs": export_hangs, "crashes": export_crashes,
    "strays": export_strays, "escapes": export_escapes, "reserved": export_reserved, "clashes": export_clashes,
    "touches-core": export_touches_core,
}


def _ctx(tmp_path: Path, names) -> Context:
    reg = Registry()
    for name in names:
        export = TARGETS.get(name) or (lambda ctx, staging: {})
        reg.targets[name] = Target(name, export, description=name)
        reg.providers[("targets", name)] = f"plugin-{name}"
        reg.versions[f"plugin-{name}"] = "1.2.3"
    (tmp_path / "core.gguf").write_bytes(b"GGUF core")
    return Context(config=Config(root=tmp_path), project_dir=tmp_path, registry=reg,
                   artifacts=MappingProxyType({"answer": 42}), log=lambda m: None)


def _run(tmp_path, names, timeout_s=60.0):
    ctx = _ctx(tmp_path, names)
    logs: list[str] = []
    ctx = Context(config=ctx.config, project_dir=ctx.project_dir, registry=ctx.registry,
                  artifacts=ctx.artifacts, log=logs.append)
    outcomes = run_targets(ctx, names, tmp_path / ".edgelora" / "work" / "bundle" / "targets",
                           timeout_s=timeout_s, watch=[tmp_path], core_files={"core.gguf": tmp_path / "core.gguf"})
    return {o.name: o for o in outcomes}, logs


def test_good_target_runs_in_its_own_process_and_folder(tmp_path):
    out, logs = _run(tmp_path, ["good"])
    good = out["good"]
    assert good.ok, good.error
    assert good.files["good/good.txt"].read_text() == "my-model 42"
    assert good.files["good/good.txt"].parent.parent.name == "good", "staging folder is per target"
    assert "  [good] writing good.txt" in logs, "log lines stream back from the worker"
    assert good.report() == {"plugin": "plugin-good", "version": "1.2.3", "ok": True, "files": ["good/good.txt"],
                             "seconds": good.report()["seconds"]}


def test_each_failure_is_contained_and_names_the_plugin(tmp_path):
    names = ["raises", "crashes", "good", "strays", "escapes", "reserved", "clashes"]
    out, logs = _run(tmp_path, names)
    assert out["good"].ok, "a target after failing ones still runs"
    expect = {
        "raises": "ValueError: the target's own bug",
        "crashes": "died (exit code 3)",
        "strays": "wrote outside its staging folder: created " + str(tmp_path / "stray.txt"),
        "escapes": "outside the target's staging folder",
        "reserved": "reserved for edgelora",
        "clashes": "core.gguf: already used by edgelora",
    }
    for name, fragment in expect.items():
        o = out[name]
        assert not o.ok and not o.files, name
        assert o.error.startswith(f"target {name!r} (plugin 'plugin-{name}') failed: "), o.error
        assert fragment in o.error, (name, o.error)
        assert any(o.error in line for line in logs)
    assert out["strays"].report()["outside_staging"] == [f"created {tmp_path / 'stray.txt'}"]
    assert (tmp_path / "core.gguf").read_bytes() == b"GGUF core"


def test_hanging_target_is_stopped_with_what_it_started(tmp_path):
    t0 = time.monotonic()
    out, _ = _run(tmp_path, ["hangs", "good"], timeout_s=3.0)
    assert time.monotonic() - t0 < 30
    hung = out["hangs"]
    assert not hung.ok and "timed out after 3 s" in hung.error and "plugin-hangs" in hung.error
    assert out["good"].ok
    pid = int((tmp_path / ".edgelora" / "work" / "bundle" / "targets" / "hangs" / "child.pid").read_text())
    time.sleep(0.2)
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().split()[2] == "Z", "the target's child process must be killed too"
    except ProcessLookupError:
        pass


def test_a_lambda_export_is_refused_by_name(tmp_path):
    out, _ = _run(tmp_path, ["lambda-target"])
    assert "make it a module-level function" in out["lambda-target"].error
    assert "plugin-lambda-target" in out["lambda-target"].error


def test_select_targets_defaults_first_and_unknown_names_fail():
    reg = Registry(targets={"ollama": Target("ollama", export_good, default=True), "x": Target("x", export_good)})
    assert select_targets(reg, []) == ["ollama"]
    assert select_targets(reg, ["x", "ollama", "x"]) == ["ollama", "x"]
    with pytest.raises(ConfigError, match=r"\[export\] targets \['nope'\] are not registered"):
        select_targets(reg, ["nope"])


class TroubleTargets:
    """A third-party plugin adding one target that works and two that do not."""

    @hookimpl
    def edgelora_register_targets(self, register):
        register(Target("notes", export_notes, description="works"))
        register(Target("raises", export_raises, description="raises"))
        register(Target("strays", export_strays, description="writes into the project"))


def test_build_with_failing_targets_keeps_core_bundle_and_good_target(edgelora_build):
    import json

    from edgelora.host.verify import verify_bundle

    build = edgelora_build(targets=["raises", "notes", "strays"], extra_plugins=[TroubleTargets()])
    t = build.targets
    assert list(t) == ["ollama", "raises", "notes", "strays"]
    assert t["ollama"]["ok"] and t["ollama"]["plugin"] == "edgelora.default_plugins.targets"
    assert t["notes"]["ok"] and t["notes"]["files"] == ["notes/notes.txt"]
    assert (build.bundle_dir / "notes" / "notes.txt").read_text() == "notes for tiny, GGUF ['Q8_0']"
    assert not t["raises"]["ok"] and "ValueError: the target's own bug" in t["raises"]["error"]
    assert not t["strays"]["ok"] and "stray.txt" in t["strays"]["error"]
    paths = {f["path"] for f in build.manifest["files"]}
    assert {"tiny.Q8_0.gguf", "Modelfile", "notes/notes.txt"} <= paths and not any(p.startswith("strays/") for p in paths)
    assert build.manifest["targets"] == json.loads(json.dumps(t))
    assert verify_bundle(build.bundle_dir)["ok"]
    assert build.verify_ok is True


def test_cli_build_exits_1_naming_a_failed_target(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from edgelora import api
    from edgelora.cli import cli

    targets = {"ollama": {"ok": True, "plugin": "edgelora.default_plugins.targets", "files": ["Modelfile"]},
               "flaky": {"ok": False, "plugin": "flaky-plugin", "files": [],
                         "error": "target 'flaky' (plugin 'flaky-plugin') failed: timed out after 5 s"}}
    monkeypatch.setattr(api, "plan", lambda *a, **k: {})
    monkeypatch.setattr(api, "build", lambda *a, **k: {
        "bundle": {"dir": str(tmp_path / "b"), "tar": str(tmp_path / "b.tar"), "targets": targets},
        "eval": {}, "verify_ok": True})
    result = CliRunner().invoke(cli, ["build", str(tmp_path)])
    assert result.exit_code == 1
    assert "verify: ok" in result.output
    assert "target flaky: FAILED: target 'flaky' (plugin 'flaky-plugin') failed: timed out" in result.output
    assert "complete without the failed target(s) flaky" in result.output


def test_a_target_changing_a_core_file_stops_the_bundle(tmp_path):
    import dataclasses

    from edgelora.bundle.stage import export_targets
    from edgelora.errors import BundleError

    ctx = _ctx(tmp_path, ["touches-core", "good"])
    cfg = ctx.config
    ctx = dataclasses.replace(ctx, config=dataclasses.replace(
        cfg, export=dataclasses.replace(cfg.export, targets=["good", "touches-core"])))
    files = {"core.gguf": tmp_path / "core.gguf"}
    with pytest.raises(BundleError, match=r"core.gguf: changed by target 'touches-core' \(plugin 'plugin-touches-core'\)"):
        export_targets(ctx, tmp_path / "staging", files)
