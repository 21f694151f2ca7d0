"""The llamacpp-server target: the shared contract, then a real server started from the exported files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import MappingProxyType

import pytest

from edgelora.testing import TargetContract

from edgelora_llamacpp_server import export


class TestLlamacppServerContract(TargetContract):
    target = "llamacpp-server"
    plugin = "llamacpp-server"

    def check_export(self, build, files):
        script = files["llamacpp-server/launch.sh"].read_text()
        assert "-m llama_cpp.server" in script
        assert '--model "$BUNDLE/tiny.Q8_0.gguf"' in script and (build.bundle_dir / "tiny.Q8_0.gguf").is_file()
        import re

        modelfile = (build.bundle_dir / "Modelfile").read_text()
        n_ctx = re.search(r"^PARAMETER num_ctx (\d+)$", modelfile, re.MULTILINE).group(1)
        assert f"--n_ctx {n_ctx}\n" in script or f"--n_ctx {n_ctx} " in script, \
            "n_ctx comes from the project (the Modelfile's num_ctx)"
        unit = files["llamacpp-server/edgelora-tiny.service"].read_text()
        assert "ExecStart=/bin/sh /opt/edgelora/tiny-0.1.0/llamacpp-server/launch.sh" in unit
        assert "[Install]" in unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url: str, body: dict, timeout: float = 60.0):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture
def smollm2_bundle(tmp_path):
    """A bundle folder holding the real SmolLM2-135M-Instruct GGUF (it has a real chat template
    and answers in a few tokens), with the target's files exported next to it."""
    from edgelora.config import from_dict
    from edgelora.context import Context
    from edgelora.registry import Registry
    from edgelora.sources.fetch import embedded_gguf_path

    gguf = embedded_gguf_path("smollm2-135m-instruct")
    bundle = tmp_path / "smollm2-0.1.0"
    bundle.mkdir()
    os.symlink(gguf, bundle / "smollm2.Q4_1.gguf")
    cfg = from_dict({"project": {"name": "smollm2", "version": "0.1.0"}, "export": {"quantize": ["Q4_1"]}},
                    root=tmp_path)
    artifacts = {"quantized": {"Q4_1": str(gguf)},
                 "modelfile": {"text": "FROM ./smollm2.Q4_1.gguf\nPARAMETER num_ctx 1024\n", "template": "smollm2"}}
    ctx = Context(config=cfg, project_dir=tmp_path, registry=Registry(),
                  artifacts=MappingProxyType(artifacts), log=lambda m: None)
    files = export(ctx, bundle)
    assert set(files) == {"llamacpp-server/launch.sh", "llamacpp-server/edgelora-smollm2.service"}
    return bundle


def test_exported_launch_script_serves_a_chat_completion_that_stops(smollm2_bundle, tmp_path):
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")
    port = _free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "THREADS": "1", "PYTHON": sys.executable}
    log = open(tmp_path / "server.log", "wb")  # a pipe would fill up with llama.cpp's load log and block it
    proc = subprocess.Popen(["/bin/sh", str(smollm2_bundle / "llamacpp-server" / "launch.sh")], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                models = _get(f"{base}/models")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("server did not answer /v1/models within 90 s")
                time.sleep(0.3)
        assert models["data"][0]["id"] == "smollm2:0.1.0"
        reply = _post(f"{base}/chat/completions", {
            "model": "smollm2:0.1.0", "temperature": 0, "max_tokens": 64,
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}]})
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        text = choice["message"]["content"]
        assert text.strip() and "<|im_end|>" not in text and "<|im_start|>" not in text, text
        assert reply["usage"]["completion_tokens"] < 64
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def test_install_points_the_unit_at_the_bundle(smollm2_bundle, tmp_path):
    from edgelora_llamacpp_server import install, uninstall

    (smollm2_bundle / "manifest.json").write_text(json.dumps({"name": "smollm2", "version": "0.1.0"}))
    root = tmp_path / "root"
    installed = install(smollm2_bundle, root)["installed"]
    unit = Path(installed[0]).read_text()
    assert f"ExecStart=/bin/sh {smollm2_bundle.resolve()}/llamacpp-server/launch.sh" in unit
    other = root / "etc" / "systemd" / "system" / "other.service"
    other.write_text("[Unit]\n")
    assert uninstall(smollm2_bundle, root)["removed"] == installed
    assert other.is_file(), "uninstall removes only what install wrote"
