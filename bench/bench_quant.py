"""Quantization benchmark: quality report time for the demo model, and no extra copies.

    .venv/bin/python bench/bench_quant.py [--types Q8_0,Q4_0,Q4_K_M,Q6_K] [--extra IQ2_XXS,Q2_K]
                                          [--work DIR] [--no-imatrix]

Uses SmolLM2-135M-Instruct (the embedded demo base, dequantized as tests/conftest.py does)
converted to F16 by edgelora, the demo's held-out conversations for the report and its
training conversations for the importance matrix. Prints one JSON object: seconds per
phase, the quality table, and the copy check: bytes this process wrote while quantizing
(``wchar`` of /proc/self/io) against the bytes of the GGUFs llama.cpp produced. A copy of
any output would show up as a ratio near 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def smollm2_dir() -> Path:
    from edgelora.util.hashing import sha256_file
    from edgelora.sources.fetch import embedded_gguf_path, import_gguf

    gguf = embedded_gguf_path("smollm2-135m-instruct")
    cache = Path(os.environ.get("EDGELORA_TEST_CACHE", Path.home() / ".cache" / "edgelora-tests"))
    dest = cache / f"smollm2-{sha256_file(gguf)[:12]}"
    if not (dest / "config.json").is_file():
        import_gguf(gguf, dest)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="Q8_0,Q4_0,Q4_K_M,Q6_K")
    ap.add_argument("--extra", default="", help="more types, e.g. IQ2_XXS,Q2_K,Q4_1,Q5_K_M")
    ap.add_argument("--work", default="/tmp/edgelora-bench-quant")
    ap.add_argument("--no-imatrix", action="store_true")
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()

    from edgelora.util.files import read_jsonl
    from edgelora.gguf.convert import convert
    from edgelora.quantize.imatrix import calibration_batches, compute_imatrix, means
    from edgelora.quantize.pipeline import quantize_all
    from edgelora.quantize.quality import GateThresholds, heldout_token_batches, render_markdown

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = smollm2_dir()
    f16 = work / "smollm2.F16.gguf"
    if not f16.exists():
        convert(model, f16, outtype="f16")
    types = [t for t in (args.types + "," + args.extra).split(",") if t]
    timings = {}
    imatrix = None
    if not args.no_imatrix:
        t0 = time.monotonic()
        batches = calibration_batches(model, read_jsonl(str(ROOT / "demo/data/train.jsonl")), max_examples=32,
                                      max_tokens=160)
        imatrix = means(compute_imatrix(model, batches))
        timings["imatrix"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    heldout = heldout_token_batches(f16, read_jsonl(str(ROOT / "demo/data/heldout.jsonl")),
                                    n_texts=args.texts, max_tokens=args.tokens)
    timings["heldout_tokens"] = round(time.monotonic() - t0, 2)
    out = work / "out"
    for old in out.glob("*") if out.exists() else []:
        old.unlink()
    lines = []
    w0, t0 = _wchar(), time.monotonic()
    shipped, report = quantize_all(f16, out, "smollm2", types, imatrix=imatrix, compare=True, batches=heldout,
                                   thresholds=GateThresholds(), gate="report", log=lines.append)
    timings["quantize_and_report"] = round(time.monotonic() - t0, 2)
    written = _wchar() - w0
    produced = sum(r["out_bytes"] for r in report["runs"].values())
    timings["quality_report"] = report["seconds"]
    print(render_markdown(report), file=sys.stderr)
    print(json.dumps({
        "types": types, "imatrix": imatrix is not None, "timings_s": timings,
        "quality": {k: {m: round(v, 5) if isinstance(v, float) else v for m, v in r.items()}
                    for k, r in report["results"].items()},
        "gate": report["gate"],
        "copy_check": {"bytes_written_while_quantizing": written, "bytes_of_quantized_outputs": produced,
                       "ratio": round(written / max(produced, 1), 3),
                       "files_left": sorted(p.name for p in out.iterdir())},
        "cpu_count": os.cpu_count(),
    }, indent=1))
    if written > 1.1 * produced:  # a copy of any output would show as ~2x
        sys.exit(f"copy check failed: wrote {written} bytes for {produced} bytes of GGUF")


if __name__ == "__main__":
    main()
