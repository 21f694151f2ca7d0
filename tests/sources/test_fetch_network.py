"""`edgelora fetch` without a network says which host it could not reach and what to do."""

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:  # bound then released: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _download(env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    code = ("from edgelora.sources.fetch import download_hf\n"
            "from edgelora.errors import EdgeloraError\n"
            "try:\n    download_hf('HuggingFaceTB/SmolLM2-135M-Instruct', 'main')\n"
            "except EdgeloraError as e:\n    print(type(e).__name__, e.exit_code, e)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_unreachable_hub_names_host_and_remedies(tmp_path):
    port = _closed_port()
    res = _download({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path)})
    out = res.stdout.strip()
    assert out.startswith("NetworkError 2 HuggingFaceTB/SmolLM2-135M-Instruct: cannot reach 127.0.0.1 ("), res.stderr
    for remedy in ("copy the Hugging Face cache", "HF_ENDPOINT", "HTTPS_PROXY"):
        assert remedy in out
    assert "\n" not in out


def test_offline_mode_is_named(tmp_path):
    res = _download({"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert res.stdout.strip() == ("NetworkError 2 HuggingFaceTB/SmolLM2-135M-Instruct: HF_HUB_OFFLINE is set; "
                                  "`edgelora fetch` needs huggingface.co: unset it for this one command"), res.stderr
