"""Every shipped model honest (issue 15, class 6), target side: each quantization installs
under its own tag from its own Modelfile, NAME:latest follows the installed version, a
``--no-gate`` bundle whose gates failed is refused unless explicitly accepted, and one
version number never silently names two different bundles in dist/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle_fixtures import MODELFILE, assert_store_consistent, make_gguf  # noqa: E402

from edgelora.bundle.layout import write_bundle  # noqa: E402
from edgelora.errors import BundleError, InstallError  # noqa: E402
from edgelora.host.install import install_bundle, list_installed, uninstall  # noqa: E402
from edgelora.host.verify import first_failure, verify_bundle  # noqa: E402

QUIET = dict(run_probes=False, log=lambda m: None)
LIB = "manifests/registry.ollama.ai/library"


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("EDGELORA_STATE_DIR", str(tmp_path / "state"))


def two_quant_bundle(tmp: Path, *, version="1.0.0", extra=None) -> dict:
    src = tmp / f"src-{version}"
    src.mkdir(parents=True)
    files = {}
    for seed, quant in enumerate(("Q8_0", "Q4_0")):
        gguf = f"demo.{quant}.gguf"
        make_gguf(src / gguf, seed=seed)
        mf = "Modelfile" if quant == "Q8_0" else f"Modelfile.{quant}"
        (src / mf).write_text(MODELFILE.format(gguf=gguf))
        files |= {gguf: src / gguf, mf: src / mf}
    return write_bundle(dist_dir=tmp / "dist", name="demo", version=version, files=files,
                        manifest_extra={"ollama": {"model": f"demo:{version}"}, **(extra or {})})


def model_digest(store: Path, name: str, tag: str) -> str:
    doc = json.loads((store / LIB / name / tag).read_bytes())
    return doc["layers"][0]["digest"].split(":")[1]


def test_each_quantization_installs_under_its_own_tag_and_latest_follows(tmp_path):
    b = two_quant_bundle(tmp_path)
    sha = {e["path"]: e["sha256"] for e in b["manifest"]["files"]}
    store = tmp_path / "models"
    r1 = install_bundle(b["dir"], store=store, **QUIET)
    r2 = install_bundle(b["tar"], store=store, quant="q4_0", **QUIET)
    assert (r1["model"], r2["model"]) == ("demo:1.0.0", "demo:1.0.0-q4_0")
    assert model_digest(store, "demo", "1.0.0") == sha["demo.Q8_0.gguf"]
    assert model_digest(store, "demo", "1.0.0-q4_0") == sha["demo.Q4_0.gguf"]
    assert model_digest(store, "demo", "latest") == sha["demo.Q4_0.gguf"]  # `ollama run demo`: the last install
    assert [r["model"] for r in list_installed(store)] == ["demo:1.0.0", "demo:1.0.0-q4_0"]
    with pytest.raises(InstallError, match="no Modelfile.Q5_K_M .*quantizations: Q4_0, Q8_0"):
        install_bundle(b["dir"], store=store, quant="Q5_K_M", **QUIET)
    assert_store_consistent(store)
    assert uninstall("demo:latest", store=store, log=lambda m: None) == ["demo:latest"]
    assert not (store / LIB / "demo/latest").exists() and (store / LIB / "demo/1.0.0-q4_0").exists()
    assert_store_consistent(store)


def test_no_latest_leaves_latest_alone(tmp_path):
    b = two_quant_bundle(tmp_path)
    store = tmp_path / "models"
    install_bundle(b["dir"], store=store, latest=False, **QUIET)
    assert not (store / LIB / "demo/latest").exists()


def test_older_version_cannot_move_latest_back(tmp_path):
    store = tmp_path / "models"
    install_bundle(two_quant_bundle(tmp_path / "a", version="2.0.0")["dir"], store=store, **QUIET)
    old = two_quant_bundle(tmp_path / "b", version="1.0.0")
    with pytest.raises(InstallError, match="rollback refused"):
        install_bundle(old["dir"], store=store, name="other:1.0.0", **QUIET)  # same bundle, older, any name
    with pytest.raises(InstallError, match="rollback refused: demo 2.0.0 is installed as demo:2.0.0"):
        install_bundle(old["dir"], store=store, name="demo:old", **QUIET)


GATES = {"gates_failed": ["heldout/exact_match on fine-tune.Q8_0: 0.31 < 0.9"]}


def test_failed_gate_bundle_refused_unless_accepted(tmp_path):
    b = two_quant_bundle(tmp_path, extra=GATES)
    report = verify_bundle(b["dir"], run_probes=False)
    assert first_failure(report).startswith("gates: built with --no-gate and its gates failed (heldout/exact_match")
    assert verify_bundle(b["dir"], run_probes=False, allow_failed_gate=True)["ok"]
    with pytest.raises(InstallError, match="--allow-failed-gate"):
        install_bundle(b["dir"], store=tmp_path / "m", **QUIET)
    install_bundle(b["dir"], store=tmp_path / "m", allow_failed_gate=True, **QUIET)
    from edgelora.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["verify", b["dir"], "--no-probes"]).exit_code == 1
    assert runner.invoke(cli, ["verify", b["dir"], "--no-probes", "--allow-failed-gate"]).exit_code == 0


def test_readme_banner_for_failed_gates():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from edgelora.util.resources import templates_dir

    env = Environment(loader=FileSystemLoader(str(templates_dir())), undefined=StrictUndefined)
    args = dict(name="demo", version="1", model="demo:1", ggufs=["Q8_0", "Q4_0"], scores=[], base={"source": "x",
                "revision": "r", "files": {}}, dataset_sha256="0" * 64, toolkit=False, model_sig=False,
                forgetting_guard=None)
    text = env.get_template("bundle_README.md.j2").render(**args, gates_failed=GATES["gates_failed"])
    head = [ln for ln in text.splitlines() if ln.strip()][:2]
    assert head[1].startswith("> **WARNING: this bundle was built with `--no-gate`"), head
    assert "heldout/exact_match" in text and "--quant Q4_0" in text
    assert "WARNING" not in env.get_template("bundle_README.md.j2").render(**args, gates_failed=None)


def test_same_version_other_content_never_silently_replaces_dist(tmp_path):
    two_quant_bundle(tmp_path)
    (tmp_path / "src-1.0.0" / "demo.Q8_0.gguf").unlink()
    with pytest.raises(BundleError, match="already holds demo 1.0.0 with different files"):
        src = tmp_path / "again"
        src.mkdir()
        make_gguf(src / "demo.Q8_0.gguf", seed=5)
        (src / "Modelfile").write_text(MODELFILE.format(gguf="demo.Q8_0.gguf"))
        write_bundle(dist_dir=tmp_path / "dist", name="demo", version="1.0.0",
                     files={"demo.Q8_0.gguf": src / "demo.Q8_0.gguf", "Modelfile": src / "Modelfile"})
    write_bundle(dist_dir=tmp_path / "dist", name="demo", version="1.0.0", replace=True,
                 files={"demo.Q8_0.gguf": src / "demo.Q8_0.gguf", "Modelfile": src / "Modelfile"})


def test_host_paths_are_made_relative():
    from edgelora.bundle.provenance import without_host_paths

    proj = Path("/home/alice/proj")
    got = without_host_paths({"a": "/home/alice/proj/dist/x.gguf", "b": ["/opt/cache/base", "plain /x"],
                              "c": 3, "d": "/home/alice/proj"}, proj)
    assert got == {"a": "dist/x.gguf", "b": ["base", "plain /x"], "c": 3, "d": "."}
