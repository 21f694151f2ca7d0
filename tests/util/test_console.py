"""Library noise silenced unless --debug; piped output one line per message."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run_quietly(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("TQDM_DISABLE", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_library_noise_is_silenced_unless_debug():
    code = ("import logging, warnings\n"
            "logging.basicConfig()\n"
            "from edgelora.util.console import quiet_libraries\n"
            "quiet_libraries(debug=False)\n"
            "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('Failed to load CPU gemm_4bit_forward from "
            "kernels-community')\n"
            "warnings.warn('`x` is deprecated', FutureWarning)\n"
            "import os, tqdm\n"
            "print(os.environ.get('TQDM_DISABLE'), os.environ.get('TRANSFORMERS_VERBOSITY'))\n"
            "for _ in tqdm.tqdm(range(3)): pass\n")
    quiet = _run_quietly(code)
    assert quiet.stdout.strip() == "1 error"
    assert quiet.stderr == "", quiet.stderr  # no warning, no bar (stderr is a pipe here)
    loud = _run_quietly(code.replace("debug=False", "debug=True"))
    assert "kernels-community" in loud.stderr and "FutureWarning" in loud.stderr and "3/3" in loud.stderr


def test_piped_console_does_not_wrap():
    code = ("from edgelora.util.console import make_console\n"
            "c = make_console()\n"
            "c.print('  imatrix -> ' + '/very/long/path/' * 10 + 'imatrix.gguf')\n"
            "c.print('set [data] max_seq_length to choose')\n")
    res = _run_quietly(code)
    first, second = res.stderr.splitlines()
    assert first.endswith("imatrix.gguf") and second == "set [data] max_seq_length to choose"
