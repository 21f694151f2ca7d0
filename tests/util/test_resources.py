"""edgelora as a distribution: the wheel and the sdist ship templates/ and Modelfile.j2, and an
install of either (not editable, outside the source tree) renders a Modelfile and verifies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle_fixtures import make_bundle  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The sdist, a wheel built from the sdist, and a wheel built from the tree (no network)."""
    pytest.importorskip("setuptools", reason="building edgelora needs setuptools (test extra)")
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "build",
                                                             "*.egg-info", "dist", "tests", "bench", "demo",
                                                             "plugins", "_shipped"))
    out = tmp / "out"
    out.mkdir()
    _run([sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(out)!r})"], cwd=src)
    sdist = next(out.glob("edgelora-*.tar.gz"))
    from_sdist, from_tree = tmp / "from-sdist", tmp / "from-tree"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", from_sdist, sdist])
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", from_tree, src])
    return {"sdist": sdist, "wheel-from-sdist": next(from_sdist.glob("*.whl")),
            "wheel-from-tree": next(from_tree.glob("*.whl"))}


def test_sdist_and_wheel_carry_the_templates(dists):
    with tarfile.open(dists["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"Modelfile.j2", "templates/bundle_README.md.j2", "setup.py", "MANIFEST.in",
            "edgelora/bundle/toolkit_install.sh", "edgelora/modelfile/gotmpl/render.go"} <= names
    assert any(n.startswith("templates/chat/") for n in names)
    for key in ("wheel-from-sdist", "wheel-from-tree"):
        with zipfile.ZipFile(dists[key]) as z:
            shipped = set(z.namelist())
        assert {"edgelora/_shipped/Modelfile.j2", "edgelora/_shipped/templates/bundle_README.md.j2",
                "edgelora/bundle/toolkit_install.sh", "edgelora/modelfile/gotmpl/render.go",
                "edgelora/evaluation/regression.jsonl"} <= shipped, key
        chat = {n for n in shipped if n.startswith("edgelora/_shipped/templates/chat/")}
        assert chat == {f"edgelora/_shipped/{p.relative_to(REPO).as_posix()}"
                        for p in (REPO / "templates" / "chat").rglob("*") if p.is_file()}, key


RENDER = """
import edgelora, sys
from pathlib import Path
assert Path(edgelora.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), edgelora.__file__
from edgelora.util.resources import modelfile_template, templates_dir
assert "_shipped" in str(modelfile_template()) and "_shipped" in str(templates_dir())
from edgelora.modelfile.render import render_modelfile
text = render_modelfile(gguf_name="m.Q8_0.gguf", template_text="{{ .Prompt }}", stops=["<|im_end|>"], num_ctx=2048)
assert "FROM ./m.Q8_0.gguf" in text, text
print("rendered")
"""


@pytest.mark.parametrize("which", ["wheel-from-sdist", "wheel-from-tree"])
def test_installed_wheel_renders_a_modelfile_and_verifies(dists, which, tmp_path):
    venv = tmp_path / "venv"
    _run([BASE_PYTHON, "-m", "venv", venv], env=CLEAN_ENV)
    # dependencies from this test environment; edgelora itself only from the wheel
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "zz_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", dists[which]],
         env=CLEAN_ENV)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert "rendered" in _run([venv / "bin" / "python", "-c", RENDER], cwd=outside, env=CLEAN_ENV).stdout
    bundle = make_bundle(tmp_path)
    proc = _run([venv / "bin" / "edgelora", "verify", bundle["tar"], "--no-probes"], cwd=outside, env=CLEAN_ENV)
    assert proc.stdout.strip().splitlines()[-1] == "verify: ok"
