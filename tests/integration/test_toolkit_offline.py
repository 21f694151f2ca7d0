"""The air-gapped host, end to end: the tiny project built with the toolkit, then with the
network off (``unshare -rn``), an empty pip cache and a fresh virtual environment from the
system Python, ``toolkit/install.sh`` from the extracted bundle alone, ``edgelora verify`` and
``edgelora install`` from that environment, where torch, transformers and peft do not exist."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from edgelora.testing.offline import no_network_prefix

BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    from edgelora.bundle.signing import generate_keypair

    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "ed", "ed25519")
    generate_keypair(folder / "ms", "ecdsa-p256")
    return {"ed": folder / "ed", "ms": folder / "ms"}


@pytest.fixture(scope="module")
def built(edgelora_build, keys):
    return edgelora_build(config={"bundle": {"probes": 1, "probe_tokens": 4, "toolkit": True,
                                             "toolkit_download": False, "signing_key": str(keys["ed"]),
                                             "model_signing_key": str(keys["ms"])}})


def test_toolkit_is_in_the_signed_manifest(built):
    paths = {f["path"] for f in built.manifest["files"]}
    assert {"toolkit/install.sh", "toolkit/requirements.txt"} <= paths
    wheels = {p for p in paths if p.startswith("toolkit/wheels/")}
    assert any("/edgelora-" in p for p in wheels) and any("/llama_cpp_python-" in p for p in wheels)
    with tarfile.open(built.tar) as t:
        names = set(t.getnames())
    assert {f"{built.bundle_dir.name}/{n}" for n in ("manifest.sig", "model.sig", "toolkit/install.sh")} <= names
    readme = (built.bundle_dir / "README.md").read_text()
    assert "sh toolkit/install.sh" in readme and "model_signing verify key" in readme


def test_air_gapped_host_installs_from_the_bundle_alone(built, keys, tmp_path):
    prefix = no_network_prefix()
    if prefix is None:
        pytest.skip("unshare cannot make a network namespace here (no user namespaces); the offline proof needs one")
    host = tmp_path / "host"
    host.mkdir()
    tar = host / built.tar.name
    tar.write_bytes(built.tar.read_bytes())
    with tarfile.open(tar) as t:  # what the operator does: untar, then run the script inside
        t.extractall(host, filter="data")
    bundle = host / built.bundle_dir.name
    (host / "trusted.pub").write_bytes(Path(str(keys["ed"]) + ".pub").read_bytes())
    script = f"""
set -eu
cd {host}
start=$(date +%s%N)
sh {bundle}/toolkit/install.sh {host}/venv
mid=$(date +%s%N)
{host}/venv/bin/edgelora verify {tar} --trust {host}/trusted.pub
end=$(date +%s%N)
{host}/venv/bin/edgelora install {tar} --trust {host}/trusted.pub --store {host}/store
{host}/venv/bin/edgelora list --store {host}/store --json > {host}/list.json
{host}/venv/bin/python -c "
import importlib.util, json
print('BUILD-SIDE', json.dumps({{m: importlib.util.find_spec(m) is not None
                                for m in ('torch', 'transformers', 'peft', 'safetensors', 'huggingface_hub')}}))"
echo "TIMES install.sh $(( (mid - start) / 1000000 )) ms verify $(( (end - mid) / 1000000 )) ms"
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(host), "PYTHON": str(BASE_PYTHON), "LANG": "C.UTF-8",
           "PIP_CACHE_DIR": str(host / "empty-pip-cache"), "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": "/dev/null"}
    if shutil.which("openssl", path=env["PATH"]):
        env["EDGELORA_TRUST"] = str(host / "trusted.pub")  # install.sh checks manifest.sig first
    started = time.monotonic()
    proc = subprocess.run(prefix + ["sh", "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "installed edgelora" in out and "verify: ok" in out, out
    assert "signed by trusted key" in out
    assert "probes:tiny.Q8_0.gguf" in out, "verify loaded the model and replayed the probes"
    build_side = json.loads(out.split("BUILD-SIDE ", 1)[1].splitlines()[0])
    assert not any(build_side.values()), build_side
    rows = json.loads((host / "list.json").read_text())
    assert [r["version"] for r in rows] == [built.manifest["version"]]
    assert not list((host / "empty-pip-cache").rglob("*.whl")), "pip used no cache"
    times = next(line for line in out.splitlines() if line.startswith("TIMES"))
    size = sum(p.stat().st_size for p in (bundle / "toolkit").rglob("*") if p.is_file())
    print(f"toolkit {size / 1e6:.1f} MB; {times}; whole host run {time.monotonic() - started:.1f} s")
