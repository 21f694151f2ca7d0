"""Eval speed: 200 prompts scored on the demo model's Q8_0 GGUF through llama-cpp-python.

The model is SmolLM2-135M-Instruct as the demo builds it (embedded GGUF → safetensors → F16
GGUF → Q8_0, cached in ~/.cache/edgelora-tests), or with ``--gguf`` any GGUF, e.g. the demo's
fine-tune ``demo/.edgelora/work/quantize/support-json.Q8_0.gguf``. The 200 prompts: the demo's
60 held-out and 50 probe conversations, edgelora's shipped regression set, and demo training
conversations to fill up, each set with its own generation budget (demo: 40 tokens; regression
items their own). Runs are interleaved (A, B, A, B, ...) and medians reported, because this
machine is shared. Usage::

    .venv/bin/python bench/bench_eval.py [--gguf PATH] [--configs 1:full,8:early] [--repeats 3]

A config is PARALLEL:full (every answer generated to end-of-turn or its budget) or
PARALLEL:early (answers stop once they can no longer pass; same scores). ``1:full`` is how
the evaluate stage worked before (one sequence at a time, whole answers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGELORA_TEST_CACHE", Path.home() / ".cache" / "edgelora-tests"))
N_PROMPTS = 200


def demo_q8_0() -> Path:
    from edgelora.util.hashing import sha256_file
    from edgelora.gguf.convert import convert
    from edgelora.quantize.llama_quantize import quantize
    from edgelora.sources.fetch import embedded_gguf_path, import_gguf

    src = embedded_gguf_path("smollm2-135m-instruct")
    tag = sha256_file(src)[:12]
    base_dir = CACHE / f"smollm2-{tag}"
    out = CACHE / f"smollm2-{tag}.Q8_0.gguf"
    if out.is_file():
        return out
    if not (base_dir / "config.json").is_file():
        import_gguf(src, base_dir)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        f16 = Path(tmp) / "f16.gguf"
        convert(base_dir, f16, outtype="f16")
        quantize(f16, Path(tmp) / "q8.gguf", "Q8_0")
        (Path(tmp) / "q8.gguf").replace(out)
    return out


def sets_of_200():
    from edgelora.evaluation.sets import BUILTIN_REGRESSION, EvalSet, load_eval_file, parse_item

    def rows(name):
        return [parse_item(json.loads(line)) for line in (ROOT / "demo" / "data" / f"{name}.jsonl").read_text().splitlines()]

    fields = ("product", "severity", "sentiment")
    heldout, probes = rows("heldout"), rows("probes")
    regression = load_eval_file(BUILTIN_REGRESSION)
    fill = rows("train")[: N_PROMPTS - len(heldout) - len(probes) - len(regression)]
    return [EvalSet("heldout", tuple(heldout), ("json_fields",), 40, fields),
            EvalSet("probes", tuple(probes), ("json_fields",), 40, fields),
            EvalSet("train-sample", tuple(fill), ("json_fields",), 40, fields),
            EvalSet("regression", tuple(regression), ("checks",), 48)]


def main(argv=None) -> int:
    from edgelora.evaluation.runner import evaluate_models

    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--configs", default="1:full,8:early")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    gguf = args.gguf or demo_q8_0()
    sets = sets_of_200()
    n = sum(len(s.items) for s in sets)
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # CPU seconds of this process: what a quiet machine would take
    scores: dict[str, list] = {}
    for _ in range(args.repeats):
        for conf in args.configs.split(","):
            par, mode = conf.split(":")
            t0, c0 = time.perf_counter(), time.process_time()
            report = evaluate_models({"m": str(gguf)}, sets, parallel=int(par), early_stop=mode == "early")
            times.setdefault(conf, []).append(time.perf_counter() - t0)
            cpu.setdefault(conf, []).append(time.process_time() - c0)
            scores.setdefault(conf, []).append({k: v["models"]["m"]["metrics"] for k, v in report["sets"].items()})
            m = report["models"]["m"]
            print(f"{conf}: {n} prompts in {times[conf][-1]:.1f} s wall, {cpu[conf][-1]:.1f} s CPU (load included); "
                  f"{m['prompt_tokens']} prompt "
                  f"tokens evaluated, {m['generated_tokens']} generated; load avg {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\nmodel: {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB), {n} prompts, cpu_count {os.cpu_count()}")
    for conf, ts in times.items():
        same = all(s == scores[conf][0] for s in scores[conf])
        print(f"{conf}: median {statistics.median(ts):.1f} s wall, {statistics.median(cpu[conf]):.1f} s CPU "
              f"over {len(ts)} runs "
              f"({n / statistics.median(ts):.1f} prompts/s); repeat runs identical scores: {same}")
        print(f"  scores: {json.dumps(scores[conf][0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
