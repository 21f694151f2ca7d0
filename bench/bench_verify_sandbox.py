"""What the check-then-use fixes cost `verify`: time and peak memory of verifying the demo-shaped
bundle (bench_verify.demo_bundle: SmolLM2-135M Q4_1, 4 probes x 24 tokens, signed) with this
tree and with an older edgelora tree, each in a fresh process, interleaved.

    python bench/bench_verify_sandbox.py --old DIR [--repeats 3] [--tar]

``--old``: an edgelora source tree to compare with (e.g. ``git archive <commit> | tar -x -C DIR``).
Peak memory: the verifying process's VmHWM, and its children's max RSS (the sandbox). The
bundle is built in a separate process, so this one stays small (ru_maxrss survives exec).
Prints one JSON object with every repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MEASURE = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
start = time.perf_counter()
from edgelora.host.verify import verify_bundle
report = verify_bundle(sys.argv[2], trust=sys.argv[3])
seconds = time.perf_counter() - start
assert report["ok"], [c for c in report["checks"] if not c["ok"]]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, from whatever forked us
self_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": round(seconds, 2), "rss_self_mib": round(self_kib / 1024),
                  "rss_child_mib": round(child_kib / 1024), "probes": len(report["probes"])}))
"""


BUILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/bench")
from bench_verify import demo_bundle
bundle, pub = demo_bundle(Path(sys.argv[2]))
print(json.dumps({"dir": bundle["dir"], "tar": bundle["tar"], "pub": pub}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="An older edgelora source tree to compare with.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tar", action="store_true", help="Verify the .tar instead of the folder.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgelora-bench-sandbox-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # each tree imports itself
        built = subprocess.run([sys.executable, "-c", BUILD, str(ROOT), tmp], env=env, capture_output=True,
                               text=True, check=True)
        bundle = json.loads(built.stdout.strip().splitlines()[-1])
        target, pub = bundle["tar" if args.tar else "dir"], bundle["pub"]
        rows = []
        for i in range(args.repeats):
            for label, tree in (("old", args.old), ("new", str(ROOT))):
                out = subprocess.run([sys.executable, "-c", MEASURE, tree, target, pub], env=env,
                                     capture_output=True, text=True, check=True)
                rows.append({"repeat": i, "tree": label, **json.loads(out.stdout.strip().splitlines()[-1])})
        print(json.dumps({"bundle": "tar" if args.tar else "folder", "cpu_count": os.cpu_count(), "runs": rows},
                         indent=1))


if __name__ == "__main__":
    main()
