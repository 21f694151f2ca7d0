"""The build's eval stages: eval-sets, evaluate, gate."""

from __future__ import annotations

from pathlib import Path

from edgelora import artifacts as A
from edgelora.util.files import atomic_write_json, atomic_write_text
from edgelora.evaluation.gates import check_gates, enforce, gate_summary
from edgelora.evaluation.report import compact, render_markdown
from edgelora.evaluation.runner import evaluate_models
from edgelora.evaluation.sets import build_sets, eval_files, load_eval_file


def eval_sets_stage(ctx) -> dict:
    """Check every eval file named in [eval] (file:line errors) before anything expensive runs.

    Its artifact lists the files by absolute path, so the evaluate stage's cache key covers
    their content, not only their names."""
    files = eval_files(ctx.config)
    for path in files.values():
        load_eval_file(path)
    return {A.EVAL_SETS: files}


def evaluate_stage(ctx) -> dict:
    cfg = ctx.config
    sets = build_sets(cfg, ctx.need(A.DATASET))
    if not sets:
        return {A.EVAL_REPORT: {"schema": 1, "sets": {}, "note": "no eval sets configured"}}
    out_dir = ctx.stage_dir("evaluate")
    first = next(iter(ctx.need(A.QUANTIZED)))  # first type that passed the quantization gate
    base_label = f"base.{first}"
    models = {base_label: ctx.need(A.BASE_QUANTIZED)[first]}
    models |= {f"fine-tune.{q}": p for q, p in ctx.need(A.QUANTIZED).items()}
    report = evaluate_models(models, sets, base_model=base_label, log=ctx.log)
    files = write_reports(report, out_dir)
    return {A.EVAL_REPORT: compact(report) | {"files": files}}


def write_reports(report: dict, out_dir: Path) -> dict[str, str]:
    json_path, md_path = out_dir / "eval.json", out_dir / "eval.md"
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report, report.get("gates")))
    return {"eval.json": str(json_path.resolve()), "eval.md": str(md_path.resolve())}


def gate_stage(ctx) -> dict:
    """Check [eval] gates on the scores; stop the build when one fails, with the numbers
    (``build --no-gate`` records and goes on). Gates live outside the evaluate stage so that
    changing a threshold re-checks in a second instead of re-generating every answer.

    The bundle's eval.md and eval.json are written here, with the gate results in them."""
    import json

    eval_report = ctx.need(A.EVAL_REPORT)
    results = check_gates(eval_report, list(ctx.config.eval.gates))
    enforced = bool(ctx.options.get("gate", True))
    files = {}
    full_path = (eval_report.get("files") or {}).get("eval.json")
    if full_path and Path(full_path).is_file():
        full = json.loads(Path(full_path).read_text(encoding="utf-8"))
        full["gates"] = results
        files = write_reports(full, ctx.stage_dir("gate"))
    for r in results:
        if not r["ok"]:
            ctx.log(f"  gate FAILED: {r['set']}/{r['metric']} on {r['model']}: {r['detail']}")
    if results and all(r["ok"] for r in results):
        ctx.log(f"  {len(results)} eval gate(s) passed")
    enforce(results, enabled=enforced)
    failed = [r for r in results if not r["ok"]]
    if failed:
        ctx.log(f"  --no-gate: building anyway; {gate_summary(results)}")
    return {A.GATE_REPORT: {"enforced": enforced, "ok": not failed, "results": results, "files": files}}


def bundle_files(report: dict) -> dict[str, Path]:
    """The eval files the bundle ships under reports/ (from the gate report, else the eval report)."""
    return {f"reports/{name}": Path(p) for name, p in (report.get("files") or {}).items() if Path(p).is_file()}


def manifest_summary(report: dict | None) -> dict | None:
    return None if report is None else {k: v for k, v in report.items() if k != "files"}
