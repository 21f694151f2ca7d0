"""Install state on the target host (issue 15, class 5): rollback protection keyed on the model
being replaced, an install record that survives a crash after the model was committed, plugin
loading independent of flag positions, and one-line messages for the cases that were wrong."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle_fixtures import assert_store_consistent, make_bundle  # noqa: E402

from edgelora.errors import InstallError  # noqa: E402
from edgelora.host.install import install_bundle, list_installed  # noqa: E402
from edgelora.host.verify import first_failure, verify_bundle  # noqa: E402

QUIET = dict(run_probes=False, log=lambda m: None)


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("EDGELORA_STATE_DIR", str(tmp_path / "state"))


def test_older_bundle_under_another_name_cannot_replace_a_newer_model(tmp_path):
    store = tmp_path / "models"
    new = make_bundle(tmp_path, name="assistant", version="2.0.0", seed=1)
    old = make_bundle(tmp_path, name="legacy", version="1.0.0", seed=2)
    install_bundle(new["dir"], store=store, name="helper:latest", **QUIET)
    for name in ("helper:latest", "HELPER:latest", "Helper"):  # Ollama names are case-insensitive
        with pytest.raises(InstallError, match="rollback refused: assistant 2.0.0 is installed as helper:latest"):
            install_bundle(old["dir"], store=store, name=name, **QUIET)
    install_bundle(old["dir"], store=store, name="helper:latest", allow_downgrade=True, **QUIET)
    assert [r["bundle"] for r in list_installed(store)] == ["legacy"]


KILL_SCRIPT = """
import sys
from edgelora.host.install import install_bundle
install_bundle(sys.argv[1], store=sys.argv[2], run_probes=False, log=lambda m: None)
"""


def test_crash_between_model_commit_and_record_still_refuses_a_rollback(tmp_path):
    store = tmp_path / "models"
    v1 = make_bundle(tmp_path, version="1.0.0", seed=1, model="demo:latest")
    v2 = make_bundle(tmp_path, version="2.0.0", seed=2, model="demo:latest")
    install_bundle(v1["dir"], store=store, **QUIET)
    env = {**os.environ, "EDGELORA_TEST_KILL_AT": "manifest-committed"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, v2["dir"], str(store)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    with pytest.raises(InstallError, match="rollback refused: demo 2.0.0 is installed as demo:latest"):
        install_bundle(v1["dir"], store=store, **QUIET)
    assert [r["version"] for r in list_installed(store)] == ["2.0.0"]
    assert_store_consistent(store)


SPY = textwrap.dedent("""
    import importlib.metadata as md, sys
    real = md.entry_points
    def spy(*a, **k):
        if k.get("group") == "edgelora" or (a and a[0] == "edgelora"):
            raise SystemExit("third-party plugin lookup")
        return real(*a, **k)
    md.entry_points = spy
    from edgelora.cli import main
    try:
        main()
    except SystemExit as e:
        assert e.code in (0, None), e.code
    assert "edgelora.plugins" not in sys.modules, "plugin machinery imported"
    print("clean")
""")


@pytest.mark.parametrize("args", [["--debug", "verify", "{tar}", "--no-probes"],
                                  ["verify", "--debug", "{tar}", "--no-probes"],
                                  ["--debug", "install", "{dir}", "--no-probes", "--store", "{store}"]])
def test_debug_flag_position_never_loads_plugins_on_the_target(tmp_path, args):
    b = make_bundle(tmp_path)
    argv = [a.format(tar=b["tar"], dir=b["dir"], store=tmp_path / "m") for a in args]
    proc = subprocess.run([sys.executable, "-c", SPY, *argv], capture_output=True, text=True, cwd=tmp_path)
    # --debug is accepted before or after the command; either way nothing third-party loads
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("extra,reason", [
    ({"ollama": "x"}, "ollama: expected an object, got str"),
    ({"ollama": {"model": 7}}, "ollama.model: expected str, got int"),
    ({"gates_failed": "yes"}, "gates_failed: expected a list, got str"),
    ({"probes": []}, "probes: expected an object, got list"),
])
def test_manifest_field_of_the_wrong_type_is_one_line(tmp_path, extra, reason):
    from edgelora.bundle.layout import write_bundle

    src = tmp_path / "x.txt"
    src.write_text("x")
    out = write_bundle(dist_dir=tmp_path / "d", name="demo", version="1", files={"x.txt": src}, manifest_extra=extra)
    report = verify_bundle(out["dir"], run_probes=False)
    assert first_failure(report) == f"manifest: invalid manifest: {reason}"
    with pytest.raises(InstallError, match=reason):
        install_bundle(out["dir"], store=tmp_path / "m", **QUIET)


def test_roll_forward_keeps_only_aliases_that_were_written(tmp_path):
    """Killed after NAME:TAG was committed but before NAME:latest moved: the rolled-forward
    record does not claim latest, which still names the previous version."""
    import json

    store = tmp_path / "models"
    v1 = make_bundle(tmp_path, version="1.0.0", seed=1)
    v2 = make_bundle(tmp_path, version="2.0.0", seed=2)
    install_bundle(v1["dir"], store=store, **QUIET)
    env = {**os.environ, "EDGELORA_TEST_KILL_AT": "manifest-committed"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, v2["dir"], str(store)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    with pytest.raises(InstallError, match="rollback refused"):
        install_bundle(v1["dir"], store=store, name="demo:again", **QUIET)
    models = json.loads((store / "edgelora/installs.json").read_text())["models"]
    assert models["demo:2.0.0"]["aliases"] == [] and models["demo:1.0.0"]["aliases"] == ["demo:latest"]
    install_bundle(v2["dir"], store=store, **QUIET)  # the re-run moves latest
    models = json.loads((store / "edgelora/installs.json").read_text())["models"]
    assert models["demo:2.0.0"]["aliases"] == ["demo:latest"] and models["demo:1.0.0"]["aliases"] == []
    assert_store_consistent(store)
