"""The quantize stages: the fine-tune (importance matrix, every requested type, quality report and
gate) and the untouched base at the same types (for the before/after score)."""

from __future__ import annotations

from pathlib import Path

from edgelora import artifacts as A
from edgelora.data.guards import max_seq_length
from edgelora.util.files import atomic_write_json, atomic_write_text, read_jsonl


def _imatrix_values(ctx, out_dir: Path) -> tuple[dict | None, dict]:
    from edgelora.quantize.imatrix import calibration_batches, compute_imatrix, read_imatrix, write_imatrix
    from edgelora.quantize.pipeline import wants_imatrix

    ex = ctx.config.export
    if not wants_imatrix(ex.quantize, ex.imatrix):
        return None, {"used": False, "setting": ex.imatrix}
    if ex.imatrix not in ("auto", "on"):
        path = ctx.config.resolve(ex.imatrix)
        values = read_imatrix(path)
        ctx.log(f"  importance matrix: {path} ({len(values)} tensors)")
        return values, {"used": True, "setting": ex.imatrix, "file": str(path), "tensors": len(values)}
    base = ctx.need(A.BASE)["path"]
    source = ctx.config.resolve(ex.calibration) if ex.calibration else ctx.need(A.DATASET)["train"]
    conversations = read_jsonl(source)
    batches = calibration_batches(base, conversations, max_examples=ex.calibration_examples,
                                  max_tokens=max_seq_length(ctx))
    result = compute_imatrix(base, batches, adapter_dir=ctx.need(A.ADAPTER),
                             architectures=ctx.registry.architectures)
    path = write_imatrix(out_dir / "imatrix.gguf", result, dataset=Path(source).name)
    values = read_imatrix(path)  # what the file says is what the quantizer gets
    ctx.log(f"  importance matrix: {len(values)} tensors from {result['chunks']} conversations "
            f"({result['tokens']} tokens, {result['seconds']:.1f} s) -> {path.name}")
    return values, {"used": True, "setting": ex.imatrix, "file": str(path), "tensors": len(values),
                    "calibration": str(source), "conversations": result["chunks"], "tokens": result["tokens"],
                    "seconds": result["seconds"]}


def quantize(ctx) -> dict:
    from edgelora.quantize.pipeline import quantize_all
    from edgelora.quantize.quality import GateThresholds, heldout_token_batches, render_markdown

    ex = ctx.config.export
    src = ctx.need(A.GGUF)
    out_dir = ctx.stage_dir("quantize")
    for stale in out_dir.glob("*.gguf"):
        if stale.name != "imatrix.gguf":
            stale.unlink()
    values, imatrix_report = _imatrix_values(ctx, out_dir)
    ds = ctx.need(A.DATASET)
    heldout = read_jsonl(ds["heldout"]) or read_jsonl(ds["train"])
    batches = heldout_token_batches(src, heldout, n_texts=ex.quality_texts, max_tokens=ex.quality_tokens)
    thresholds = GateThresholds(max_kl=ex.gate_max_kl, min_top1=ex.gate_min_top1, max_ppl_ratio=ex.gate_max_ppl_ratio)
    shipped, quality = quantize_all(src, out_dir, ctx.config.project.name, ex.quantize, imatrix=values,
                                    compare=ex.imatrix_compare, batches=batches, thresholds=thresholds,
                                    gate=ex.gate, log=ctx.log)
    quality["imatrix"] = imatrix_report
    atomic_write_json(out_dir / "quality.json", quality)
    atomic_write_text(out_dir / "quality.md", render_markdown(quality))
    return {A.QUANTIZED: shipped, A.QUANT_REPORT: quality}


def quantize_base(ctx) -> dict:
    """The base GGUF at every requested type, cached like any stage (evaluate scores it)."""
    from edgelora.quantize.llama_quantize import quantize as quantize_gguf

    out_dir = ctx.stage_dir("quantize-base")
    quantized = {}
    for qtype in ctx.config.export.quantize:
        path = out_dir / f"base.{qtype}.gguf"
        quantize_gguf(ctx.need(A.BASE_GGUF), path, qtype)  # writes through a temporary name
        quantized[qtype] = str(path.resolve())
    return {A.BASE_QUANTIZED: quantized}


def task_scores(eval_report: dict | None) -> dict:
    """{quant type: first metric of the held-out set (else the first set)} of each fine-tune GGUF."""
    sets = (eval_report or {}).get("sets") or {}
    if not sets:
        return {}
    chosen = sets.get("heldout") or next(iter(sets.values()))
    metric = (chosen.get("metrics") or [None])[0]
    out = {}
    for label, scored in (chosen.get("models") or {}).items():
        if label.startswith("fine-tune."):
            value = (scored.get("metrics") or {}).get(metric)
            if isinstance(value, (int, float)):
                out[label.split(".", 1)[1]] = value
    return out


def quality_files(ctx, staging: Path) -> dict[str, Path]:
    """reports/quant_quality.{md,json} for the bundle, with the task score where one is defined."""
    from edgelora.quantize.quality import render_markdown

    report = dict(ctx.need(A.QUANT_REPORT))
    report["task_scores"] = task_scores(ctx.artifacts.get(A.EVAL_REPORT))
    md, js = staging / "quant_quality.md", staging / "quant_quality.json"
    atomic_write_text(md, render_markdown(report, report["task_scores"]))
    atomic_write_json(js, report)
    return {"reports/quant_quality.md": md, "reports/quant_quality.json": js}
