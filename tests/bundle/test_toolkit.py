"""The host toolkit (edgelora.bundle.toolkit): built offline from this environment, and install.sh
refusing every bad input with one line before anything is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgelora.cli import cli
from edgelora.bundle.toolkit import Target, write_toolkit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle_fixtures import make_bundle  # noqa: E402

BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="module")
def toolkit(tmp_path_factory) -> dict:
    """One toolkit for the module, built with downloads off (the test suite is offline)."""
    out = tmp_path_factory.mktemp("tk") / "toolkit"
    report = write_toolkit(out, download=False, log=lambda m: None)
    return report


def _copy(toolkit: dict, dest: Path) -> Path:
    shutil.copytree(toolkit["dir"], dest)
    return dest


def _install(toolkit_dir: Path, venv: Path, cwd: Path, **extra_env) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHON": str(BASE_PYTHON),
           "PIP_CACHE_DIR": str(cwd / "empty-pip-cache"), "PIP_NO_INDEX": "1", **extra_env}
    return subprocess.run(["sh", str(toolkit_dir / "install.sh"), str(venv)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_toolkit_has_every_host_wheel_pinned_by_hash(toolkit):
    folder = Path(toolkit["dir"])
    names = {w["name"] for w in toolkit["wheels"]}
    assert {"edgelora", "llama-cpp-python", "gguf", "cryptography", "click", "pluggy", "numpy", "jinja2"} <= names
    assert not names & {"torch", "transformers", "peft", "safetensors", "huggingface-hub", "matplotlib"}
    lines = [ln for ln in (folder / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == len(list((folder / "wheels").iterdir())) == len(toolkit["wheels"])
    from edgelora.util.hashing import sha256_file

    hashes = {sha256_file(p) for p in (folder / "wheels").iterdir()}
    assert {ln.split("--hash=sha256:")[1] for ln in lines} == hashes
    import llama_cpp

    assert f"llama-cpp-python=={llama_cpp.__version__} --hash=sha256:" in "\n".join(lines)
    # edgelora's own wheel carries the templates (a non-editable install renders Modelfiles)
    own = next((folder / "wheels").glob("edgelora-*.whl"))
    with zipfile.ZipFile(own) as zf:
        shipped = set(zf.namelist())
    assert {"edgelora/_shipped/Modelfile.j2", "edgelora/_shipped/templates/bundle_README.md.j2",
            "edgelora/bundle/toolkit_install.sh"} <= shipped
    requires = [ln for ln in zipfile.ZipFile(own).read(next(n for n in shipped if n.endswith("METADATA")))
                .decode().splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert not [r for r in requires if any(b in r for b in ("torch", "transformers", "peft"))], requires


def _one_line_refusal(proc, venv: Path, *needles: str):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("install.sh: "), proc.stderr
    for n in needles:
        assert n in err[0], err[0]
    assert not venv.exists(), "nothing may be installed after a refusal"


def test_install_sh_refuses_a_changed_wheel(toolkit, tmp_path):
    tk = _copy(toolkit, tmp_path / "toolkit")
    wheel = next((tk / "wheels").glob("click-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 1
    wheel.write_bytes(bytes(data))
    _one_line_refusal(_install(tk, tmp_path / "venv", tmp_path), tmp_path / "venv", "click==", "missing or changed")


def test_install_sh_refuses_a_missing_wheel(toolkit, tmp_path):
    tk = _copy(toolkit, tmp_path / "toolkit")
    next((tk / "wheels").glob("pluggy-*.whl")).unlink()
    _one_line_refusal(_install(tk, tmp_path / "venv", tmp_path), tmp_path / "venv", "pluggy==")


def test_install_sh_refuses_a_requirement_without_hash(toolkit, tmp_path):
    tk = _copy(toolkit, tmp_path / "toolkit")
    req = tk / "requirements.txt"
    lines = req.read_text().splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("click=="))
    lines[i] = lines[i].split(" --hash")[0]
    req.write_text("\n".join(lines) + "\n")
    _one_line_refusal(_install(tk, tmp_path / "venv", tmp_path), tmp_path / "venv",
                      f"requirements.txt:{i + 1}", "--hash=sha256")


def test_toolkit_left_out_of_the_manifest_is_refused_by_install_sh_and_verify(toolkit, tmp_path):
    bundle = Path(make_bundle(tmp_path)["dir"])
    tk = _copy(toolkit, bundle / "toolkit")
    _one_line_refusal(_install(tk, tmp_path / "venv", tmp_path), tmp_path / "venv",
                      "not listed in manifest.json")
    result = CliRunner().invoke(cli, ["verify", str(bundle), "--no-probes"])
    assert result.exit_code == 1
    assert "unexpected file: toolkit/" in result.output.splitlines()[-1]


def test_install_sh_checks_manifest_sig_when_given_a_trusted_key(toolkit, tmp_path):
    """EDGELORA_TRUST: an unsigned bundle, or one signed by another key, installs nothing."""
    from edgelora.bundle.layout import write_bundle
    from edgelora.bundle.signing import generate_keypair
    from edgelora.bundle.toolkit import toolkit_files

    from bundle_fixtures import make_gguf

    generate_keypair(tmp_path / "publisher", "ed25519")
    generate_keypair(tmp_path / "stranger", "ed25519")
    files = {"demo.Q8_0.gguf": make_gguf(tmp_path / "m.gguf"), **toolkit_files(Path(toolkit["dir"]))}
    signed = Path(write_bundle(dist_dir=tmp_path / "signed", name="demo", version="1.0.0", files=files,
                               signing_key=tmp_path / "publisher")["dir"])
    unsigned = Path(write_bundle(dist_dir=tmp_path / "unsigned", name="demo", version="1.0.0", files=files)["dir"])
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed; install.sh needs it to check manifest.sig")
    stranger = str(tmp_path / "stranger.pub")
    _one_line_refusal(_install(signed / "toolkit", tmp_path / "venv", tmp_path, EDGELORA_TRUST=stranger),
                      tmp_path / "venv", "manifest.sig: not a signature of manifest.json")
    _one_line_refusal(_install(unsigned / "toolkit", tmp_path / "venv", tmp_path, EDGELORA_TRUST=stranger),
                      tmp_path / "venv", "manifest.sig: missing")
    # the right key and the right bundle: the signature check passes and the install goes on;
    # a changed manifest.json then fails the signature, not just the hashes
    manifest = signed / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"version": "1.0.0"', b'"version": "1.0.1"'))
    _one_line_refusal(_install(signed / "toolkit", tmp_path / "venv", tmp_path,
                               EDGELORA_TRUST=str(tmp_path / "publisher.pub")),
                      tmp_path / "venv", "manifest.sig: not a signature")


def test_pip_refusal_leaves_nothing_installed(toolkit, tmp_path):
    """The pre-check passes (every pinned hash has its wheel) but pip refuses: a version that
    does not match the wheel. One line, and the half-made virtual environment is removed."""
    import re

    tk = _copy(toolkit, tmp_path / "toolkit")
    req = tk / "requirements.txt"
    req.write_text(re.sub(r"(?m)^click==\S+", "click==999.0", req.read_text()))
    proc = _install(tk, tmp_path / "venv", tmp_path)
    _one_line_refusal(proc, tmp_path / "venv", "pip refused")


def test_other_platform_reports_what_it_cannot_provide(tmp_path):
    result = CliRunner().invoke(cli, ["toolkit", str(tmp_path / "tk"), "--platform", "manylinux_2_28_aarch64",
                                      "--python", "3.12", "--no-download"])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: toolkit for Python 3.12 manylinux_2_28_aarch64:")
    assert "llama-cpp-python==" in last and "compiled from source" in last and "--find-links" in last
    assert not (tmp_path / "tk").exists(), "no partial toolkit under the final name"


@pytest.mark.parametrize("args, field", [(["--python", "3"], "--python '3'"),
                                         (["--platform", "linux x86"], "--platform 'linux x86'")])
def test_bad_target_is_one_line(tmp_path, args, field):
    result = CliRunner().invoke(cli, ["toolkit", str(tmp_path / "tk"), "--no-download", *args])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        next(ln for ln in result.output.splitlines() if ln.startswith("error:"))]
    assert field in result.output and not (tmp_path / "tk").exists()


def test_target_tags_and_markers_for_another_platform():
    t = Target("3.12", "manylinux_2_28_aarch64")
    assert {"manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"} <= set(t.platforms())
    env = t.marker_env()
    assert env["platform_machine"] == "aarch64" and env["python_version"] == "3.12" and env["sys_platform"] == "linux"
    assert not t.is_here and Target(f"{sys.version_info[0]}.{sys.version_info[1]}").is_here


def test_build_side_command_without_the_extra_names_it(smollm2_dir, tmp_path):
    """torch absent (blocked): a build-side command exits with one line naming edgelora[build]."""
    script = ("import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'transformers', 'peft')]\n"
              "from edgelora.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", script, "convert", str(smollm2_dir), "-o", str(tmp_path / "m.gguf")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: this command needs torch, which is not installed: pip install 'edgelora[build]'"], \
        proc.stderr
    assert not (tmp_path / "m.gguf").exists()


def test_host_side_commands_run_with_the_build_side_blocked(tmp_path):
    b = make_bundle(tmp_path)
    script = ("import sys; [sys.modules.__setitem__(m, None) for m in "
              "('torch', 'transformers', 'peft', 'safetensors', 'huggingface_hub', 'matplotlib', 'rich')]\n"
              "from edgelora.cli import main; main()")
    for args in (["verify", b["tar"], "--no-probes", "--json"],
                 ["install", b["tar"], "--no-probes", "--store", str(tmp_path / "store")],
                 ["list", "--store", str(tmp_path / "store")],
                 ["keygen", str(tmp_path / "k")],
                 ["uninstall", "demo", "--store", str(tmp_path / "store")]):
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=tmp_path,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert proc.returncode == 0, (args, proc.stdout + proc.stderr)
    assert json.loads(subprocess.run([sys.executable, "-c", script, "verify", b["dir"], "--no-probes", "--json"],
                                     capture_output=True, text=True).stdout)["ok"] is True
