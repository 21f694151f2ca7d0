"""Time the air-gapped host path for a bundle built with the toolkit: `sh toolkit/install.sh`
into a fresh virtual environment (no network, empty pip cache), then `edgelora verify` from it.

    .venv/bin/python bench/bench_toolkit.py BUNDLE.tar [--repeat 3] [--json OUT.json]

Each repeat extracts the tar anew and runs both steps inside ``unshare -rn`` when available.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from edgelora.testing.offline import no_network_prefix


def one_run(tar: Path, python: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-toolkit-") as tmp:
        host = Path(tmp)
        with tarfile.open(tar) as t:
            t.extractall(host, filter="data")
        bundle = next(p for p in host.iterdir() if p.is_dir())
        env = {"PATH": "/usr/bin:/bin", "HOME": str(host), "PYTHON": str(python), "LANG": "C.UTF-8",
               "PIP_CACHE_DIR": str(host / "empty-cache"), "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": "/dev/null"}
        prefix = no_network_prefix() or []
        times = {}
        for step, cmd in (("install_sh_s", ["sh", str(bundle / "toolkit" / "install.sh"), str(host / "venv")]),
                          ("verify_s", [str(host / "venv" / "bin" / "edgelora"), "verify", str(tar)])):
            start = time.perf_counter()
            proc = subprocess.run(prefix + cmd, capture_output=True, text=True, env=env, cwd=host)
            times[step] = round(time.perf_counter() - start, 2)
            if proc.returncode != 0:
                sys.exit(f"{step}: failed: {proc.stderr.strip() or proc.stdout[-500:]}")
        times["offline"] = bool(prefix)
        return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tar", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    with tarfile.open(args.tar) as t:
        toolkit = [m for m in t.getmembers() if "/toolkit/" in m.name]
    size_mb = sum(m.size for m in toolkit) / 1e6
    runs = []
    for i in range(args.repeat):
        runs.append(one_run(args.tar, python))
        print(f"run {i + 1}: install.sh {runs[-1]['install_sh_s']} s, verify {runs[-1]['verify_s']} s", flush=True)
    result = {"bundle": str(args.tar), "toolkit_mb": round(size_mb, 1), "toolkit_files": len(toolkit),
              "tar_mb": round(args.tar.stat().st_size / 1e6, 1), "python": str(python), "runs": runs}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
