"""Peak memory of the streamed float32 reference forward (edgelora.merge.streamed_forward) vs depth.

Builds bench_convert's synthetic Llama bases (random bf16 weights, SmolLM2's tokenizer, an r=16
all-linear LoRA adapter) at the 1B and 3B shapes and at the 1B width with 3x its depth, then runs,
each in its own child process under ``/usr/bin/time -v``, the reference side of the GGUF check:
the PEFT-attached model's float32 logits on validate's four probes of 64 tokens. ``--full`` also
runs the whole-model path (``AutoModelForCausalLM`` in float32 + PEFT) for comparison.
Usage::

    .venv/bin/python bench/bench_reference_memory.py [--shapes 1b,1b-deep,3b] [--full 1b]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_convert as bc  # noqa: E402

bc.SHAPES["1b-deep"] = dict(bc.SHAPES["1b"], num_hidden_layers=48)

CHILD = r"""
import sys, time
from pathlib import Path
from transformers import AutoTokenizer
from edgelora.gguf.validate import LOGIT_PROMPTS, probe_ids
base, adapter, mode = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
seqs = [probe_ids(tok, p, 64) for p in LOGIT_PROMPTS]
t0 = time.monotonic()
if mode == "imports":
    import peft, accelerate  # noqa: F401  (what every path loads before any weight)
elif mode == "streamed":
    from edgelora.merge.streamed_forward import reference_logits
    assert reference_logits(base, seqs, adapter_dir=adapter).mode == "streamed"
else:
    from edgelora.merge.streamed_forward import _full
    _full(Path(base), seqs, None, adapter, None)
print("forward_s", round(time.monotonic() - t0, 2))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="1b,1b-deep,3b")
    ap.add_argument("--full", default="", help="Shapes to also run the whole-model path on.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgelora-bench-convert"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    tok = bc.tokenizer_dir(args.work)
    results = {}
    for shape in args.shapes.split(","):
        base = bc.build_base(shape, tok, args.work / shape / "base")
        adapter = bc.build_adapter(base, args.work / shape / "adapter")
        cfg = json.loads((base / "config.json").read_text())
        row = {"layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"],
               "base_gb": round(sum(p.stat().st_size for p in base.glob("*.safetensors")) / 1e9, 3)}
        modes = ["imports", "streamed"] + (["full"] if shape in args.full.split(",") else [])
        for mode in modes:
            row[mode] = bc.timed([sys.executable, "-c", CHILD, str(base), str(adapter), mode])
        results[shape] = row
        print(json.dumps({shape: row}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
