"""Target-host benchmark: verify time of a demo-size bundle, sha256 throughput on a
multi-GB file, and how many copies of the GGUF an install writes.

    .venv/bin/python bench/bench_verify.py [--bundle DIR_OR_TAR] [--gib 4] [--work DIR] [--hash-only]

Without --bundle, a demo-shaped bundle is built from the embedded SmolLM2-135M GGUF with
4 probes x 24 greedy tokens (the demo's [bundle] settings), signed with a fresh key.
Hashing is measured on a sparse file (holes read as zeros from no disk: pure sha256 +
read-syscall cost) and on a real file of the same size written first (page-cache reads),
both through edgelora's hasher (``edgelora.hashing.sha256_fd``) and through coreutils'
``sha256sum`` for comparison. Install copies are measured as bytes this process wrote
(``wchar`` of /proc/self/io) divided by the GGUF size. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [[{"role": "user", "content": "My printer caught fire. I am furious."}],
           [{"role": "user", "content": "The app logs me out every hour, slightly annoying."}],
           [{"role": "system", "content": "Reply in French."}, {"role": "user", "content": "Good morning"}],
           [{"role": "user", "content": "Hi!"}]]
MODELFILE = '''FROM ./{gguf}
TEMPLATE """{{{{- range .Messages }}}}<|im_start|>{{{{ .Role }}}}
{{{{ .Content }}}}<|im_end|>
{{{{ end }}}}<|im_start|>assistant
"""
PARAMETER num_ctx 2048
PARAMETER stop "<|im_start|>"
PARAMETER stop "<|im_end|>"
'''


def _wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def demo_bundle(work: Path) -> tuple[dict, str]:
    from edgelora.bundle.layout import write_bundle
    from edgelora.bundle.probes import record_probes
    from edgelora.bundle.signing import generate_keypair
    from edgelora.sources.fetch import embedded_gguf_path

    gguf = embedded_gguf_path("smollm2-135m-instruct")
    keys = generate_keypair(work / "keys" / "bench.key")
    (work / "Modelfile").write_text(MODELFILE.format(gguf="demo.Q4_1.gguf"))
    records = record_probes(gguf, PROMPTS, max_tokens=24)
    out = write_bundle(dist_dir=work / "dist", name="demo", version="0.1.0", readme_text="# demo\n",
                       files={"demo.Q4_1.gguf": gguf, "Modelfile": work / "Modelfile"},
                       manifest_extra={"probes": {"model": "demo.Q4_1.gguf", "logit_tolerance": 0.05,
                                                  "items": records}},
                       signing_key=keys["private"])
    return out, keys["public"]


def time_verify(path, trust, runs: int = 2) -> dict:
    from edgelora.host.verify import verify_bundle

    best, report = None, None
    for _ in range(runs):
        start = time.perf_counter()
        report = verify_bundle(path, trust=trust)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    return {"seconds": round(best, 2), "checks": len(report["checks"]), "probes": len(report["probes"])}


def hash_throughput(path: Path, size: int) -> dict:
    from edgelora.util.hashing import sha256_fd

    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        read, _ = sha256_fd(fd, size)
        ours = time.perf_counter() - start
    finally:
        os.close(fd)
    assert read == size
    result = {"edgelora_GBps": round(size / ours / 1e9, 2)}
    if shutil.which("sha256sum"):
        start = time.perf_counter()
        subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
        result["sha256sum_GBps"] = round(size / (time.perf_counter() - start) / 1e9, 2)
    return result


def install_copies(bundle: dict, work: Path) -> dict:
    from edgelora.host.install import install_bundle

    gguf_size = next(e["size"] for e in bundle["manifest"]["files"] if e["path"].endswith(".gguf"))
    out = {}
    for kind in ("dir", "tar"):
        store = work / f"store-{kind}"
        before = _wchar()
        start = time.perf_counter()
        install_bundle(bundle[kind], store=store, run_probes=False, log=lambda m: None)
        out[kind] = {"seconds": round(time.perf_counter() - start, 2),
                     "bytes_written_per_gguf": round((_wchar() - before) / gguf_size, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", help="An existing bundle folder or .tar (its verify runs without --trust).")
    ap.add_argument("--gib", type=float, default=4.0, help="Size of the synthetic files to hash.")
    ap.add_argument("--work", help="Work folder (default: a temporary one, removed).")
    ap.add_argument("--hash-only", action="store_true", help="Only the hashing measurements (stdlib only).")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edgelora-bench-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"cpu_count": os.cpu_count()}
    try:
        if args.hash_only:
            pass
        elif args.bundle:
            result["verify"] = {"bundle": time_verify(args.bundle, None)}
        else:
            bundle, pub = demo_bundle(work)
            result["bundle_bytes"] = sum(e["size"] for e in bundle["manifest"]["files"])
            result["verify"] = {"dir": time_verify(bundle["dir"], pub), "tar": time_verify(bundle["tar"], pub)}
            result["install"] = install_copies(bundle, work)
        size = int(args.gib * (1 << 30))
        sparse = work / "sparse.bin"
        with open(sparse, "wb") as f:
            f.truncate(size)
        result["hash_sparse"] = {"bytes": size, **hash_throughput(sparse, size)}
        sparse.unlink()
        real = work / "real.bin"
        block = os.urandom(8 << 20)
        with open(real, "wb") as f:
            for _ in range(size // len(block)):
                f.write(block)
        real_size = real.stat().st_size
        result["hash_real_page_cache"] = {"bytes": real_size, **hash_throughput(real, real_size)}
        real.unlink()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
